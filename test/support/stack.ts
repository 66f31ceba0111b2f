// Runs the real processes (web and workers, from source through tsx) for end-to-end tests, each stack
// on its own port and queue prefix, with logs kept under .data/test-logs for when a test fails. The
// processes are started, waited for and stopped as the benches' are (scripts/infra/app-process.ts).
import type { ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fromSource, launchProcess, SOURCE_ENTRIES, stopProcess, waitForLine } from '../../scripts/infra/app-process';
import { freePort } from '../../scripts/infra/process';
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

/** The port a worker's or bridge's ops server says it listens on ("ops server listening"). */
function loggedOpsPort(child: ChildProcess): Promise<number> {
  const port = new Promise<number>((resolvePort, reject) => {
    let buffer = '';
    const onData = (chunk: Buffer) => {
      buffer += chunk.toString();
      const lines = buffer.split('\n');
      buffer = lines.pop() ?? '';
      for (const line of lines) {
        if (!line.includes('"ops server listening"')) continue;
        child.stdout?.off('data', onData);
        child.off('exit', onExit);
        resolvePort((JSON.parse(line) as { port: number }).port);
        return;
      }
    };
    const onExit = () => reject(new Error('process exited before its ops server listened'));
    child.stdout?.on('data', onData);
    child.once('exit', onExit);
  });
  // Whoever waits for the process's start line learns of an early exit from that.
  port.catch(() => undefined);
  return port;
}

export async function startStack(
  opts: { workers?: number; bridge?: boolean; env?: Record<string, string>; name?: string } = {},
): Promise<Stack> {
  const port = await freePort();
  const queuePrefix = uniqueId('q');
  const name = opts.name ?? queuePrefix;
  const paymentsTopic = `payments.v1.${queuePrefix}`;
  const userEventsTopic = `user-events.v1.${queuePrefix}`;
  const env: Record<string, string> = {
    PORT: String(port),
    QUEUE_PREFIX: queuePrefix,
    LOG_LEVEL: 'info',
    NODE_ENV: 'test',
    KAFKA_PAYMENTS_TOPIC: paymentsTopic,
    KAFKA_USER_EVENTS_TOPIC: userEventsTopic,
    KAFKA_GROUP_ID: `bridge-${queuePrefix}`,
    // The broker's minimum: a SIGKILLed bridge's partitions move on after 6 s, not 30.
    KAFKA_SESSION_TIMEOUT_MS: '6000',
    KAFKA_LAG_LOG_INTERVAL_MS: '1000',
    // The tests send hundreds of requests a second, all from 127.0.0.1, and the race tests dozens from
    // one shopper at once: no per-address limit, and a per-user one far above what they send, so the
    // limiter runs on every request without refusing any (test/rate-limit.test.ts tests the limits).
    RATE_LIMIT_IP_POINTS: '0',
    RATE_LIMIT_USER_POINTS: '10000',
    // Workers and bridges bind any free ops port and log it (loggedOpsPort): chosen at bind time, so
    // no two processes of any stack on this host can be handed the same one.
    WORKER_OPS_PORT: '0',
    BRIDGE_OPS_PORT: '0',
    ...opts.env,
  };
  const web = launch(`${name}-web`, SOURCE_ENTRIES.web, env);
  const workers: ChildProcess[] = [];
  let workerCount = 0;
  const opsUrls = new Map<ChildProcess, string>();
  const startWorker = async (extraEnv: Record<string, string> = {}) => {
    workerCount += 1;
    const worker = launch(`${name}-worker-${workerCount}`, SOURCE_ENTRIES.worker, { ...env, ...extraEnv });
    const opsPort = loggedOpsPort(worker);
    workers.push(worker);
    await waitForLine(worker, 'worker started');
    opsUrls.set(worker, `http://127.0.0.1:${await opsPort}`);
    return worker;
  };
  const moreWebs: ChildProcess[] = [];
  const startWeb = async (extraEnv: Record<string, string> = {}) => {
    const webPort = await freePort();
    const another = launch(`${name}-web-${moreWebs.length + 2}`, SOURCE_ENTRIES.web, { ...env, ...extraEnv, PORT: String(webPort) });
    moreWebs.push(another);
    await waitForLine(another, 'web listening');
    return { web: another, baseUrl: `http://127.0.0.1:${webPort}` };
  };
  const bridges: ChildProcess[] = [];
  const startBridge = async (extraEnv: Record<string, string> = {}) => {
    const bridge = launch(`${name}-bridge-${bridges.length + 1}`, SOURCE_ENTRIES.bridge, { ...env, ...extraEnv });
    const opsPort = loggedOpsPort(bridge);
    bridges.push(bridge);
    await waitForLine(bridge, 'bridge joined the consumer group', 90_000);
    opsUrls.set(bridge, `http://127.0.0.1:${await opsPort}`);
    return bridge;
  };
  try {
    await Promise.all([
      waitForLine(web, 'web listening'),
      ...Array.from({ length: opts.workers ?? 1 }, () => startWorker()),
      ...(opts.bridge ? [startBridge()] : []),
    ]);
  } catch (error) {
    // A part that did not come up must not leave the others running after the test file gave up
    // (nor keep them waiting for their own ready lines).
    await Promise.all([web, ...workers, ...bridges].map((child) => stopProcess(child, 'SIGKILL')));
    throw error;
  }
  return {
    baseUrl: `http://127.0.0.1:${port}`,
    queuePrefix,
    env,
    web,
    moreWebs,
    startWeb,
    workers,
    startWorker,
    paymentsTopic,
    userEventsTopic,
    bridges,
    startBridge,
    opsUrl(child) {
      const url = opsUrls.get(child);
      if (!url) throw new Error('not a worker or bridge of this stack');
      return url;
    },
    async stop() {
      await Promise.all([web, ...moreWebs, ...workers, ...bridges].map((child) => stopProcess(child)));
    },
  };
}
