// Redis connections. Producers fail fast when Redis is away (that is how an unqueueable request gets 503);
// workers and blocking readers wait for Redis to come back.
import IORedis, { Command, type Redis, type RedisOptions } from 'ioredis';
import { config } from './config';
import { logger } from './logger';

export type RedisRole = 'producer' | 'worker' | 'client' | 'ingress';

const roleOptions: Record<RedisRole, RedisOptions> = {
  // BullMQ Queue and the ingress: no offline queue, so a command while disconnected errors at once.
  // maxRetriesPerRequest 0: a command on the wire when the connection drops fails at once too; otherwise
  // ioredis keeps it to resend after a reconnect (it is never counted when the reconnect reaches
  // `connect`), so a request already answered 503 would be queued later, and the auto-pipeline stuck
  // behind it would hold every later add until Redis came back.
  // Auto-pipelining batches the adds of concurrent requests into one write per tick.
  producer: { enableOfflineQueue: false, maxRetriesPerRequest: 0, connectTimeout: 2_000, enableAutoPipelining: true },
  // BullMQ Worker and QueueEvents: blocking commands must retry forever. (Auto-pipelining them was
  // measured: 4 % less worker CPU per checkout, 25 % more per flash-sale request, so it is off.)
  worker: { maxRetriesPerRequest: null, enableReadyCheck: true },
  // Plain commands from workers (admission scripts, locks): retry a little, then let the job retry.
  // Auto-pipelining sends the admissions of a batch's requests in one write.
  client: { maxRetriesPerRequest: 3, connectTimeout: 5_000, enableAutoPipelining: true },
  // The web's plain commands (rate limits, caches): like client, but a request never waits on them
  // for long (commandTimeout, below).
  ingress: { maxRetriesPerRequest: 1, connectTimeout: 2_000, enableAutoPipelining: true },
};

/**
 * Roles whose every command gives up after REDIS_COMMAND_TIMEOUT_MS: the connections a request
 * waits on. A Redis that stops answering (connection open, no replies) then costs a request one
 * timeout, not one per call: the first command that times out marks Redis as not answering, and
 * until a probe gets a reply every command of these roles fails at once (StallGuard, below). The
 * request is answered 503 (or, for a rate limit, counted in memory) instead of hanging. Never the
 * worker role: its blocking reads wait for jobs on purpose. An add that timed out may still reach
 * Redis later; every job id that matters for a retry is derived from the request (reserve, cancel,
 * confirm, events), and the quantity and per-user limits hold in any case.
 */
const TIMED_ROLES: ReadonlySet<RedisRole> = new Set(['producer', 'ingress']);

/**
 * How ioredis fails a command, by its message. Never sent: no connection, and no offline queue to
 * hold the command (it never reached Redis). Lost: the connection dropped with the command on its
 * way, or no reply came within commandTimeout (Redis may have run it).
 */
const NEVER_SENT = /^(Stream isn't writeable|Connection is closed|Redis is not answering)/;
const LOST = /^(Reached the max retries per request|Command timed out)/;

/** Whether Redis certainly never saw the command that failed with `error` (the error or its cause). */
export function neverSent(error: unknown): boolean {
  const cause = error instanceof Error && error.cause instanceof Error ? error.cause : error;
  return cause instanceof Error && NEVER_SENT.test(cause.message);
}

/** Whether a command failed because Redis is away (never sent, or its reply lost), not because of the command. */
export function isRedisOutage(error: unknown): boolean {
  return error instanceof Error && (NEVER_SENT.test(error.message) || LOST.test(error.message));
}

/** How often a Redis marked as not answering is asked again (PING), to take the commands back. */
const STALL_PROBE_MS = 100;

/**
 * One per Redis (URL) in a process: the timed connections to it share what they know. A command that
 * timed out marks it as not answering; from then on those connections fail every command at once
 * with "Redis is not answering" (never sent), except a PING every STALL_PROBE_MS, whose reply takes
 * the mark off. A request then pays at most one command timeout, however many calls it makes.
 */
class StallGuard {
  private stalled = false;
  private since = 0;
  /** Counts recoveries: a command sent before the last one whose timeout fires late says nothing new. */
  private recoveries = 0;

  private answered(role: RedisRole): void {
    if (!this.stalled) return;
    this.stalled = false;
    this.recoveries += 1;
    logger().info({ redis: role, stalledMs: Date.now() - this.since }, 'redis answers again');
  }

  guard(redis: Redis, role: RedisRole): void {
    const send = redis.sendCommand.bind(redis);
    const guarded = (command: Command, stream?: unknown) => {
      // A connection being (re)established sends its handshake: let it, its ready check is a reply.
      if (this.stalled && redis.status === 'ready') {
        command.reject(new Error('Redis is not answering: a command timed out and no reply came since'));
        return command.promise;
      }
      const sent = send(command, stream as never);
      const sentAfter = this.recoveries;
      command.promise.catch((error: unknown) => {
        if (sentAfter === this.recoveries && error instanceof Error && error.message === 'Command timed out') this.trip(send, role);
      });
      return sent;
    };
    redis.sendCommand = guarded as Redis['sendCommand'];
    redis.on('ready', () => this.answered(role));
  }

  private trip(send: Redis['sendCommand'], role: RedisRole): void {
    if (this.stalled) return;
    this.stalled = true;
    this.since = Date.now();
    logger().warn({ redis: role }, 'redis is not answering: failing its commands at once until a PING is answered');
    const probe = () => {
      const ping = new Command('ping');
      send(ping);
      ping.promise.then(
        () => this.answered(role),
        () => {
          if (this.stalled) setTimeout(probe, STALL_PROBE_MS).unref();
        },
      );
    };
    probe();
  }
}

const stallGuards = new Map<string, StallGuard>();

/** A connection's errors are logged at most this often: while Redis is away each retry fails again. */
const ERROR_LOG_INTERVAL_MS = 5_000;

export function createRedis(role: RedisRole, url = config().REDIS_URL): Redis {
  const redis = new IORedis(url, {
    ...roleOptions[role],
    ...(TIMED_ROLES.has(role) && { commandTimeout: config().REDIS_COMMAND_TIMEOUT_MS }),
    connectionName: `coupon-${role}`,
    retryStrategy: (attempt) => Math.min(attempt * 200, 2_000),
  });
  if (TIMED_ROLES.has(role)) {
    if (!stallGuards.has(url)) stallGuards.set(url, new StallGuard());
    stallGuards.get(url)!.guard(redis, role);
  }
  // Without a listener ioredis prints every failed reconnect to stderr as an unhandled error event.
  // Commands report their own failures to their callers; the connection's state goes to the log.
  let lastLogged = 0;
  redis.on('error', (error: Error) => {
    if (Date.now() - lastLogged < ERROR_LOG_INTERVAL_MS) return;
    lastLogged = Date.now();
    logger().warn({ err: error, redis: role }, 'redis connection error');
  });
  return redis;
}

/** Resolves once the connection is ready, or rejects after timeoutMs. */
export function waitForReady(redis: Redis, timeoutMs = 10_000): Promise<void> {
  if (redis.status === 'ready') return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`redis not ready after ${timeoutMs} ms`));
    }, timeoutMs);
    const onReady = () => {
      cleanup();
      resolve();
    };
    const cleanup = () => {
      clearTimeout(timer);
      redis.off('ready', onReady);
    };
    redis.on('ready', onReady);
  });
}
