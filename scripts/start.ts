// `npm start` after the build: brings up Postgres, Redis and Kafka (local servers, or
// containers when Docker answers), runs the migrations, then runs the Procfile processes with
// prefixed output until Ctrl-C, and stops everything it started on the way out.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { config } from '../core/config';
import { ensureTopics } from './infra/kafka';
import { consoleLogger as log, repoRoot, sleep } from './infra/process';
import { ensureServices, type RunningServices } from './infra/services';

const ROOT = repoRoot();
const DEV_SECRETS = path.join(ROOT, '.data', 'dev-secrets.env');
const STOP_GRACE_MS = 15_000;
const COLORS = [36, 33, 35, 32, 34, 31];

interface Running {
  name: string;
  child: ChildProcess;
}

const state = {
  services: undefined as Promise<RunningServices> | undefined,
  children: [] as Running[],
  shuttingDown: false,
  labelWidth: 0,
};

async function main(): Promise<void> {
  process.on('SIGINT', () => onSignal('SIGINT'));
  process.on('SIGTERM', () => onSignal('SIGTERM'));
  watchParent();
  // An explicit URL means "use that server"; only a bare `npm start` may start containers.
  const useContainers = !['DATABASE_URL', 'REDIS_URL', 'KAFKA_BROKERS'].some((name) => process.env[name]);
  ensureDevSecrets();
  const cfg = config();

  state.services = ensureServices({
    databaseUrl: cfg.DATABASE_URL,
    redisUrl: cfg.REDIS_URL,
    kafkaBrokers: cfg.KAFKA_BROKERS,
    log,
    useContainers,
  });
  const services = await state.services;
  if (state.shuttingDown) return;
  const brokers = services.kafkaBrokers ?? cfg.KAFKA_BROKERS;
  const topics = [cfg.KAFKA_PAYMENTS_TOPIC, cfg.KAFKA_USER_EVENTS_TOPIC];
  await ensureTopics(brokers, topics, cfg.KAFKA_TOPIC_PARTITIONS);
  log.info(`kafka: topics ready (${topics.join(', ')} and their .dlq)`);

  const env = {
    ...process.env,
    DATABASE_URL: services.databaseUrl,
    REDIS_URL: services.redisUrl,
    KAFKA_BROKERS: brokers.join(','),
  };
  log.info('migrate: running npm run migrate...');
  const migrate = startChild('migrate', 'npm run migrate', env, 'inherit');
  const migrateCode = await exitCode(migrate.child);
  if (state.shuttingDown) return;
  if (migrateCode !== 0) {
    log.warn(`migrate: failed with exit code ${migrateCode}; stopping`);
    return shutdown(1);
  }

  const procfile = readProcfile();
  state.labelWidth = Math.max(...procfile.map(([name]) => name.length));
  for (const [name, command] of procfile) watch(startChild(name, command, env, 'prefixed'));
  log.info(`start: ${procfile.map(([name]) => name).join(', ')} running; API on http://localhost:${cfg.PORT}; Ctrl-C stops everything`);
}

/**
 * The app refuses to start without JWT_SECRET and CODE_HMAC_SECRET. For a bare `npm start` we make
 * them up once and keep them in .data/dev-secrets.env, so tokens minted and codes generated earlier
 * stay valid across restarts.
 */
function ensureDevSecrets(): void {
  const saved = existsSync(DEV_SECRETS) ? readFileSync(DEV_SECRETS, 'utf8') : '';
  const lines = saved.split('\n').filter(Boolean);
  let changed = false;
  for (const name of ['JWT_SECRET', 'CODE_HMAC_SECRET']) {
    if (process.env[name]) continue;
    const kept = new RegExp(`^${name}=(.+)$`, 'm').exec(saved)?.[1];
    const secret = kept ?? randomBytes(32).toString('base64url');
    if (!kept) {
      lines.push(`${name}=${secret}`);
      changed = true;
    }
    process.env[name] = secret;
    log.warn(`${name} is not set; using a development secret ${kept ? 'from' : 'generated into'} .data/dev-secrets.env`);
  }
  if (changed) {
    mkdirSync(path.dirname(DEV_SECRETS), { recursive: true });
    writeFileSync(DEV_SECRETS, `${lines.join('\n')}\n`, { mode: 0o600 });
  }
  // The command reads the secret from the file, so the secret never shows up in a log.
  if (existsSync(DEV_SECRETS)) log.info('  an admin token for curl: env $(cat .data/dev-secrets.env) npm run -s token -- admin-1 admin');
}

