// Makes sure a PostgreSQL server answers at a database URL: reuses a running one, or on a
// loopback address initialises and starts a private cluster under .data/postgres.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Client } from 'pg';
import {
  aptInstall,
  findExecutable,
  isLoopback,
  isPortOpen,
  isRoot,
  repoRoot,
  run,
  runOrThrow,
  sleep,
  systemUserExists,
  tail,
  type Logger,
  type Service,
} from './process';

interface Target {
  host: string;
  port: number;
  database: string;
  user: string;
  password: string;
}

interface Cluster {
  bin: string;
  home: string;
  data: string;
  socketDir: string;
  logFile: string;
  /** Prefix that runs a binary as the cluster's owner (`runuser -u postgres --` as root). */
  asOwner: string[];
}

export async function ensurePostgres(databaseUrl: string, log: Logger): Promise<Service> {
  const target = parseTarget(databaseUrl);
  const where = `${target.host}:${target.port}`;
  if (await isPortOpen(target.host, target.port)) {
    await ensureDatabase(target, target.user, target.password);
    log.info(`postgres: reusing ${where} (database ${target.database})`);
    return { name: 'postgres', started: false, stop: async () => {} };
  }
  if (!isLoopback(target.host)) throw new Error(`postgres: nothing answers at ${where} and it is not a local address`);

  const bin = await findOrInstallBinaries(log);
  // Installing the Debian package may start its own cluster on the default port.
  if (await isPortOpen(target.host, target.port)) return ensurePostgres(databaseUrl, log);

  const cluster = prepareCluster(bin, target.port, log);
  await initCluster(cluster, log);
  await startCluster(cluster, target, log);
  try {
    await ensureRoleAndDatabase(target);
  } catch (error) {
    await stopCluster(cluster);
    throw error;
  }
  log.info(`postgres: started ${where} (data in ${cluster.data}, log in ${cluster.logFile})`);
  return { name: 'postgres', started: true, stop: () => stopCluster(cluster) };
}

function parseTarget(databaseUrl: string): Target {
  const url = new URL(databaseUrl);
  return {
    host: url.hostname.replace(/^\[|\]$/g, '') || '127.0.0.1',
    port: Number(url.port || 5432),
    database: decodeURIComponent(url.pathname.slice(1)) || 'postgres',
    user: decodeURIComponent(url.username) || 'postgres',
    password: decodeURIComponent(url.password),
  };
}

/** Connects to the `postgres` maintenance database, waiting while the server is still starting. */
async function connectMaintenance(target: Target, user: string, password: string): Promise<Client> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const client = new Client({
      host: target.host,
      port: target.port,
      user,
      password: password || undefined,
      database: 'postgres',
      connectionTimeoutMillis: 5000,
    });
    try {
      await client.connect();
      return client;
    } catch (error) {
      await client.end().catch(() => {});
      // 57P03: "the database system is starting up"; anything else is a real refusal.
      if ((error as { code?: string }).code !== '57P03' || Date.now() > deadline) throw error;
      await sleep(500);
    }
  }
}

async function ensureDatabase(target: Target, user: string, password: string, owner?: string): Promise<void> {
  const client = await connectMaintenance(target, user, password);
  try {
    const found = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [target.database]);
    if (found.rowCount) return;
    const ownerClause = owner ? ` OWNER ${quoteIdent(owner)}` : '';
    await client.query(`CREATE DATABASE ${quoteIdent(target.database)}${ownerClause}`).catch((error) => {
      // Another process (a parallel test run) may have created it between the check and here.
      if (!['42P04', '23505'].includes((error as { code?: string }).code ?? '')) throw error;
    });
  } finally {
    await client.end();
  }
}

/** On a cluster we started, the URL's user may not exist yet: create it, then its database. */
async function ensureRoleAndDatabase(target: Target): Promise<void> {
  if (target.user !== 'postgres') {
    const client = await connectMaintenance(target, 'postgres', '');
    try {
      const found = await client.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [target.user]);
      if (!found.rowCount) {
        const password = target.password ? ` PASSWORD ${quoteLiteral(target.password)}` : '';
        await client.query(`CREATE ROLE ${quoteIdent(target.user)} LOGIN CREATEDB${password}`);
      }
    } finally {
      await client.end();
    }
  }
  await ensureDatabase(target, 'postgres', '', target.user);
}

const quoteIdent = (name: string) => `"${name.replace(/"/g, '""')}"`;
const quoteLiteral = (value: string) => `'${value.replace(/'/g, "''")}'`;

/** The bin directory holding initdb and pg_ctl, newest major version first. */
function findBinaries(preferredVersion?: string): string | undefined {
  const root = '/usr/lib/postgresql';
  const versions = existsSync(root) ? readdirSync(root).sort((a, b) => Number(b) - Number(a)) : [];
  if (preferredVersion && versions.includes(preferredVersion)) versions.unshift(preferredVersion);
  const dirs = versions.map((v) => path.join(root, v, 'bin'));
  const initdb = findExecutable('initdb', dirs);
  if (!initdb) return undefined;
  const bin = path.dirname(initdb);
  return existsSync(path.join(bin, 'pg_ctl')) ? bin : undefined;
}

