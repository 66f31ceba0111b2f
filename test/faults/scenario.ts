// One scenario of the fault suite: a flash sale, the winners' checkouts and their payments (each
// event delivered twice, a quarter refunded), with faults striking while work is in flight; then
// the checker over every answer and the final database.
import { randomUUID } from 'node:crypto';
import { sleep } from '../../scripts/infra/process';
import { createPolicy, uniqueId } from '../support/fixtures';
import { tokenFor } from '../support/tokens';
import { check, type CheckReport } from './checker';
import { readInFlight, type Fault, type InFlight, type Phase } from './faults';
import { paymentEvents, runReserves, runSale, type Checkout, type Shopper } from './load';
import type { World } from './world';

/** How long a fault waits, once its moment came, for work in flight it can hit. */
const AIM_MS = 5_000;

export interface Strike {
  fault: Fault;
  /** When in its phase it strikes: after this share of the phase's clients know their outcome. */
  at: number;
}

export interface StrikeReport {
  fault: string;
  phase: string;
  detail: string;
  inFlight: InFlight;
  hit: boolean;
  /** From the fault to the first outcome a client learned after the fault was over. */
  recoveryMs: number | null;
  /** Outcomes clients learned while the fault lasted: the service never stopped. */
  toldDuring: number;
}

export interface ScenarioResult {
  strikes: StrikeReport[];
  check: CheckReport;
  load: { shoppers: number; stock: number; checkouts: number; events: number; userEvents: number };
  durationMs: number;
  /** What was still not done when the clients' deadline passed (null: everything settled). */
  unsettled: string | null;
}

export interface ScenarioOptions {
  world: World;
  shoppers: number;
  stock: number;
  strikes: Strike[];
  log: (line: string) => void;
  /** How long clients keep asking before they count as never told (I7). */
  deadlineMs?: number;
}

/**
 * Finals as they come, so a strike can wait for its moment and time the recovery after it. A sale
 * counts its wins only (a strike must come while stock is left); the other phases count every final.
 */
class Progress {
  readonly finals: number[] = [];
  private counted = 0;
  private waiters: { count: number; resolve: () => void }[] = [];

  constructor(private readonly winsOnly = false) {}

  onFinal = (at: number, won = true) => {
    this.finals.push(at);
    if (this.winsOnly && !won) return;
    this.counted += 1;
    this.waiters = this.waiters.filter((w) => (this.counted >= w.count ? (w.resolve(), false) : true));
  };

  reached(count: number): Promise<void> {
    if (this.counted >= count) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push({ count, resolve }));
  }

  firstAfter(t: number): number | null {
    const after = this.finals.filter((at) => at > t);
    return after.length ? Math.min(...after) : null;
  }
}

export async function runScenario(opts: ScenarioOptions): Promise<ScenarioResult> {
  const { world } = opts;
  const started = Date.now();
  const deadlineMs = opts.deadlineMs ?? 120_000;
  const policyId = await createPolicy(world.apis[0]!, { totalQuantity: opts.stock, perUserLimit: 1, name: uniqueId('faults') });
  const userEvents = await createUserEvents(world);
  const shoppers = await newShoppers(opts.shoppers);
  const run: Run = { world, log: opts.log, policyId, stock: opts.stock, strikes: opts.strikes, deadlineMs, reports: [] };
  await salePhase(run, shoppers);
  const checkouts = await reservePhase(run, shoppers);
  const payments = await paymentsPhase(run, checkouts, userEvents);
  const report = await check({
    pg: world.pg,
    policyId,
    stock: opts.stock,
    perUserLimit: 1,
    shoppers,
    checkouts,
    userEvents: { policyId: userEvents.policyId, events: userEvents.messages.length },
  });
  return {
    strikes: run.reports,
    check: report,
    load: {
      shoppers: opts.shoppers,
      stock: opts.stock,
      checkouts: checkouts.length,
      events: payments.events * 2,
      userEvents: userEvents.messages.length * 2,
    },
    durationMs: Date.now() - started,
    unsettled: payments.unsettled,
  };
}

/** What the phases of one scenario share. */
interface Run {
  world: World;
  log: (line: string) => void;
  /** The sale's policy. */
  policyId: string;
  stock: number;
  strikes: Strike[];
  deadlineMs: number;
  /** Each strike's report, as the phases strike. */
  reports: StrikeReport[];
}

/** One phase as its strikes see it. */
interface PhaseRun {
  name: Phase;
  progress: Progress;
  /** The finals the phase counts in all: a strike's `at` is a share of them. */
  total: number;
  /** Clients still waiting for their outcome. */
  waiting: () => number;
  /** Settles once the phase is over. */
  done: Promise<unknown>;
}

interface UserEvents {
  /** The EVENT policy the events trigger. */
  policyId: string;
  /** One Kafka message per event, each sent twice. */
  messages: { key: string; value: string }[];
}