/** `name: command` lines; blank lines and # comments are skipped. */
function readProcfile(): [string, string][] {
  const text = readFileSync(path.join(ROOT, 'Procfile'), 'utf8');
  return text
    .split('\n')
    .map((line) => /^([A-Za-z0-9_-]+):\s*(.+)$/.exec(line.trim()))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => [m[1] as string, m[2] as string]);
}

/**
 * Runs a command through a shell in its own process group: a terminal's Ctrl-C then reaches
 * only this script, which stops the app first and the services after it, in that order.
 */
function startChild(name: string, command: string, env: NodeJS.ProcessEnv, output: 'inherit' | 'prefixed'): Running {
  const child = spawn(command, {
    cwd: ROOT,
    env,
    shell: true,
    detached: true,
    stdio: output === 'inherit' ? ['ignore', 'inherit', 'inherit'] : ['ignore', 'pipe', 'pipe'],
  });
  if (output === 'prefixed') prefixOutput(name, child);
  const running: Running = { name, child };
  state.children.push(running);
  return running;
}

function prefixOutput(name: string, child: ChildProcess): void {
  const color = COLORS[state.children.length % COLORS.length];
  const plain = `${name.padEnd(state.labelWidth)} |`;
  const label = process.stdout.isTTY ? `\x1b[${color}m${plain}\x1b[0m` : plain;
  for (const [stream, sink] of [[child.stdout, process.stdout], [child.stderr, process.stderr]] as const) {
    if (stream) readline.createInterface({ input: stream }).on('line', (line) => sink.write(`${label} ${line}\n`));
  }
}

function exitCode(child: ChildProcess): Promise<number> {
  return new Promise((resolve) => {
    if (child.exitCode !== null) return resolve(child.exitCode);
    child.once('error', () => resolve(127));
    child.once('exit', (code, signal) => resolve(code ?? (signal ? 128 : 1)));
  });
}

/** A Procfile process that exits on its own takes the whole service down with it. */
function watch(running: Running): void {
  running.child.once('exit', (code, signal) => {
    if (state.shuttingDown) return;
    log.warn(`${running.name}: exited unexpectedly (${signal ? `signal ${signal}` : `exit code ${code}`}); stopping everything`);
    void shutdown(1);
  });
}

/**
 * `npm start` runs us under `sh -c`, and a SIGTERM that npm forwards kills that shell
 * without passing it on. We notice by being re-parented, and stop as if signalled.
 */
function watchParent(): void {
  const parent = process.ppid;
  setInterval(() => {
    if (process.ppid === parent || state.shuttingDown) return;
    log.warn('start: the process that started us is gone; stopping');
    void shutdown(1);
  }, 1000).unref();
}

function onSignal(signal: NodeJS.Signals): void {
  if (state.shuttingDown) {
    log.warn(`${signal} again: killing the processes now`);
    for (const { child } of state.children) signalGroup(child, 'SIGKILL');
    return;
  }
  log.info(`start: ${signal} received, stopping...`);
  void shutdown(0);
}

async function shutdown(code: number): Promise<void> {
  if (state.shuttingDown) return;
  state.shuttingDown = true;
  await stopChildren();
  // Services that are still starting get stopped once they are up.
  const services = await state.services?.catch(() => undefined);
  await services?.stop();
  log.info('start: stopped');
  process.exit(code);
}

/**
 * SIGTERM to each process group, then wait for the groups to empty: the shell dies at once,
 * the command it runs may take its time to drain. SIGKILL whatever is left after the grace.
 */
async function stopChildren(): Promise<void> {
  const groups = state.children.filter(({ child }) => groupAlive(child));
  for (const { child } of groups) signalGroup(child, 'SIGTERM');
  const deadline = Date.now() + STOP_GRACE_MS;
  while (groups.some(({ child }) => groupAlive(child)) && Date.now() < deadline) await sleep(100);
  const stuck = groups.filter(({ child }) => groupAlive(child));
  if (stuck.length === 0) return;
  log.warn(`start: ${stuck.map((r) => r.name).join(', ')} still running after ${STOP_GRACE_MS / 1000} s; killing`);
  for (const { child } of stuck) signalGroup(child, 'SIGKILL');
  while (stuck.some(({ child }) => groupAlive(child))) await sleep(100);
}

function groupAlive(child: ChildProcess): boolean {
  if (child.pid === undefined) return false;
  try {
    process.kill(-child.pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Signals the child's whole process group: the shell and the command it runs. */
function signalGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    // The group is already gone.
  }
}

main().catch(async (error: Error) => {
  log.warn(`start: ${error.message}`);
  await shutdown(1);
});