async function findOrInstallBinaries(log: Logger): Promise<string> {
  const found = findBinaries();
  if (found) return found;
  await aptInstall('postgresql', log);
  const installed = findBinaries();
  if (!installed) throw new Error('postgres: initdb/pg_ctl still not found after installing postgresql');
  return installed;
}

/**
 * Lays out .data/postgres (data, socket dir, log). Postgres refuses to run as root, so as
 * root the binaries run as the `postgres` system user, which must own and reach the folder.
 */
function prepareCluster(bin: string, port: number, log: Logger): Cluster {
  const asRoot = isRoot();
  if (asRoot && !systemUserExists('postgres')) {
    throw new Error('postgres: running as root but there is no `postgres` system user to run the server as');
  }
  const dataRoot = path.join(repoRoot(), '.data');
  let home = path.join(dataRoot, 'postgres');
  if (asRoot && !postgresUserCanReach(dataRoot)) {
    // e.g. a clone under /root (mode 700): the postgres user cannot enter it.
    const id = createHash('sha1').update(home).digest('hex').slice(0, 8);
    home = path.join(os.tmpdir(), `coupon-service-postgres-${id}`);
    log.warn(`postgres: the postgres user cannot reach ${dataRoot}; keeping the cluster in ${home}`);
  }
  const data = path.join(home, 'data');
  // A unix socket path must fit in 107 bytes; fall back to a short one for deep checkouts.
  let socketDir = path.join(home, 'run');
  if (path.join(socketDir, `.s.PGSQL.${port}`).length > 100) socketDir = path.join(os.tmpdir(), `coupon-pg-${port}`);
  for (const dir of [home, socketDir]) mkdirSync(dir, { recursive: true });
  const preferred = existsSync(path.join(data, 'PG_VERSION')) ? readFileSync(path.join(data, 'PG_VERSION'), 'utf8').trim() : undefined;
  return {
    // A data dir initialised by one major version only starts with that version's binaries.
    bin: findBinaries(preferred) ?? bin,
    home,
    data,
    socketDir,
    logFile: path.join(home, 'server.log'),
    asOwner: asRoot ? ['runuser', '-u', 'postgres', '--'] : [],
  };
}

function postgresUserCanReach(dir: string): boolean {
  mkdirSync(dir, { recursive: true });
  const probe = spawnSync('runuser', ['-u', 'postgres', '--', 'test', '-x', dir], { stdio: 'ignore' });
  return probe.status === 0;
}

async function asOwner(cluster: Cluster, binary: string, args: string[]): Promise<string> {
  const [cmd, ...rest] = [...cluster.asOwner, path.join(cluster.bin, binary), ...args];
  // cwd inside the cluster home: the postgres user may not be allowed into ours.
  return runOrThrow(cmd as string, rest, { cwd: cluster.home });
}

async function initCluster(cluster: Cluster, log: Logger): Promise<void> {
  if (cluster.asOwner.length) {
    await runOrThrow('chown', ['-R', 'postgres:postgres', cluster.home, cluster.socketDir]);
  }
  if (existsSync(path.join(cluster.data, 'PG_VERSION'))) return;
  log.info(`postgres: initialising a cluster in ${cluster.data}...`);
  await asOwner(cluster, 'initdb', ['-D', cluster.data, '-U', 'postgres', '--auth=trust', '--encoding=UTF8', '--no-locale']);
}

async function startCluster(cluster: Cluster, target: Target, log: Logger): Promise<void> {
  const listen = target.host === 'localhost' ? 'localhost' : target.host;
  const options = `-p ${target.port} -k '${cluster.socketDir}' -c listen_addresses='${listen}'`;
  log.info(`postgres: starting on ${target.host}:${target.port}...`);
  try {
    await asOwner(cluster, 'pg_ctl', ['-D', cluster.data, '-l', cluster.logFile, '-w', '-t', '60', '-o', options, 'start']);
  } catch (error) {
    const serverLog = existsSync(cluster.logFile) ? tail(readFileSync(cluster.logFile, 'utf8'), 15) : '';
    throw new Error(`postgres: could not start the local server:\n${(error as Error).message}\n${serverLog}`, { cause: error });
  }
}

async function stopCluster(cluster: Cluster): Promise<void> {
  // Fast shutdown: roll back open transactions and stop now rather than wait for clients.
  const [cmd, ...rest] = [...cluster.asOwner, path.join(cluster.bin, 'pg_ctl'), '-D', cluster.data, '-m', 'fast', '-w', 'stop'];
  await run(cmd as string, rest, { cwd: cluster.home });
}
