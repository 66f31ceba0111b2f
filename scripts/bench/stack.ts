// The stack under test: a running one found at BASE_URL, or one the bench builds and starts itself
// from the Procfile (1 web, N workers, compiled JS) and stops at the end; chooseStack picks.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync } from 'node:fs';
import { runMigrations } from '../../src/storage/migrator';
import { commandArgv, procfileCommands } from '../infra/app-process';
import { isReady, startAppStack, type Role } from '../infra/app-stack';
import { sleep } from '../infra/process';
import { ensurePostgres } from '../infra/postgres';
import { devSecret } from '../infra/dev-secrets';
import path from 'node:path';
import { Queue } from 'bullmq';
import type { Kafka } from 'kafkajs';
import IORedis from 'ioredis';
import { Client as PgClient } from 'pg';

export const ROOT = path.resolve(__dirname, '../..');
const READY_TIMEOUT_MS = 90_000;

export interface Stack {
  mode: 'reused' | 'spawned';
  baseUrl: string;
  /** Every web process's URL (the first is baseUrl): a load generator spreads users over them, as a balancer would. */
  baseUrls: string[];
  queuePrefix: string;
  jwtSecret: string;
  /** Pids of the processes the bench started (empty when reused). */
  pids: { web: number[]; workers: number[]; bridge?: number[] };
  logDir?: string;
  /** warn/error/fatal log lines the spawned processes wrote so far, by level, with a few examples. */
  logProblems(): { counts: Record<string, number>; examples: string[] };
  stop(): Promise<void>;
}

/** The development database: what a running stack uses, and the server a scratch database goes on. */
export const DEFAULT_DATABASE_URL = 'postgres://postgres@127.0.0.1:5432/coupons';

/**
 * The database a spawned stack runs on: `given` (DATABASE_URL) when there is one, else a scratch
 * database of this run (created and migrated by spawnStack) that drop() removes at the end. A run then
 * starts from empty tables: the rows earlier runs leave behind (30,000 coupons, reservations and
 * events per checkout run) slowed Postgres by a quarter after about fifteen runs.
 */
export function benchDatabase(
  given: string | undefined,
  tag: string,
  log: (line: string) => void,
): { url: string; drop: () => Promise<void> } {
  if (given) return { url: given, drop: async () => undefined };
  const name = `coupons_bench_${tag.toLowerCase().replace(/[^a-z0-9_]/g, '_')}`;
  const url = new URL(DEFAULT_DATABASE_URL);
  url.pathname = `/${name}`;
  log(`scratch database ${name} (dropped at the end; set DATABASE_URL to use another)`);
  return {
    url: url.toString(),
    async drop() {
      const admin = new URL(DEFAULT_DATABASE_URL);
      admin.pathname = '/postgres';
      const client = new PgClient({ connectionString: admin.toString(), application_name: 'coupon-bench' });
      await client.connect();
      try {
        await client.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
      } finally {
        await client.end();
      }
    },
  };
}

export function reuseStack(baseUrl: string, queuePrefix: string, jwtSecret: string): Stack {
  return {
    mode: 'reused',
    baseUrl,
    baseUrls: [baseUrl],
    queuePrefix,
    jwtSecret,
    pids: { web: [], workers: [] },
    logProblems: () => ({ counts: {}, examples: [] }),
    stop: async () => undefined,
  };
}

/** The Procfile's commands, each as argv. */
function procfile(): Map<string, string[]> {
  return new Map([...procfileCommands()].map(([name, command]) => [name, commandArgv(command)]));
}

function run(command: string, args: string[]): Promise<void> {
  return new Promise((resolveRun, reject) => {
    // Build output goes to stderr so stdout stays the bench summary.
    const child = spawn(command, args, { cwd: ROOT, stdio: ['ignore', 2, 2] });
    child.on('error', reject);
    child.on('exit', (code, signal) =>
      code === 0 ? resolveRun() : reject(new Error(`${command} ${args.join(' ')} exited with ${code ?? signal}`)),
    );
  });
}

export async function buildProject(): Promise<void> {
  await run('npm', ['run', 'build']);
}

export interface SpawnOptions {
  workers: number;
  /** Web processes, each on a port of its own (default 1). */
  webs?: number;
  databaseUrl: string;
  redisUrl: string;
  queuePrefix: string;
  jwtSecret?: string;
  /** Also start the Kafka bridge (Procfile `bridge`). */
  bridge?: boolean;
  /** More environment for every process (topics, group, TTLs). */
  env?: Record<string, string>;
  /** Run web, workers and the bridge under `node --cpu-prof` writing here (PROFILE=1): a saturated run can then be explained. */
  profileDir?: string;
  log: (line: string) => void;
}

