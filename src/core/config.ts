// Configuration, parsed and validated from the environment once at start.
// Nothing else in the code base reads process.env.
import { z } from 'zod';

const intFrom = (def: number, min = 0) => z.coerce.number().int().min(min).default(def);

/** A string that parses as a URL with one of the given protocols. */
export const urlWith = (protocols: string[]) =>
  z.string().refine(
    (value) => {
      try {
        return protocols.includes(new URL(value).protocol);
      } catch {
        return false;
      }
    },
    `must be a URL starting with ${protocols.join(' or ')}//`,
  );

const opsPort = (def: number) =>
  z
    .union([z.literal('PORT'), z.coerce.number().int().min(0).max(65_535)], { error: 'must be a TCP port, 0 (any free port) or PORT' })
    .default(def);

const brokers = z
  .string()
  .transform((value) =>
    value
      .split(',')
      .map((b) => b.trim())
      .filter(Boolean),
  )
  .refine((list) => list.length > 0 && list.every((b) => /^[^:\s]+:\d+$/.test(b)), 'must be host:port[,host:port...]');

export const configSchema = z.object({
  NODE_ENV: z.enum(['development', 'test', 'production']).default('development'),
  PORT: intFrom(3000, 0).refine((p) => p < 65536, 'must be a TCP port'),
  // How long the web answers /health/ready 503 after SIGTERM before it stops taking connections, so
  // load balancers see it turn unready first. Unset: 2 s in production, 100 ms otherwise.
  WEB_DRAIN_GRACE_MS: z.coerce.number().int().min(0).max(60_000).optional(),
  DATABASE_URL: urlWith(['postgres:', 'postgresql:']).default('postgres://postgres@127.0.0.1:5432/coupons'),
  DATABASE_POOL_MAX: intFrom(10, 1),
  REDIS_URL: urlWith(['redis:', 'rediss:']).default('redis://127.0.0.1:6379'),
  // How long a Redis command the web waits on may take before the request gives up (503, or a rate
  // limit counted in memory): a Redis that stops answering must not hang requests (src/core/redis.ts).
  REDIS_COMMAND_TIMEOUT_MS: z.coerce.number().int().min(50).max(10_000).default(1_000),
  KAFKA_BROKERS: brokers.default(['127.0.0.1:9092']),
  KAFKA_CLIENT_ID: z.string().min(1).default('coupon-service'),
  KAFKA_PAYMENTS_TOPIC: z.string().min(1).default('payments.v1'),
  KAFKA_USER_EVENTS_TOPIC: z.string().min(1).default('user-events.v1'),
  // The bridge's consumer group, how many partitions it creates topics with and works on at once.
  KAFKA_GROUP_ID: z.string().min(1).default('coupon-bridge'),
  KAFKA_TOPIC_PARTITIONS: intFrom(6, 1),
  KAFKA_PARTITIONS_CONCURRENCY: intFrom(6, 1),
  // How long the group waits for a bridge that stopped heartbeating before handing its partitions on:
  // after a crash, the payments of its partitions wait that long, even for the bridge restarted in
  // its place (it joins only once the dead member is gone). kafkajs's 30 s held a payment 28.7 s
  // under `npm start`; the bridge heartbeats every second, between chunks and while it retries.
  KAFKA_SESSION_TIMEOUT_MS: intFrom(10_000, 6_000),
  // How often, at most, the bridge commits the offsets of what it has handed over (a crash redelivers
  // what it had not committed: that many ms of events, each deduplicated).
  KAFKA_COMMIT_INTERVAL_MS: intFrom(200, 0),
  // How often the bridge logs its consumer lag.
  KAFKA_LAG_LOG_INTERVAL_MS: intFrom(15_000, 100),
  // Port of the worker's and the bridge's ops server (/metrics, /health/*). 0: any free port (logged).
  // PORT: the value of PORT, which a Procfile runner such as foreman sets apart for each process.
  WORKER_OPS_PORT: opsPort(9464),
  BRIDGE_OPS_PORT: opsPort(9465),
  // Alert events (src/core/alerts.ts): more than THRESHOLD jobs failed for good within WINDOW_MS, and a
  // topic's consumer lag above ALERT_CONSUMER_LAG_THRESHOLD messages.
  ALERT_JOB_FAILURES_THRESHOLD: intFrom(10, 0),
  ALERT_JOB_FAILURES_WINDOW_MS: intFrom(60_000, 1_000),
  ALERT_CONSUMER_LAG_THRESHOLD: intFrom(10_000, 1),
  // Required by the web process (see requireJwtSecret); scripts such as migrate run without it.
  // A comma-separated list rotates keys: the first signs (scripts/token.ts), every one verifies.
  JWT_SECRET: z
    .string()
    .refine((v) => v.split(',').every((k) => k.trim().length >= 32), 'every key must be at least 32 characters (HS256 key)')
    .optional(),
  // When set, a token must carry this iss / aud.
  JWT_ISSUER: z.string().min(1).optional(),
  JWT_AUDIENCE: z.string().min(1).optional(),
  // Where RS256/ES256 verification keys are served (a JWKS); HS256 tokens still verify with JWT_SECRET.
  JWT_JWKS_URL: urlWith(['https:', 'http:']).optional(),
  // Key of the HMAC under which single-use coupon codes are stored (src/storage/codes.ts). Changing it
  // makes every stored code unredeemable. Required by the web and worker processes.
  CODE_HMAC_SECRET: z.string().min(32, 'must be at least 32 characters').optional(),
  RESERVATION_TTL_SECONDS: intFrom(600, 1),
  // How often each worker ends the reservations whose time is up (I6 allows 5 s past expiresAt).
  RESERVATION_SWEEP_INTERVAL_MS: intFrom(1_000, 100),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  WORKER_CONCURRENCY: intFrom(64, 1),
  // How long a worker rests after its queue runs dry, so the next jobs are taken as a batch.
  WORKER_BATCH_WAIT_MS: intFrom(50, 0),
  // The same for the payments queue. The bridge already hands payments over in batches (one per
  // Kafka fetch), so a rest there only delays them; it is short by default.
  PAYMENT_BATCH_WAIT_MS: intFrom(10, 0),
  // Attempts a refund that reached the worker before its payment waits (backoff doubling from 250 ms,
  // about a minute in all with 8) before it is recorded as having changed nothing; it waits on
  // while an earlier event of its order is in the inbox unapplied (src/worker/checkout-queue.ts).
  PAYMENT_WAIT_ATTEMPTS: intFrom(8, 0),
  // Where a payment event takes effect. worker: the bridge makes every event a job (its id derived
  // from the event id) and a worker applies it. bridge: the bridge applies each event itself once it
  // is in the inbox, and makes a job only of an event that cannot take effect yet (a refund ahead of
  // its payment) or whose application failed; about a third of a checkout's latency and a job's CPU
  // less (docs/BENCHMARKS.md), at the price of no job to read for an event applied in place.
  PAYMENT_APPLY: z.enum(['worker', 'bridge']).default('worker'),
  // How long a worker may go without renewing a job lock before the job is handed to another worker.
  JOB_LOCK_MS: intFrom(15_000, 1000),
  JOB_STALLED_INTERVAL_MS: intFrom(5_000, 500),
  // How often, and after how long, admissions whose job died are given back (src/usecases/reconcile-admissions.ts).
  ADMISSION_RECONCILE_INTERVAL_MS: intFrom(10_000, 100),
  ADMISSION_RECONCILE_AGE_MS: intFrom(30_000, 100),
  // How often one worker of the fleet sweeps the event inbox (src/usecases/inbox-sweep.ts), and how old an
  // event must be before its missing job is added again and its applied row deleted (I11).
  INBOX_SWEEP_INTERVAL_MS: intFrom(5_000, 100),
  INBOX_REDRIVE_AGE_MS: intFrom(10_000, 100),
  QUEUE_PREFIX: z.string().min(1).default('coupon'),
  // How long a stats answer is served from the cache at least (src/storage/cache/stats-cache.ts); 0: no cache.
  STATS_CACHE_MS: intFrom(1_000, 0),
  BULL_BOARD_USER: z.string().min(1).optional(),
  // Guessable passwords are refused: the web does not start with a shorter one.
  BULL_BOARD_PASSWORD: z.string().min(12, 'must be at least 12 characters').optional(),
  // Wrong Bull Board credentials an address may send per window; past that it is refused 429 for
  // BULL_BOARD_LOCKOUT_S, right password or not.
  BULL_BOARD_AUTH_FAILURES: intFrom(10, 1),
  BULL_BOARD_AUTH_WINDOW_S: intFrom(900, 1),
  BULL_BOARD_LOCKOUT_S: intFrom(900, 1),
  // When set, the web serves /metrics, /health/ready and Bull Board on this port only (0: any free
  // port, logged), so they can stay off the public balancer; PORT keeps the API, /docs and /health/live.
  OPS_PORT: z.coerce.number().int().min(0).max(65_535).optional(),
  // Rate limits (src/web/middleware/rate-limit.ts), counted in Redis so they hold across web
  // processes: POINTS requests per window of DURATION_S seconds, 0 turns a limiter off. Per client
  // address, before authentication: generous, as thousands of shoppers may share one carrier NAT.
  RATE_LIMIT_IP_POINTS: intFrom(3_000, 0),
  RATE_LIMIT_IP_DURATION_S: intFrom(1, 1),
  // Per user, after authentication: a shopper asking and long-polling its job sends a few a second.
  RATE_LIMIT_USER_POINTS: intFrom(50, 0),
  RATE_LIMIT_USER_DURATION_S: intFrom(1, 1),
  // Wrong coupon codes a user, or a client address, may send within CODE_FAILURE_WINDOW_S; the last
  // one allowed blocks that user or address for CODE_FAILURE_BLOCK_S. 0 turns that guard off.
  CODE_FAILURES_PER_USER: intFrom(10, 0),
  CODE_FAILURES_PER_IP: intFrom(300, 0),
  CODE_FAILURE_WINDOW_S: intFrom(600, 1),
  CODE_FAILURE_BLOCK_S: intFrom(900, 1),
  // Set only behind a proxy that writes X-Forwarded-For itself: its first entry is then the client
  // address. Without a proxy it would let any client pick its own address.
  TRUST_PROXY: z.stringbool().default(false),
  // Test-only fault injection (src/core/failpoints.ts), honoured only when NODE_ENV=test.
  FAILPOINTS: z.string().optional(),
});

