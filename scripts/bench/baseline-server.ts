// The flash-sale bench's bare baseline: a Hono server on @hono/node-server with nothing of the
// service in it (no auth check, no queue, no worker), to say what this box does at most with the same
// generator. Its routes answer in the service's job-view shape, so the generator reads them alike:
//   POST /admit   one Redis Lua script per request: first ask of the user (SADD) and a slot of the
//                 stock (DECR) in one EVALSHA; won or SOLD_OUT
//   POST /hello   Hono alone: answers at once
//   POST /insert  one Postgres INSERT per request through pg (a pool of 10, like the service's)
// The sale is the body's policyId; the user is the JWT's subject, read without verifying it.
// Run by scripts/bench/baseline.ts as a child process (its CPU is then its own); prints
// `listening <port>` once it accepts connections.
import { serve } from '@hono/node-server';
import { Hono } from 'hono';
import IORedis from 'ioredis';
import { Pool } from 'pg';

const ADMIT = `
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return -1 end
local left = redis.call('DECR', KEYS[2])
if left < 0 then return 0 end
return left + 1`;

const prefix = process.env.BASELINE_PREFIX ?? 'bench-baseline:';
const redis = new IORedis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379');
redis.defineCommand('admit', { numberOfKeys: 2, lua: ADMIT });
const pg = process.env.DATABASE_URL
  ? new Pool({ connectionString: process.env.DATABASE_URL, max: 10, application_name: 'coupon-bench-baseline' })
  : null;

const won = (id: string | number) => ({ status: 'succeeded', result: { id: String(id) } });
const soldOut = { status: 'rejected', reason: { code: 'SOLD_OUT', message: 'sold out' } };
const again = { status: 'rejected', reason: { code: 'ALREADY_ASKED', message: 'asked before' } };

/** The JWT's `sub`, without checking the signature: the baseline measures the work, not the auth. */
function subject(authorization: string | undefined): string {
  const payload = authorization?.split('.')[1] ?? '';
  return (JSON.parse(Buffer.from(payload, 'base64url').toString('utf8') || '{}') as { sub?: string }).sub ?? 'anonymous';
}

const app = new Hono();
app.post('/hello', (c) => c.json({ status: 'succeeded', result: { id: 'hello' } }));
app.post('/admit', async (c) => {
  const { policyId } = await c.req.json<{ policyId: string }>();
  const user = subject(c.req.header('authorization'));
  const slot = await (redis as unknown as { admit(a: string, b: string, u: string): Promise<number> }).admit(
    `${prefix}${policyId}:users`,
    `${prefix}${policyId}:stock`,
    user,
  );
  return c.json(slot > 0 ? won(slot) : slot === 0 ? soldOut : again);
});
app.post('/insert', async (c) => {
  if (!pg) return c.json({ error: 'no DATABASE_URL' }, 500);
  const { policyId } = await c.req.json<{ policyId: string }>();
  const { rows } = await pg.query<{ id: string }>('INSERT INTO bench_baseline_inserts (sale, user_id) VALUES ($1, $2) RETURNING id', [
    policyId,
    subject(c.req.header('authorization')),
  ]);
  return c.json(won(rows[0]?.id ?? 0));
});

const server = serve({ fetch: app.fetch, port: Number(process.env.PORT ?? 0), hostname: '127.0.0.1' }, (info) => {
  process.stdout.write(`listening ${info.port}\n`);
});
process.on('SIGTERM', () => {
  server.close();
  redis.disconnect();
  void (pg?.end() ?? Promise.resolve()).finally(() => process.exit(0));
});
