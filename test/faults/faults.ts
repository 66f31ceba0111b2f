// The faults the suite injects, each at a moment when work is in flight, and what it found in flight
// when it struck: a fault that hit nothing proves nothing, so the scenario fails it.
import { existsSync } from 'node:fs';
import path from 'node:path';
import IORedis from 'ioredis';
import { failpointMarkDir } from '../../src/core/failpoints';
import { redisKeysUnder } from '../../src/core/redis-keys';
import { sleep } from '../../scripts/infra/process';
import type { Formation, World } from './world';

/** Where in a scenario a fault strikes: mid-sale, mid-reserve, or while payments are applied. */
export type Phase = 'sale' | 'reserve' | 'payments';

export interface InFlight {
  /** Admissions of the sale's policy holding a unit not yet settled (the issue path's work in flight). */
  pendingAdmissions: number;
  /** Jobs active or waiting, per queue. */
  jobs: Record<string, number>;
  /** Clients of the scenario that did not know their outcome yet. */
  clientsWaiting: number;
}

export interface FaultContext {
  world: World;
  policyId: string;
  log: (line: string) => void;
  /** What is in flight right now (read just before the fault strikes). */
  inFlight(): Promise<InFlight>;
}

/** SIGKILLs Redis and starts it again with nothing: a failover to a replica that had nothing. */
async function restartRedisEmpty(world: World): Promise<string> {
  world.redis.kill();
  await world.redis.start({ empty: true });
  return 'Redis killed, restarted empty';
}

/** A Postgres restart as its clients see it: every connection cut, new ones refused for `ms`. */
async function postgresAway(world: World, ms: number): Promise<string> {
  await world.postgres.proxy.pause('refuse');
  await sleep(ms);
  await world.postgres.proxy.resume();
  return `Postgres away ${ms / 1000} s`;
}

export interface Fault {
  name: string;
  phase: Phase;
  /** What it does, for the report. */
  what: string;
  /** Strikes; resolves when the fault is over (the process restarted, Redis back, the proxy relaying). */
  strike(ctx: FaultContext): Promise<string>;
  /** Whether the work found in flight is work this fault can break. */
  hit(found: InFlight): boolean;
  /** The world it needs, where it differs: more processes, a Kafka broker of its own, failpoints armed. */
  world?: { formation?: Partial<Formation>; kafka?: 'own'; env?: Record<string, string> };
  /** For a fault that strikes on its own (a failpoint): whether it struck, read once strike() is over. */
  hitAfter?(world: World): boolean;
}

const anyJobs = (found: InFlight, queue: string) => (found.jobs[queue] ?? 0) > 0;

/** Waits until the supervisor has the process running under a new pid. */
async function restarted(world: World, name: string, oldPid: number, timeoutMs = 30_000): Promise<number> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const pid = world.supervisor.pidOf(name);
    if (pid !== undefined && pid !== oldPid) return pid;
    if (Date.now() > until) throw new Error(`${name} was not restarted within ${timeoutMs} ms`);
    await sleep(100);
  }
}

function killProcess(name: string, phase: Phase, hit: Fault['hit']): Fault {
  return {
    name: `kill-${name.replace(/\.\d+$/, '')}${phase === 'sale' ? '' : `-${phase}`}`,
    phase,
    what: `SIGKILL ${name}; the supervisor restarts it`,
    hit,
    async strike({ world }) {
      const pid = await world.signal(name, 'SIGKILL');
      const again = await restarted(world, name, pid);
      return `${name} pid ${pid} killed, restarted as ${again}`;
    },
  };
}

/** Whether the once-only failpoint `name` fired in this world (it leaves a mark: src/core/failpoints.ts). */
const fired = (world: World, name: string) => existsSync(path.join(failpointMarkDir(world.queuePrefix), name));

/** The processes the supervisor restarted so far (`web.1 0, worker.2 1` → [worker.2]). */
function restartedNames(world: World): string[] {
  return [...world.restarts().matchAll(/(\S+) (\d+)/g)].filter((m) => Number(m[2]) > 0).map((m) => m[1] as string);
}

/**
 * A process that dies at a named step of its work, the Nth time one of the world's processes gets
 * there (`exit@N`, once per world): a crash exactly after the Redis admission, after the Postgres
 * commit, or before the answer. The supervisor restarts it.
 */
function crashAt(step: string, atHit: number, phase: Phase, what: string): Fault {
  return {
    name: `crash-at-${step}`,
    phase,
    what: `${what} (failpoint ${step}=exit@${atHit}); the supervisor restarts it`,
    world: { env: { FAILPOINTS: `${step}=exit@${atHit}` } },
    hit: () => false,
    hitAfter: (world) => fired(world, step) && restartedNames(world).length > 0,
    async strike({ world }) {
      const until = Date.now() + 30_000;
      while (!(fired(world, step) && restartedNames(world).length > 0) && Date.now() < until) await sleep(100);
      return fired(world, step)
        ? `died at ${step}; restarted: ${restartedNames(world).join(', ')}`
        : `${step} was not reached ${atHit} times`;
    },
  };
}

