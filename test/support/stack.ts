// Runs the real processes (web and workers, from source through tsx) for end-to-end tests, each stack
// on its own port and queue prefix, with logs kept under .data/test-logs for when a test fails. The
// processes are started, waited for and stopped as the benches' are (scripts/infra/app-stack.ts).
import type { ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fromSource, launchProcess, SOURCE_ENTRIES, stopProcess, waitForLine } from '../../scripts/infra/app-process';
import { startAppStack } from '../../scripts/infra/app-stack';
import { uniqueId } from './fixtures';

export { stopProcess, waitForLine };

const ROOT = resolve(__dirname, '../..');
const LOG_DIR = join(ROOT, '.data/test-logs');

export interface Stack {
  baseUrl: string;
  queuePrefix: string;
  env: Record<string, string>;
  web: ChildProcess;
  /** Web processes started after the first one, each on a port of its own. */
  moreWebs: ChildProcess[];
  /** Starts another web process sharing the stack's queues and Redis; its base URL. */
  startWeb(extraEnv?: Record<string, string>): Promise<{ web: ChildProcess; baseUrl: string }>;
  workers: ChildProcess[];
  startWorker(extraEnv?: Record<string, string>): Promise<ChildProcess>;
  /** The payments topic this stack's bridge consumes (its own, so stacks do not share events). */
  paymentsTopic: string;
  /** The user-events topic this stack's bridge consumes (its own too). */
  userEventsTopic: string;
  bridges: ChildProcess[];
  /** Starts a bridge and resolves once it has joined its consumer group and been given partitions. */
  startBridge(extraEnv?: Record<string, string>): Promise<ChildProcess>;
  /** The ops server (/metrics, /health/*) of a worker or bridge of this stack. */
  opsUrl(child: ChildProcess): string;
  stop(): Promise<void>;
}

/** Where the output of the process launched as `name` goes. */
export function logFile(name: string): string {
  return join(LOG_DIR, `${name}.log`);
}

/** One line of a process's pino log. */
export type LogLine = Record<string, unknown> & { msg?: string };

/** The pino lines in logFile(name) so far (none when it does not exist yet); other output is skipped. */
export function logLines(name: string): LogLine[] {
  if (!existsSync(logFile(name))) return [];
  return readFileSync(logFile(name), 'utf8')
    .split('\n')
    .flatMap((raw) => {
      try {
        return [JSON.parse(raw) as LogLine];
      } catch {
        return [];
      }
    });
}

/**
 * Polls a process's log until at least `atLeast` lines match (or `timeoutMs` passes), and returns
 * every matching line. A line reaches the file through the child's pipe and this process's event
 * loop, so it may land a moment after the answer it explains: read logs after an event with this.
 */
export async function logLinesWhen(name: string, match: (line: LogLine) => boolean, atLeast = 1, timeoutMs = 10_000): Promise<LogLine[]> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const found = logLines(name).filter(match);
    if (found.length >= atLeast || Date.now() > until) return found;
    await new Promise((resolveLater) => setTimeout(resolveLater, 100));
  }
}

/** Starts one service process from source (`entry`, e.g. src/bridge/main.ts), its output in logFile(name). */
export function launch(name: string, entry: string, env: Record<string, string>): ChildProcess {
  return launchProcess({ argv: fromSource(entry), env: { ...process.env, ...env }, logFile: logFile(name) });
}

export async function startStack(
  opts: { workers?: number; bridge?: boolean; env?: Record<string, string>; name?: string } = {},
): Promise<Stack> {
  const queuePrefix = uniqueId('q');
  const name = opts.name ?? queuePrefix;
  const paymentsTopic = `payments.v1.${queuePrefix}`;
  const userEventsTopic = `user-events.v1.${queuePrefix}`;
  const app = await startAppStack({
    queuePrefix,
    // Over the spawned stack's own (scripts/infra/app-stack.ts: no per-address rate limit, any free ops port).
    env: {
      LOG_LEVEL: 'info',
      NODE_ENV: 'test',
      KAFKA_PAYMENTS_TOPIC: paymentsTopic,
      KAFKA_USER_EVENTS_TOPIC: userEventsTopic,
      KAFKA_GROUP_ID: `bridge-${queuePrefix}`,
      // The broker's minimum: a SIGKILLed bridge's partitions move on after 6 s, not 30.
      KAFKA_SESSION_TIMEOUT_MS: '6000',
      KAFKA_LAG_LOG_INTERVAL_MS: '1000',
      // The race tests send dozens of requests from one shopper at once: a per-user limit far above
      // what they send, so the limiter runs on every request without refusing any
      // (test/rate-limit.test.ts tests the limits).
      RATE_LIMIT_USER_POINTS: '10000',
      ...opts.env,
    },
    argv: (role) => fromSource(SOURCE_ENTRIES[role]),
    name: (role, n) => (role === 'web' && n === 1 ? `${name}-web` : `${name}-${role}-${n}`),
    logFile,
    workers: opts.workers ?? 1,
    bridge: opts.bridge,
    // Each process's start line; a worker or bridge also logs the ops port it was given.
    ready: { by: 'log' },
    failureSignal: 'SIGKILL',
  });
  return {
    baseUrl: app.baseUrl,
    queuePrefix,
    env: app.env,
    web: app.web,
    get moreWebs() {
      return app.webs.slice(1);
    },
    async startWeb(extraEnv) {
      const web = await app.start('web', extraEnv);
      return { web, baseUrl: app.baseUrlOf(web) };
    },
    workers: app.workers,
    startWorker: (extraEnv) => app.start('worker', extraEnv),
    paymentsTopic,
    userEventsTopic,
    bridges: app.bridges,
    startBridge: (extraEnv) => app.start('bridge', extraEnv),
    opsUrl: (child) => app.opsUrl(child),
    stop: () => app.stop(),
  };
}