/** `node <args>` becomes `node --cpu-prof --cpu-prof-dir=<dir> <args>` (written when the process exits). */
function profiled(argv: string[], dir: string | undefined): string[] {
  if (!dir || argv[0] !== 'node') return argv;
  return ['node', '--cpu-prof', `--cpu-prof-dir=${dir}`, ...argv.slice(1)];
}

export async function spawnStack(opts: SpawnOptions): Promise<Stack> {
  const commands = procfile();
  const roles: Role[] = ['web', 'worker', ...(opts.bridge ? (['bridge'] as const) : [])];
  for (const role of roles) {
    const cmd = commands.get(role);
    if (!cmd) throw new Error(`the Procfile has no ${role} process`);
    const entry = cmd.find((arg) => arg.endsWith('.js'));
    if (entry && !existsSync(path.join(ROOT, entry))) throw new Error(`${entry} is missing: the build did not produce it`);
  }

  // The stack needs its database to exist and be migrated, as `npm start` would have left it.
  await ensurePostgres(opts.databaseUrl, { info: () => undefined, warn: (msg) => process.stderr.write(`[bench] ${msg}\n`) });
  await runMigrations(opts.databaseUrl);

  const jwtSecret = opts.jwtSecret ?? randomBytes(32).toString('base64url');
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const logDir = path.join(ROOT, '.data', 'bench-logs', stamp);
  mkdirSync(logDir, { recursive: true });
  if (opts.profileDir) mkdirSync(opts.profileDir, { recursive: true });

  const problems = { counts: {} as Record<string, number>, examples: [] as string[] };
  const stack = await startAppStack({
    queuePrefix: opts.queuePrefix,
    // Over the spawned stack's own (scripts/infra/app-stack.ts): there, no per-address rate limit (all
    // the load comes from 127.0.0.1 and would cap the bench itself); the per-user limit stays on at
    // its default (each bench user sends one request and a long poll or two), so its Redis round trip
    // is part of what is measured.
    env: {
      // Warnings and errors only, unless LOG_LEVEL says otherwise: the info lines (one or two per
      // request and job) cost CPU a production deployment pays, so LOG_LEVEL=info measures with them.
      LOG_LEVEL: process.env.LOG_LEVEL || 'warn',
      JWT_SECRET: jwtSecret,
      CODE_HMAC_SECRET: process.env.CODE_HMAC_SECRET || randomBytes(32).toString('base64url'),
      DATABASE_URL: opts.databaseUrl,
      REDIS_URL: opts.redisUrl,
      ...opts.env,
    },
    argv: (role) => profiled(commands.get(role) ?? [], opts.profileDir),
    name: (role, n) => (n === 1 && role !== 'worker' ? role : `${role}-${n}`),
    logFile: (name) => path.join(logDir, `${name}.log`),
    onLine(name, line) {
      const level = /"level":"(warn|error|fatal)"/.exec(line)?.[1] ?? (line.trim() && !line.startsWith('{') ? 'stderr' : undefined);
      if (!level) return;
      problems.counts[level] = (problems.counts[level] ?? 0) + 1;
      if (problems.examples.length < 10) problems.examples.push(`${name}: ${line.slice(0, 400)}`);
    },
    // More webs share the stack's Redis and queues, each on its own port (what a balancer spreads over).
    webs: opts.webs,
    workers: opts.workers,
    bridge: opts.bridge,
    // At LOG_LEVEL warn the processes log no start line: the webs' /health/ready and the workers' connections tell.
    ready: { by: 'health', redisUrl: opts.redisUrl, timeoutMs: READY_TIMEOUT_MS },
    onLaunched: ({ webs, workers, baseUrls }) =>
      opts.log(
        `started web (pid ${webs.map((w) => w.pid).join(', ')}) on ${baseUrls.join(', ')} and ${workers.length} worker(s) (pids ${workers.map((w) => w.pid).join(', ')}), queue prefix ${opts.queuePrefix}, logs in ${path.relative(ROOT, logDir)}`,
      ),
  });
  return {
    mode: 'spawned',
    baseUrl: stack.baseUrl,
    baseUrls: stack.baseUrls,
    queuePrefix: opts.queuePrefix,
    jwtSecret,
    pids: {
      web: stack.webs.map((w) => w.pid ?? -1),
      workers: stack.workers.map((w) => w.pid ?? -1),
      ...(stack.bridges.length > 0 && { bridge: stack.bridges.map((b) => b.pid ?? -1) }),
    },
    logDir,
    logProblems: () => ({ counts: { ...problems.counts }, examples: [...problems.examples] }),
    stop: () => stack.stop(),
  };
}

