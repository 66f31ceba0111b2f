// A stack of the service's processes (web, workers, a Kafka bridge) spawned on this host, for the
// tests (test/support/stack.ts, from source) and the benches (scripts/bench/stack.ts, as the Procfile
// runs them): the environment they share, starting them (app-process.ts), waiting until they serve,
// stopping them. The caller says how a process is started, what more its environment holds, where
// the logs go and how readiness is told.
import type { ChildProcess } from 'node:child_process';
import { Queue } from 'bullmq';
import IORedis from 'ioredis';
import { launchProcess, stopProcess, waitForLine } from './app-process';
import { freePort, sleep } from './process';

export type Role = 'web' | 'worker' | 'bridge';

/**
 * The environment every process of a spawned stack gets, over the parent's and under the caller's:
 * its port and queues, and what lets many processes run on one host under load from one address.
 */
function spawnedStackEnv(port: number, queuePrefix: string): Record<string, string> {
  return {
    PORT: String(port),
    QUEUE_PREFIX: queuePrefix,
    // All the load comes from 127.0.0.1, hundreds to thousands of requests a second: a per-address
    // limit would refuse the tests' and the benches' own traffic (test/rate-limit.test.ts tests it).
    RATE_LIMIT_IP_POINTS: '0',
    // Several workers and bridges on this host: each binds any free ops port and logs it. Chosen at
    // bind time, so no two processes of any stack on this host can be handed the same one.
    WORKER_OPS_PORT: '0',
    BRIDGE_OPS_PORT: '0',
  };
}

/** The line a process logs (at LOG_LEVEL info) once it serves, and how long it may take to. */
const STARTED: Record<Role, { line: string; timeoutMs: number }> = {
  web: { line: 'web listening', timeoutMs: 60_000 },
  worker: { line: 'worker started', timeoutMs: 60_000 },
  bridge: { line: 'bridge joined the consumer group', timeoutMs: 90_000 },
};

/** How the stack's start is waited for. */
export type Readiness =
  /** Each process's start line (needs LOG_LEVEL info); a worker or bridge also logs its ops port, which opsUrl then answers. */
  | { by: 'log' }
  /** Polling, at any LOG_LEVEL: every web answers /health/ready and every worker has its connection on the issue queue. */
  | { by: 'health'; redisUrl: string; timeoutMs: number };

export interface AppStackOptions {
  queuePrefix: string;
  /** The caller's environment for every process, over the parent's and the stack's own. */
  env: Record<string, string>;
  /** How a process of each role is started (argv[0] the executable). */
  argv(role: Role): string[];
  /** The name of the n-th process (from 1) of a role, which names its log. */
  name(role: Role, n: number): string;
  logFile(name: string): string;
  /** Every line a process prints (app-process.ts launchProcess). */
  onLine?(name: string, line: string): void;
  /** The processes started at once: webs (default 1), each on a port of its own, workers, and a bridge when asked. */
  webs?: number;
  workers: number;
  bridge?: boolean;
  ready: Readiness;
  /** How every process is stopped when one does not come up (default SIGTERM, as stop()). */
  failureSignal?: NodeJS.Signals;
  /** Called once the first processes are launched, before they are waited for. */
  onLaunched?(stack: AppStack): void;
}

export interface AppStack {
  /** The environment of every process but the parent's: the stack's own and the caller's. */
  env: Record<string, string>;
  /** The first web's URL; baseUrls holds every web's, in start order (as webs). */
  baseUrl: string;
  baseUrls: string[];
  web: ChildProcess;
  /** Every web (the first too), worker and bridge, in start order. */
  webs: ChildProcess[];
  workers: ChildProcess[];
  bridges: ChildProcess[];
  /**
   * Starts one more process sharing the stack's queues and Redis (a web on a port of its own). With
   * readiness by log it resolves once the process serves, else once it is launched.
   */
  start(role: Role, extraEnv?: Record<string, string>): Promise<ChildProcess>;
  /** The URL a web of this stack answers on. */
  baseUrlOf(web: ChildProcess): string;
  /** The ops server (/metrics, /health/*) of a worker or bridge of this stack (readiness by log only). */
  opsUrl(child: ChildProcess): string;
  /** SIGTERM to every process (they drain), SIGKILL after 20 s. */
  stop(): Promise<void>;
}

