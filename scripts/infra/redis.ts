// Makes sure a Redis server answers at a redis URL: reuses a running one, or on a loopback
// address starts a redis-server with its append-only file under .data/redis.
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import Redis from 'ioredis';
import {
  aptInstall,
  findExecutable,
  isLoopback,
  isPortOpen,
  repoRoot,
  spawnService,
  terminate,
  waitUntil,
  type Logger,
  type Service,
} from './process';

export async function ensureRedis(redisUrl: string, log: Logger): Promise<Service> {
  const url = new URL(redisUrl);
  const host = url.hostname.replace(/^\[|\]$/g, '') || '127.0.0.1';
  const port = Number(url.port || 6379);
  const where = `${host}:${port}`;
  if (await isPortOpen(host, port)) {
    // Something listens: it must answer PING with the URL's credentials (after loading its
    // append-only file, if it has just started), or we stop here.
    await waitUntil(`redis: ${where} is open but does not answer PING`, () => ping(redisUrl), {
      timeoutMs: 30_000,
      intervalMs: 500,
    });
    log.info(`redis: reusing ${where}`);
    return { name: 'redis', started: false, stop: async () => {} };
  }
  if (!isLoopback(host)) throw new Error(`redis: nothing answers at ${where} and it is not a local address`);
  const binary = await findOrInstallRedis(log);
  // Installing the Debian package may start its own server on the default port.
  if (await isPortOpen(host, port)) return ensureRedis(redisUrl, log);
  return startRedis(binary, redisUrl, host, port, log);
}

/** True when the server at the URL answers PING; never retries or queues. */
export async function ping(redisUrl: string): Promise<boolean> {
  const client = new Redis(redisUrl, {
    lazyConnect: true,
    connectTimeout: 2000,
    maxRetriesPerRequest: 0,
    enableOfflineQueue: false,
    retryStrategy: () => null,
  });
  client.on('error', () => {}); // failures surface through the promises below
  try {
    await client.connect();
    return (await client.ping()) === 'PONG';
  } catch {
    return false;
  } finally {
    client.disconnect();
  }
}

async function startRedis(binary: string, redisUrl: string, host: string, port: number, log: Logger): Promise<Service> {
  // One folder per port, so a test server and a dev server never share an append-only file.
  const dir = path.join(repoRoot(), '.data', 'redis', String(port));
  mkdirSync(dir, { recursive: true });
  const password = decodeURIComponent(new URL(redisUrl).password);
  const args = [
    '--port',
    String(port),
    '--bind',
    host === 'localhost' ? '127.0.0.1' : host,
    '--dir',
    dir,
    '--logfile',
    path.join(dir, 'redis.log'),
    '--daemonize',
    'no',
    // Durable enough for jobs (at most a second lost on a crash) and never evicts queue keys.
    '--appendonly',
    'yes',
    '--appendfsync',
    'everysec',
    '--maxmemory-policy',
    'noeviction',
    '--save',
    '',
    ...(password ? ['--requirepass', password] : []),
  ];
  log.info(`redis: starting redis-server on ${host}:${port}...`);
  const child = spawnService(binary, args, { cwd: dir, logFile: path.join(dir, 'stdout.log') });
  const stop = () => terminate(child.pid, { host, port, graceMs: 10_000 });
  try {
    await waitUntil('redis: waiting for PING', () => ping(redisUrl), {
      timeoutMs: 20_000,
      intervalMs: 200,
      abortIf: () => child.exited() && `redis-server ${child.exited()} (see ${dir}/redis.log)`,
    });
  } catch (error) {
    await stop();
    throw error;
  }
  log.info(`redis: started ${host}:${port} (pid ${child.pid}, data in ${dir})`);
  return { name: 'redis', started: true, pid: child.pid, stop };
}

async function findOrInstallRedis(log: Logger): Promise<string> {
  const found = findExecutable('redis-server');
  if (found) return found;
  await aptInstall('redis-server', log);
  const installed = findExecutable('redis-server');
  if (!installed) throw new Error('redis: redis-server still not found after installing redis-server');
  return installed;
}