export type Config = z.infer<typeof configSchema>;

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n  ${problems.join('\n  ')}`);
    this.name = 'ConfigError';
  }
}

export function parseConfig(env: Record<string, string | undefined>): Config {
  // Empty strings count as "not set", so `FOO= npm start` falls back to the default.
  const cleaned = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined && v !== ''));
  const parsed = configSchema.safeParse(cleaned);
  if (!parsed.success) {
    throw new ConfigError(parsed.error.issues.map((i) => `${i.path.join('.') || '(env)'}: ${i.message}`));
  }
  return parsed.data;
}

let cached: Config | undefined;

/** The process configuration; exits with a readable message when the environment is wrong. */
export function config(): Config {
  if (!cached) {
    try {
      cached = parseConfig(process.env);
    } catch (error) {
      if (error instanceof ConfigError) {
        process.stderr.write(`${error.message}\n`);
        process.exit(78); // EX_CONFIG
      }
      throw error;
    }
  }
  return cached;
}

/** The ops server port of the worker or the bridge, with `PORT` resolved. */
export function opsPortOf(cfg: Config, name: 'WORKER_OPS_PORT' | 'BRIDGE_OPS_PORT'): number {
  const value = cfg[name];
  return value === 'PORT' ? cfg.PORT : value;
}

/** A secret a process cannot run without; exits with a readable message when it is missing. */
function requireSecret(name: 'JWT_SECRET' | 'CODE_HMAC_SECRET', why: string): string {
  const secret = config()[name];
  if (!secret) {
    process.stderr.write(`invalid configuration:\n  ${name}: required (at least 32 characters) ${why}\n`);
    process.exit(78);
  }
  return secret;
}

/** The HS256 secret(s) of the web process; none needed when a JWKS verifies tokens. */
export const requireJwtSecret = () =>
  config().JWT_JWKS_URL && !config().JWT_SECRET ? '' : requireSecret('JWT_SECRET', 'to verify bearer tokens');

/** The key tokens are signed with: the first of JWT_SECRET's list. */
export const signingJwtSecret = () => (requireSecret('JWT_SECRET', 'to sign tokens').split(',')[0] as string).trim();

/** The key single-use codes are hashed with (web and worker). */
export const requireCodeSecret = () => requireSecret('CODE_HMAC_SECRET', 'to hash coupon codes');