/** Starts the stack's first processes and waits until they serve; stops them all when one does not come up. */
export async function startAppStack(opts: AppStackOptions): Promise<AppStack> {
  const port = await freePort();
  const morePorts = await Promise.all(Array.from({ length: Math.max(0, (opts.webs ?? 1) - 1) }, () => freePort()));
  const env = { ...spawnedStackEnv(port, opts.queuePrefix), ...opts.env };
  const byRole: Record<Role, ChildProcess[]> = { web: [], worker: [], bridge: [] };
  const processes: { name: string; child: ChildProcess }[] = [];
  const baseUrls: string[] = [];
  const opsUrls = new Map<ChildProcess, string>();

  /** Launches one process (a web after the first on ownPort); `ready` resolves once it serves (by log), or at once. */
  const launch = (role: Role, extraEnv: Record<string, string> = {}, ownPort?: number) => {
    const name = opts.name(role, byRole[role].length + 1);
    const child = launchProcess({
      argv: opts.argv(role),
      env: { ...process.env, ...env, ...extraEnv, ...(ownPort !== undefined && { PORT: String(ownPort) }) },
      logFile: opts.logFile(name),
      onLine: opts.onLine && ((line) => opts.onLine?.(name, line)),
    });
    byRole[role].push(child);
    processes.push({ name, child });
    if (role === 'web') baseUrls.push(`http://127.0.0.1:${ownPort ?? port}`);
    if (opts.ready.by !== 'log') return { child, ready: Promise.resolve() };
    const opsPort = role === 'web' ? undefined : loggedOpsPort(child);
    const ready = waitForLine(child, STARTED[role].line, STARTED[role].timeoutMs).then(async () => {
      if (opsPort) opsUrls.set(child, `http://127.0.0.1:${await opsPort}`);
    });
    return { child, ready };
  };
  const stopAll = async (signal: NodeJS.Signals = 'SIGTERM') => {
    await Promise.all(processes.map(({ child }) => stopProcess(child, signal)));
  };

  const launched = [
    launch('web'),
    ...morePorts.map((p) => launch('web', {}, p)),
    ...Array.from({ length: opts.workers }, () => launch('worker')),
    ...(opts.bridge ? [launch('bridge')] : []),
  ];
  const stack: AppStack = {
    env,
    baseUrl: `http://127.0.0.1:${port}`,
    baseUrls,
    web: launched[0]?.child as ChildProcess,
    webs: byRole.web,
    workers: byRole.worker,
    bridges: byRole.bridge,
    async start(role, extraEnv = {}) {
      const started = launch(role, extraEnv, role === 'web' ? await freePort() : undefined);
      await started.ready;
      return started.child;
    },
    baseUrlOf(web) {
      const url = baseUrls[byRole.web.indexOf(web)];
      if (!url) throw new Error('not a web of this stack');
      return url;
    },
    opsUrl(child) {
      const url = opsUrls.get(child);
      if (!url) throw new Error('not a worker or bridge of this stack');
      return url;
    },
    stop: () => stopAll(),
  };
  opts.onLaunched?.(stack);
  try {
    if (opts.ready.by === 'log') await Promise.all(launched.map((l) => l.ready));
    else for (const url of [...baseUrls]) await waitHealthy(url, opts.workers, opts.queuePrefix, opts.ready, processes);
  } catch (error) {
    // A part that did not come up must not leave the others running after the caller gave up
    // (nor keep them waiting for their own ready lines).
    await stopAll(opts.failureSignal);
    throw error;
  }
  return stack;
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

/** Whether the web at baseUrl answers /health/ready with 200. */
export async function isReady(baseUrl: string, timeoutMs = 2_000): Promise<boolean> {
  try {
    const res = await fetch(new URL('/health/ready', baseUrl), { signal: AbortSignal.timeout(timeoutMs) });
    await res.arrayBuffer();
    return res.status === 200;
  } catch {
    return false;
  }
}

/** The web at baseUrl answers /health/ready and `workers` workers have their BullMQ connection on the queue. */
async function waitHealthy(
  baseUrl: string,
  workers: number,
  queuePrefix: string,
  ready: { redisUrl: string; timeoutMs: number },
  processes: { name: string; child: ChildProcess }[],
): Promise<void> {
  const connection = new IORedis(ready.redisUrl, { maxRetriesPerRequest: null, lazyConnect: false });
  const queue = new Queue('issue', { connection, prefix: queuePrefix });
  const deadline = Date.now() + ready.timeoutMs;
  try {
    for (;;) {
      const dead = processes.find(({ child }) => child.exitCode !== null || child.signalCode !== null);
      if (dead)
        throw new Error(`${dead.name} exited (${dead.child.exitCode ?? dead.child.signalCode}) before the stack was ready; see its log`);
      const [webReady, workerCount] = await Promise.all([isReady(baseUrl), queue.getWorkersCount().catch(() => 0)]);
      if (webReady && workerCount >= workers) return;
      if (Date.now() > deadline)
        throw new Error(`stack not ready after ${ready.timeoutMs} ms (web ready: ${webReady}, workers: ${workerCount}/${workers})`);
      await sleep(200);
    }
  } finally {
    await queue.close();
    connection.disconnect();
  }
}
