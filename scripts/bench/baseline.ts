// Starts the bare baseline server (scripts/bench/baseline-server.ts) as a child process, with a
// scratch database of its own for the one-INSERT route, and stops and cleans it up at the end.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import IORedis from 'ioredis';
import { Client as PgClient } from 'pg';
import { ensurePostgres } from '../infra/postgres';
import { benchDatabase, ROOT } from './stack';

const READY_TIMEOUT_MS = 30_000;

export interface Baseline {
  baseUrl: string;
  pid: number;
  /** Gives a sale of the /admit route its stock (keys under a prefix of this bench run). */
  prepareSale(saleId: string, stock: number): Promise<void>;
  /** How many users won a sale of /admit, read back from Redis. */
  winners(saleId: string): Promise<number>;
  stop(): Promise<void>;
}

/** Starts the baseline server on a free port, on the bench's Redis (keys under a fresh prefix) and a scratch database. */
export async function startBaseline(opts: { redisUrl: string; log: (line: string) => void }): Promise<Baseline> {
  const tag = randomBytes(4).toString('hex');
  const prefix = `bench-baseline-${tag}:`;
  // Always a scratch database of its own: the baseline's table has no place in the service's.
  const database = benchDatabase(undefined, `baseline_${tag}`, opts.log);
  await ensurePostgres(database.url, { info: () => undefined, warn: (msg) => opts.log(msg) });
  const pg = new PgClient({ connectionString: database.url, application_name: 'coupon-bench' });
  await pg.connect();
  try {
    await pg.query(
      'CREATE TABLE IF NOT EXISTS bench_baseline_inserts (id bigserial PRIMARY KEY, sale text NOT NULL, user_id text NOT NULL, at timestamptz NOT NULL DEFAULT now())',
    );
  } finally {
    await pg.end();
  }

  const child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'scripts', 'bench', 'baseline-server.ts')], {
    cwd: ROOT,
    env: { ...process.env, PORT: '0', REDIS_URL: opts.redisUrl, DATABASE_URL: database.url, BASELINE_PREFIX: prefix },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the baseline server did not start')), READY_TIMEOUT_MS);
    let out = '';
    child.stdout?.on('data', (chunk: Buffer) => {
      out += chunk.toString('utf8');
      const match = /listening (\d+)/.exec(out);
      if (match) {
        clearTimeout(timer);
        resolve(Number(match[1]));
      }
    });
    child.once('exit', (code) => reject(new Error(`the baseline server exited (${code})`)));
  });
  const redis = new IORedis(opts.redisUrl, { maxRetriesPerRequest: 3 });
  opts.log(`baseline server (pid ${child.pid}) on 127.0.0.1:${port}, Redis keys ${prefix}*`);

  return {
    baseUrl: `http://127.0.0.1:${port}`,
    pid: child.pid ?? -1,
    async prepareSale(saleId, stock) {
      await redis.set(`${prefix}${saleId}:stock`, stock);
    },
    async winners(saleId) {
      const [users, stock] = await Promise.all([redis.scard(`${prefix}${saleId}:users`), redis.get(`${prefix}${saleId}:stock`)]);
      const left = Number(stock ?? 0);
      // DECR went below zero once per sold-out ask; the winners are the asks it did not.
      return users - Math.max(0, -left);
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        await new Promise<void>((resolve) => {
          child.once('exit', () => resolve());
          child.kill('SIGTERM');
        });
      }
      let cursor = '0';
      do {
        const [nextCursor, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
        if (keys.length) await redis.del(...keys);
        cursor = nextCursor;
      } while (cursor !== '0');
      redis.disconnect();
      await database.drop();
    },
  };
}