/**
 * User events, sent with the payments (every one twice), each issuing one coupon of an EVENT
 * policy whose per-user limit (5) would let a duplicate through: 100 users with 2 events each.
 */
async function createUserEvents(world: World): Promise<UserEvents> {
  const trigger = `FAULTS_${uniqueId('t')
    .replace(/[^A-Za-z0-9]/g, '')
    .slice(-10)
    .toUpperCase()}`;
  const policyId = await createPolicy(world.apis[0]!, {
    issueMethod: 'EVENT',
    triggerEvent: trigger,
    totalQuantity: null,
    perUserLimit: 5,
    name: uniqueId('faults-events'),
  });
  const occurredAt = new Date(Date.now() + 1_000).toISOString();
  const messages = Array.from({ length: 100 }, (_, i) => uniqueId(`ue${i}`)).flatMap((userId) =>
    [0, 1].map(() => ({ key: userId, value: JSON.stringify({ eventId: randomUUID(), type: trigger, userId, occurredAt }) })),
  );
  return { policyId, messages };
}

function newShoppers(count: number): Promise<Shopper[]> {
  return Promise.all(
    Array.from({ length: count }, async (_, i) => {
      const user = uniqueId(`f${i}`);
      return { user, token: await tokenFor(user), key: randomUUID(), answers: [], failedRequests: 0 };
    }),
  );
}

/** The sale, its strikes striking while it runs. */
async function salePhase(run: Run, shoppers: Shopper[]): Promise<void> {
  const progress = new Progress(true);
  const done = runSale(shoppers, run.policyId, {
    apis: run.world.apis,
    deadlineMs: run.deadlineMs,
    concurrency: 200,
    onFinal: progress.onFinal,
  });
  const waiting = () => shoppers.filter((s) => !s.final).length;
  await Promise.all([done, strikePhase(run, { name: 'sale', progress, total: run.stock, waiting, done })]);
}

/** The winners reserve their coupons, the phase's strikes striking meanwhile; their checkouts. */
async function reservePhase(run: Run, shoppers: Shopper[]): Promise<Checkout[]> {
  const checkouts: Checkout[] = shoppers
    .filter((s) => s.final?.outcome === 'won' && s.final.couponId)
    .map((s, i) => ({
      user: s.user,
      token: s.token,
      couponId: s.final!.couponId!,
      orderId: uniqueId('order'),
      key: randomUUID(),
      answers: [],
      refund: i % 4 === 0,
      events: [],
    }));
  const progress = new Progress();
  const done = runReserves(checkouts, { apis: run.world.apis, deadlineMs: run.deadlineMs, concurrency: 100, onFinal: progress.onFinal });
  const waiting = () => checkouts.filter((c) => !c.reservation && !c.refusal).length;
  await Promise.all([done, strikePhase(run, { name: 'reserve', progress, total: checkouts.length, waiting, done })]);
  return checkouts;
}

/**
 * Payments, every event twice, and the user events (twice too): the phase's strikes strike while
 * the first copies are applied; then it waits (up to the deadline) for everything to settle.
 * How many distinct payment events there were, and what was still not done at the deadline.
 */
async function paymentsPhase(
  run: Run,
  checkouts: Checkout[],
  userEvents: UserEvents,
): Promise<{ events: number; unsettled: string | null }> {
  const { world } = run;
  const [first, again] = paymentEvents(checkouts);
  const eventIds = checkouts.flatMap((c) => c.events.map((e) => e.eventId));
  const applied = watchPayments(world, eventIds);
  await world.events.send(world.paymentsTopic, first ?? []);
  await world.events.send(world.userEventsTopic, userEvents.messages);
  const waiting = () => eventIds.length - applied.seen();
  await strikePhase(run, { name: 'payments', progress: applied.progress, total: eventIds.length, waiting, done: applied.allSeen });
  await world.events.send(world.paymentsTopic, again ?? []);
  await world.events.send(world.userEventsTopic, userEvents.messages);
  const pending = await settled(run, () => unsettled(world, { seen: applied.seen(), of: eventIds.length }, userEvents));
  await applied.stop();
  return { events: eventIds.length, unsettled: pending };
}

/** Counts the payment events Postgres has applied, as the payments phase's finals, until stopped. */
function watchPayments(world: World, eventIds: string[]) {
  const progress = new Progress();
  let seen = 0;
  let watching = true;
  const processed = () =>
    count(world.pg, "SELECT count(*) AS n FROM processed_events WHERE source = 'payments' AND event_id = ANY($1::text[])", [eventIds]);
  const watch = (async () => {
    while (watching) {
      const n = await processed().catch(() => seen);
      for (; seen < n; seen += 1) progress.onFinal(Date.now());
      await sleep(100);
    }
  })();
  const allSeen = (async () => {
    while (seen < eventIds.length && watching) await sleep(100);
  })();
  const stop = async () => {
    watching = false;
    await watch;
  };
  return { progress, seen: () => seen, allSeen, stop };
}