export const FAULTS: Fault[] = [
  crashAt('web.after-admission', 15, 'sale', 'a web dies after its turn admitted requests in Redis, before their records and job exist'),
  crashAt('issue.after-admission', 25, 'sale', 'a worker dies holding an admitted unit, before writing the coupon'),
  crashAt('issue.after-commit', 25, 'sale', 'a worker dies after committing a coupon, before settling its admission'),
  crashAt('issue.before-answer', 3, 'sale', "a worker dies after a batch's coupons are committed, before its outcomes are told"),
  crashAt('checkout.after-commit', 25, 'reserve', 'a worker dies after committing a reservation, before answering'),
  killProcess('worker.1', 'sale', (f) => f.pendingAdmissions > 0 || anyJobs(f, 'issue')),
  killProcess('web.1', 'sale', (f) => f.clientsWaiting > 0),
  killProcess('worker.1', 'payments', (f) => anyJobs(f, 'payments')),
  killProcess('bridge.1', 'payments', (f) => f.clientsWaiting > 0),
  killProcess('web.1', 'reserve', (f) => f.clientsWaiting > 0),
  {
    name: 'stop-worker',
    phase: 'sale',
    what: 'SIGSTOP worker.2 past its lock and the stall check, then SIGCONT: two runs of its jobs',
    hit: (f) => f.pendingAdmissions > 0 || anyJobs(f, 'issue'),
    async strike({ world }) {
      const pid = await world.signal('worker.2', 'SIGSTOP');
      await sleep(9_000);
      process.kill(pid, 'SIGCONT');
      return `worker.2 pid ${pid} stopped 9 s (lock 4 s, stall check every 1 s)`;
    },
  },
  {
    name: 'redis-kill',
    phase: 'sale',
    what: 'SIGKILL Redis (its append-only file may miss the last second), restart it with its data',
    hit: (f) => f.pendingAdmissions > 0 || anyJobs(f, 'issue'),
    async strike({ world }) {
      world.redis.kill();
      await sleep(1_000);
      await world.redis.start();
      return 'Redis killed, restarted with its append-only file after 1 s';
    },
  },
  {
    name: 'redis-empty',
    phase: 'sale',
    what: 'SIGKILL Redis and restart it empty (a failover to a replica that had nothing)',
    hit: (f) => f.pendingAdmissions > 0 || anyJobs(f, 'issue'),
    strike: ({ world }) => restartRedisEmpty(world),
  },
  {
    name: 'redis-empty-payments',
    phase: 'payments',
    what: 'Redis restarted empty while payment events wait in the queue',
    hit: (f) => anyJobs(f, 'payments') || f.clientsWaiting > 0,
    strike: ({ world }) => restartRedisEmpty(world),
  },
  {
    name: 'redis-away',
    phase: 'sale',
    what: 'Redis unreachable for 5 s (connections cut, new ones refused)',
    hit: (f) => f.clientsWaiting > 0,
    async strike({ world }) {
      await world.redis.proxy.pause('refuse');
      await sleep(5_000);
      await world.redis.proxy.resume();
      return 'Redis away 5 s';
    },
  },
  {
    name: 'postgres-restart',
    phase: 'sale',
    what: 'Postgres restarts: every connection cut, new ones refused for 3 s',
    hit: (f) => f.pendingAdmissions > 0 || anyJobs(f, 'issue'),
    strike: ({ world }) => postgresAway(world, 3_000),
  },
  {
    name: 'postgres-restart-reserve',
    phase: 'reserve',
    what: 'Postgres restarts mid-checkout: every connection cut, new ones refused for 3 s',
    hit: (f) => f.clientsWaiting > 0,
    strike: ({ world }) => postgresAway(world, 3_000),
  },
  {
    name: 'postgres-slow',
    phase: 'sale',
    what: 'Postgres answers 100 ms late for 8 s',
    hit: (f) => f.pendingAdmissions > 0 || anyJobs(f, 'issue'),
    async strike({ world }) {
      world.postgres.proxy.latencyMs = 100;
      await sleep(8_000);
      world.postgres.proxy.latencyMs = 0;
      return 'Postgres 100 ms slower for 8 s';
    },
  },
  {
    name: 'kafka-restart',
    phase: 'payments',
    what: 'the Kafka broker stopped for 3 s and started again with its data, mid-checkout',
    hit: (f) => f.clientsWaiting > 0,
    world: { kafka: 'own' },
    async strike({ world }) {
      await world.restartKafka(3_000);
      return 'broker down 3 s';
    },
  },
  {
    name: 'rebalance',
    phase: 'payments',
    what: 'a second bridge leaves its consumer group mid-checkout and joins again (two rebalances)',
    hit: (f) => f.clientsWaiting > 0,
    world: { formation: { bridge: 2 } },
    async strike({ world }) {
      const pid = await world.signal('bridge.2', 'SIGTERM');
      await restarted(world, 'bridge.2', pid);
      return `bridge.2 pid ${pid} left (SIGTERM) and came back`;
    },
  },
];

/** What is in flight in the world's queues and the sale's admission state. */
export async function readInFlight(world: World, policyId: string, clientsWaiting: number): Promise<InFlight> {
  const redis = new IORedis(world.redisUrl, { maxRetriesPerRequest: 1, connectTimeout: 2_000 });
  redis.on('error', () => undefined);
  try {
    const pendingAdmissions = await redis.hlen(redisKeysUnder(world.queuePrefix).admission(policyId).pending).catch(() => 0);
    const jobs: Record<string, number> = {};
    for (const queue of ['issue', 'checkout', 'payments']) {
      const key = (state: string) => `${world.queuePrefix}:${queue}:${state}`;
      const [active, waiting] = await Promise.all([redis.llen(key('active')).catch(() => 0), redis.llen(key('wait')).catch(() => 0)]);
      jobs[queue] = active + waiting;
    }
    return { pendingAdmissions, jobs, clientsWaiting };
  } finally {
    redis.disconnect();
  }
}