/** Waits until the bridge's consumer group is stable with a member: it consumes from then on. */
export async function waitForBridge(kafka: Kafka, groupId: string, timeoutMs = 90_000): Promise<void> {
  const admin = kafka.admin();
  await admin.connect();
  try {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const { groups } = await admin.describeGroups([groupId]);
      if (groups[0]?.state === 'Stable' && groups[0].members.length > 0) return;
      if (Date.now() > until) throw new Error(`the bridge's consumer group ${groupId} is not stable after ${timeoutMs} ms`);
      await sleep(250);
    }
  } finally {
    await admin.disconnect();
  }
}

/** Removes a spawned stack's queues (every job and key under its prefix): nobody uses them after the bench. */
export async function removeQueues(redisUrl: string, queuePrefix: string, log: (line: string) => void = () => undefined): Promise<void> {
  const connection = new IORedis(redisUrl, { maxRetriesPerRequest: null });
  try {
    for (const name of ['issue', 'checkout', 'payments']) {
      const queue = new Queue(name, { connection, prefix: queuePrefix });
      await queue.obliterate({ force: true }).catch((e: Error) => log(`could not remove queue ${queuePrefix}:${name}: ${e.message}`));
      await queue.close();
    }
  } finally {
    connection.disconnect();
  }
}

export interface StackChoice {
  /** STACK: `auto` takes the running stack when it is ready and spawns one otherwise; `reuse` and `spawn` insist. */
  stack: 'auto' | 'reuse' | 'spawn';
  /** Where a running stack answers, and its queue prefix (none: always spawn). */
  running?: { baseUrl: string; queuePrefix: string };
  /** Signs a running stack's tokens (else .data/dev-secrets.env's); a spawned stack's, when given. */
  jwtSecret?: string;
  /** DATABASE_URL: a running stack's database (default DEFAULT_DATABASE_URL); a spawned one's instead of a scratch database. */
  databaseUrl?: string;
  redisUrl: string;
  /** `npm run build` before spawning. */
  build: boolean;
  /** Names a spawned stack's scratch database (benchDatabase). */
  databaseTag: string;
  /** Runs once a spawned stack's database is chosen, before the spawn (e.g. ensures the broker its bridge needs). */
  beforeSpawn?: (databaseUrl: string) => Promise<void>;
  /** How to spawn: spawnStack's options but those chooseStack fills in. */
  spawn: Omit<SpawnOptions, 'databaseUrl' | 'redisUrl' | 'jwtSecret' | 'log'>;
  /** Leaves a spawned stack's queues in Redis at the end (a queue prefix the caller chose). */
  keepQueues?: boolean;
  /** Where the teardown goes (the bench runs its hooks in reverse): stop the stack, remove its queues, drop its database. */
  stopHooks: (() => Promise<void>)[];
  log: (line: string) => void;
}

/** A running stack at baseUrl, or one of the bench's own (with a scratch database and its own queue prefix). */
export async function chooseStack(c: StackChoice): Promise<{ stack: Stack; databaseUrl: string }> {
  const { running } = c;
  if (c.stack !== 'spawn' && running && (await isReady(running.baseUrl))) {
    const secret = devSecret('JWT_SECRET', c.jwtSecret);
    if (!secret)
      throw new Error(`${running.baseUrl} is ready, but there is no JWT_SECRET to sign tokens with: set it (or run with STACK=spawn)`);
    c.log(`using the running stack at ${running.baseUrl} (queue prefix ${running.queuePrefix})`);
    return { stack: reuseStack(running.baseUrl, running.queuePrefix, secret), databaseUrl: c.databaseUrl ?? DEFAULT_DATABASE_URL };
  }
  if (c.stack === 'reuse') throw new Error(`nothing ready at ${running?.baseUrl ?? 'the running stack'}/health/ready (STACK=reuse)`);
  if (c.build) {
    c.log('npm run build');
    await buildProject();
  }
  const database = benchDatabase(c.databaseUrl, c.databaseTag, c.log);
  c.stopHooks.push(database.drop);
  await c.beforeSpawn?.(database.url);
  const stack = await spawnStack({ ...c.spawn, databaseUrl: database.url, redisUrl: c.redisUrl, jwtSecret: c.jwtSecret, log: c.log });
  c.stopHooks.push(async () => {
    c.log('stopping the stack (SIGTERM)');
    await stack.stop();
    if (c.spawn.profileDir)
      c.log(`CPU profiles of web and workers in ${path.relative(ROOT, c.spawn.profileDir)} (open in Chrome DevTools or speedscope)`);
    if (c.keepQueues) return;
    // The bench's own queues are of no use to anyone afterwards.
    await removeQueues(c.redisUrl, c.spawn.queuePrefix, c.log);
  });
  return { stack, databaseUrl: database.url };
}
