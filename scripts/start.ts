// `npm start` after the build: brings up Postgres, Redis and Kafka (local servers, or
// containers when Docker answers), runs the migrations, then runs the Procfile processes (as many of
// each as the formation asks: `npm start -- worker=3`) under a supervisor that restarts a process
// that dies, until Ctrl-C; then it stops everything it started, in order.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { config, opsPortOf, type Config } from '../src/core/config';
import { ensureTopics } from './infra/kafka';
import { consoleLogger as log, groupAlive, repoRoot, signalGroup, sleep } from './infra/process';
import { DEV_SECRETS } from './infra/dev-secrets';
import { ensureServices, type RunningServices } from './infra/services';
import { parseStartArgs, planInstances, USAGE, UsageError, type BasePorts, type Instance, type StartArgs } from './supervisor/formation';
import { Supervisor } from './supervisor/supervisor';

const ROOT = repoRoot();
const STOP_GRACE_MS = 15_000;

const state = {
  services: undefined as Promise<RunningServices> | undefined,
  migrate: undefined as ChildProcess | undefined,
  supervisor: undefined as Supervisor | undefined,
  shuttingDown: false,
};

async function main(): Promise<void> {
  const args = startArgs();
  process.on('SIGINT', () => onSignal('SIGINT'));
  process.on('SIGTERM', () => onSignal('SIGTERM'));
  watchParent();
  // An explicit URL means "use that server"; only a bare `npm start` may start containers.
  const useContainers = !['DATABASE_URL', 'REDIS_URL', 'KAFKA_BROKERS'].some((name) => process.env[name]);
  ensureDevSecrets();
  const cfg = config();
  // Planned before anything starts: a typo in the formation costs no service start-up.
  const instances = plan(args, cfg);

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
  const migrateCode = await migrate(env);
  if (state.shuttingDown) return;
  if (migrateCode !== 0) {
    log.warn(`migrate: failed with exit code ${migrateCode}; stopping`);
    return shutdown(1);
  }

  state.supervisor = new Supervisor(instances, {
    cwd: ROOT,
    env,
    log,
    stopGraceMs: STOP_GRACE_MS,
    onGiveUp: (reason) => void shutdown(1, reason),
  });
  state.supervisor.start();
  log.info(`start: ${instances.map((i) => i.name).join(', ')} running; a process that dies is restarted; Ctrl-C stops everything`);
}

/** The command line (`npm start -- worker=3`); a mistake in it ends the run before anything starts. */
function startArgs(): StartArgs {
  try {
    const args = parseStartArgs(process.argv.slice(2));
    if (!args.help) return args;
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    process.stderr.write(`start: ${error.message}\n${USAGE}\n`);
    process.exit(2);
  }
}

function plan(args: StartArgs, cfg: Config): Instance[] {
  const ports: BasePorts = {
    web: cfg.PORT,
    webOps: cfg.OPS_PORT,
    worker: opsPortOf(cfg, 'WORKER_OPS_PORT'),
    bridge: opsPortOf(cfg, 'BRIDGE_OPS_PORT'),
  };
  try {
    return planInstances(readProcfile(path.resolve(ROOT, args.procfile ?? 'Procfile')), args.formation, ports);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    process.stderr.write(`start: ${error.message}\n${USAGE}\n`);
    process.exit(2);
  }
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
  if (existsSync(DEV_SECRETS)) log.info('  an admin token for curl: npm run -s token -- admin-1 admin');
}

/** `name: command` lines; blank lines and # comments are skipped. */
function readProcfile(file: string): [string, string][] {
  if (!existsSync(file)) throw new UsageError(`no Procfile at ${file}`);
  const text = readFileSync(file, 'utf8');
  return text
    .split('\n')
    .map((line) => /^([A-Za-z0-9_-]+):\s*(.+)$/.exec(line.trim()))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => [m[1] as string, m[2] as string]);
}

/**
 * `npm run migrate` in a process group of its own, like the Procfile processes: a terminal's Ctrl-C
 * reaches only this script, which then stops it. Its exit code.
 */
function migrate(env: NodeJS.ProcessEnv): Promise<number> {
  const child = spawn('npm run migrate', { cwd: ROOT, env, shell: true, detached: true, stdio: ['ignore', 'inherit', 'inherit'] });
  state.migrate = child;
  return new Promise((resolve) => {
    child.once('error', () => resolve(127));
    child.once('exit', (code, signal) => resolve(code ?? (signal ? 128 : 1)));
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
    state.supervisor?.killAll();
    if (state.migrate?.exitCode === null) signalGroup(state.migrate.pid, 'SIGKILL');
    return;
  }
  log.info(`start: ${signal} received, stopping...`);
  void shutdown(0);
}

/**
 * Stops the processes (web first, see Supervisor.stop), then the services we started, and exits.
 * `failure` says why when the run ends on its own (a crash loop): exit code 1.
 */
async function shutdown(code: number, failure?: string): Promise<void> {
  if (state.shuttingDown) return;
  state.shuttingDown = true;
  if (failure) log.warn(`start: ${failure}; stopping everything`);
  const migrating = state.migrate?.exitCode === null && state.migrate.signalCode === null ? state.migrate.pid : undefined;
  signalGroup(migrating, 'SIGTERM');
  await state.supervisor?.stop();
  while (groupAlive(migrating)) await sleep(100);
  // Services that are still starting get stopped once they are up.
  const services = await state.services?.catch(() => undefined);
  await services?.stop();
  if (state.supervisor) log.info(`start: restarts per process: ${state.supervisor.restartCounts()}`);
  log.info(failure ? `start: stopped because ${failure} (exit code ${code})` : `start: stopped (exit code ${code})`);
  process.exit(code);
}

main().catch(async (error: Error) => {
  log.warn(`start: ${error.message}`);
  await shutdown(1);
});