/** Asks `pending` until it answers null or the deadline passes; its last answer. */
async function settled(run: Run, pending: () => Promise<string | null>): Promise<string | null> {
  const until = Date.now() + run.deadlineMs;
  let left = await pending();
  while (left !== null && Date.now() < until) {
    await sleep(300);
    left = await pending();
  }
  if (left !== null) run.log(`not settled after ${run.deadlineMs / 1000} s: ${left}`);
  return left;
}

/**
 * Null once every payment is applied, every user event's coupon exists, and the bridge has taken
 * every message of both topics (so the duplicates had their chance) with nothing of them left in
 * the inbox; else the first of those not done yet.
 */
async function unsettled(world: World, payments: { seen: number; of: number }, userEvents: UserEvents): Promise<string | null> {
  if (payments.seen < payments.of) return `${payments.seen} of ${payments.of} payment events applied`;
  const coupons = await count(world.pg, 'SELECT count(*) AS n FROM coupons WHERE policy_id = $1', [userEvents.policyId]);
  if (coupons < userEvents.messages.length) return `${coupons} of ${userEvents.messages.length} user-event coupons`;
  if (!(await world.consumed(world.userEventsTopic))) return 'user-events not all consumed by the bridge';
  if (!(await world.consumed(world.paymentsTopic))) return 'payments not all consumed by the bridge';
  const inbox = await count(world.pg, "SELECT count(*) AS n FROM event_inbox WHERE source = 'user-events' AND queue_prefix = $1", [
    world.queuePrefix,
  ]);
  return inbox === 0 ? null : `${inbox} user events still in the inbox`;
}

/** The `n` of a `SELECT count(*) AS n` query. */
async function count(pg: World['pg'], sql: string, params: unknown[]): Promise<number> {
  return Number((await pg.query<{ n: string }>(sql, params)).rows[0]?.n ?? 0);
}

/** Strikes the phase's faults one after another, each when its share of the phase's finals is reached. */
async function strikePhase(run: Run, phase: PhaseRun): Promise<void> {
  const ended = phase.done.then(() => 'ended' as const);
  for (const strike of run.strikes.filter((s) => s.fault.phase === phase.name).sort((a, b) => a.at - b.at)) {
    if ((await Promise.race([phase.progress.reached(Math.floor(phase.total * strike.at)), ended])) === 'ended') {
      const found = await readInFlight(run.world, run.policyId, 0);
      const detail = 'the phase ended before its moment came';
      run.reports.push({
        fault: strike.fault.name,
        phase: phase.name,
        detail,
        inFlight: found,
        hit: false,
        recoveryMs: null,
        toldDuring: 0,
      });
      continue;
    }
    run.reports.push(await strikeNow(run, phase, strike.fault, ended));
  }
}

/** Aims the fault, strikes, and reports whether it hit and how soon clients were told again. */
async function strikeNow(run: Run, phase: PhaseRun, fault: Fault, ended: Promise<'ended'>): Promise<StrikeReport> {
  const { world, policyId, log } = run;
  const found = await aim(run, phase, fault, ended);
  const at = Date.now();
  log(`${fault.name}: striking (${JSON.stringify(found)})`);
  const detail = await fault.strike({ world, policyId, log, inFlight: () => readInFlight(world, policyId, phase.waiting()) });
  const over = Date.now();
  const { finals } = phase.progress;
  const toldDuring = finals.filter((t) => t > at && t <= over).length;
  // A phase that finished while the fault lasted has no outcome after it: nothing to wait for.
  const first = toldDuring > 0 && finals.every((t) => t <= over) ? null : await firstToldAfter(phase.progress, over);
  const hit = fault.hitAfter ? fault.hitAfter(world) : fault.hit(found);
  return { fault: fault.name, phase: phase.name, detail, inFlight: found, hit, recoveryMs: first === null ? null : first - at, toldDuring };
}

/**
 * Aimed: from its moment on, the fault waits (a few seconds at most) until there is work in flight
 * it can break, so a lull between batches does not make it strike at nothing. What is in flight.
 */
async function aim(run: Run, phase: PhaseRun, fault: Fault, ended: Promise<'ended'>): Promise<InFlight> {
  let found = await readInFlight(run.world, run.policyId, phase.waiting());
  for (const aimUntil = Date.now() + AIM_MS; !fault.hitAfter && !fault.hit(found) && Date.now() < aimUntil;) {
    if ((await Promise.race([sleep(25), ended])) === 'ended') break;
    found = await readInFlight(run.world, run.policyId, phase.waiting());
  }
  return found;
}

/** The first final after `t`, waiting up to a minute for one; null if none came. */
async function firstToldAfter(progress: Progress, t: number): Promise<number | null> {
  for (let i = 0; i < 600; i += 1) {
    const first = progress.firstAfter(t);
    if (first !== null) return first;
    await sleep(100);
  }
  return null;
}
