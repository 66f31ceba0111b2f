// One scenario of the fault suite: a flash sale, the winners' checkouts and their payments (each
// event delivered twice, a quarter refunded), with faults striking while work is in flight; then
// the checker over every answer and the final database.
import { randomUUID } from 'node:crypto';
import { sleep } from '../../scripts/infra/process';
import { createPolicy, uniqueId } from '../support/fixtures';
import { tokenFor } from '../support/tokens';
import { check, type CheckReport } from './checker';
import { readInFlight, type Fault, type InFlight } from './faults';
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
  const { world, log } = opts;
  const started = Date.now();
  const deadlineMs = opts.deadlineMs ?? 120_000;
  const policyId = await createPolicy(world.apis[0]!, { totalQuantity: opts.stock, perUserLimit: 1, name: uniqueId('faults') });
  // User events, sent with the payments (every one twice), each issuing one coupon of an EVENT
  // policy whose per-user limit (5) would let a duplicate through: 100 users with 2 events each.
  const trigger = `FAULTS_${uniqueId('t')
    .replace(/[^A-Za-z0-9]/g, '')
    .slice(-10)
    .toUpperCase()}`;
  const eventPolicyId = await createPolicy(world.apis[0]!, {
    issueMethod: 'EVENT',
    triggerEvent: trigger,
    totalQuantity: null,
    perUserLimit: 5,
    name: uniqueId('faults-events'),
  });
  const occurredAt = new Date(Date.now() + 1_000).toISOString();
  const userEvents = Array.from({ length: 100 }, (_, i) => uniqueId(`ue${i}`)).flatMap((userId) =>
    [0, 1].map(() => ({ key: userId, value: JSON.stringify({ eventId: randomUUID(), type: trigger, userId, occurredAt }) })),
  );
  const shoppers: Shopper[] = await Promise.all(
    Array.from({ length: opts.shoppers }, async (_, i) => {
      const user = uniqueId(`f${i}`);
      return { user, token: await tokenFor(user), key: randomUUID(), answers: [], failedRequests: 0 };
    }),
  );
  const reports: StrikeReport[] = [];
  const inPhase = (phase: string) => opts.strikes.filter((s) => s.fault.phase === phase);

  /** Strikes the phase's faults one after another, each when its share of `total` finals is reached. */
  const strikePhase = async (
    phase: string,
    progress: Progress,
    total: number,
    waiting: () => number,
    recoveredAfter: (t: number) => Promise<number | null>,
    phaseDone: Promise<unknown>,
  ) => {
    const ended = phaseDone.then(() => 'ended' as const);
    for (const strike of inPhase(phase).sort((a, b) => a.at - b.at)) {
      if ((await Promise.race([progress.reached(Math.floor(total * strike.at)), ended])) === 'ended') {
        const found = await readInFlight(world, policyId, 0);
        reports.push({
          fault: strike.fault.name,
          phase,
          detail: 'the phase ended before its moment came',
          inFlight: found,
          hit: false,
          recoveryMs: null,
          toldDuring: 0,
        });
        continue;
      }
      // Aimed: from its moment on, the fault waits (a few seconds at most) until there is work in
      // flight it can break, so a lull between batches does not make it strike at nothing.
      let found = await readInFlight(world, policyId, waiting());
      for (const aimUntil = Date.now() + AIM_MS; !strike.fault.hitAfter && !strike.fault.hit(found) && Date.now() < aimUntil;) {
        if ((await Promise.race([sleep(25), ended])) === 'ended') break;
        found = await readInFlight(world, policyId, waiting());
      }
      const at = Date.now();
      log(`${strike.fault.name}: striking (${JSON.stringify(found)})`);
      const detail = await strike.fault.strike({ world, policyId, log, inFlight: () => readInFlight(world, policyId, waiting()) });
      const over = Date.now();
      const toldDuring = progress.finals.filter((t) => t > at && t <= over).length;
      // A phase that finished while the fault lasted has no outcome after it: nothing to wait for.
      const first = toldDuring > 0 && progress.finals.every((t) => t <= over) ? null : await recoveredAfter(over);
      const hit = strike.fault.hitAfter ? strike.fault.hitAfter(world) : strike.fault.hit(found);
      reports.push({
        fault: strike.fault.name,
        phase,
        detail,
        inFlight: found,
        hit,
        recoveryMs: first === null ? null : first - at,
        toldDuring,
      });
    }
  };

  // ---- the sale ----
  const sale = new Progress(true);
  const untilTold = async (progress: Progress, t: number) => {
    for (let i = 0; i < 600; i += 1) {
      const first = progress.firstAfter(t);
      if (first !== null) return first;
      await sleep(100);
    }
    return null;
  };
  const saleDone = runSale(shoppers, policyId, { apis: world.apis, deadlineMs, concurrency: 200, onFinal: sale.onFinal });
  await Promise.all([
    saleDone,
    strikePhase(
      'sale',
      sale,
      opts.stock,
      () => shoppers.filter((s) => !s.final).length,
      (t) => untilTold(sale, t),
      saleDone,
    ),
  ]);

  // ---- the winners reserve ----
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
  const reserves = new Progress();
  const reservesDone = runReserves(checkouts, { apis: world.apis, deadlineMs, concurrency: 100, onFinal: reserves.onFinal });
  await Promise.all([
    reservesDone,
    strikePhase(
      'reserve',
      reserves,
      checkouts.length,
      () => checkouts.filter((c) => !c.reservation && !c.refusal).length,
      (t) => untilTold(reserves, t),
      reservesDone,
    ),
  ]);

  // ---- payments: every event twice ----
  const [first, again] = paymentEvents(checkouts);
  const eventIds = checkouts.flatMap((c) => c.events.map((e) => e.eventId));
  const processed = async () =>
    Number(
      (
        await world.pg.query<{ n: string }>(
          "SELECT count(*) AS n FROM processed_events WHERE source = 'payments' AND event_id = ANY($1::text[])",
          [eventIds],
        )
      ).rows[0]?.n ?? 0,
    );
  const payments = new Progress();
  let seen = 0;
  let watching = true;
  const watch = (async () => {
    while (watching) {
      const n = await processed().catch(() => seen);
      for (; seen < n; seen += 1) payments.onFinal(Date.now());
      await sleep(100);
    }
  })();
  await world.events.send(world.paymentsTopic, first ?? []);
  await world.events.send(world.userEventsTopic, userEvents);
  const allSeen = (async () => {
    while (seen < eventIds.length && watching) await sleep(100);
  })();
  await strikePhase(
    'payments',
    payments,
    eventIds.length,
    () => eventIds.length - seen,
    (t) => untilTold(payments, t),
    allSeen,
  );
  await world.events.send(world.paymentsTopic, again ?? []);
  await world.events.send(world.userEventsTopic, userEvents);
  const until = Date.now() + deadlineMs;
  const eventCoupons = async () =>
    Number(
      (await world.pg.query<{ n: string }>('SELECT count(*) AS n FROM coupons WHERE policy_id = $1', [eventPolicyId])).rows[0]?.n ?? 0,
    );
  // Done when every payment is applied, every user event's coupon exists, and the bridge has taken
  // every message of both topics (so the duplicates had their chance) with nothing of them left in the inbox.
  const unsettled = async (): Promise<string | null> => {
    if (seen < eventIds.length) return `${seen} of ${eventIds.length} payment events applied`;
    const coupons = await eventCoupons();
    if (coupons < userEvents.length) return `${coupons} of ${userEvents.length} user-event coupons`;
    if (!(await world.consumed(world.userEventsTopic))) return 'user-events not all consumed by the bridge';
    if (!(await world.consumed(world.paymentsTopic))) return 'payments not all consumed by the bridge';
    const inbox = Number(
      (
        await world.pg.query<{ n: string }>("SELECT count(*) AS n FROM event_inbox WHERE source = 'user-events' AND queue_prefix = $1", [
          world.queuePrefix,
        ])
      ).rows[0]?.n ?? 0,
    );
    return inbox === 0 ? null : `${inbox} user events still in the inbox`;
  };
  let pending = await unsettled();
  while (pending !== null && Date.now() < until) {
    await sleep(300);
    pending = await unsettled();
  }
  if (pending !== null) log(`not settled after ${deadlineMs / 1000} s: ${pending}`);
  watching = false;
  await watch;

  const report = await check({
    pg: world.pg,
    policyId,
    stock: opts.stock,
    perUserLimit: 1,
    shoppers,
    checkouts,
    userEvents: { policyId: eventPolicyId, events: userEvents.length },
  });
  return {
    strikes: reports,
    check: report,
    load: {
      shoppers: opts.shoppers,
      stock: opts.stock,
      checkouts: checkouts.length,
      events: eventIds.length * 2,
      userEvents: userEvents.length * 2,
    },
    durationMs: Date.now() - started,
    unsettled: pending,
  };
}
