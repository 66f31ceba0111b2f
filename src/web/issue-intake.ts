// The issue requests one web process receives in one turn of its event loop, decided as far as Redis
// can decide them before anything is queued. During a sale most requests lose: they are refused by
// one admission script call per policy and turn, answered at once, and never become jobs. Only the
// winners (admitted, each holding its slot) and the requests Redis cannot decide yet travel to a
// worker as one batch job, which writes the coupons to Postgres and publishes their outcomes.
//
//   admit.lua per policy ─┬─ refused (final) ──────────── outcome stored, answered now
//                         ├─ admitted (slot held) ──┐
//                         └─ wait / not loaded ─────┴─ one issue-batch job ─► worker ─► outcome pushed
//
// A win is told only once the coupon is committed (the worker's outcome); SOLD_OUT only when no unit
// can come back: while admissions are pending, a request that finds the stock gone waits in the job
// for them (src/usecases/issue-coupon.ts) instead of being refused.
import { randomUUID } from 'node:crypto';
import { coalescePerTurn } from '../core/concurrency';
import { neverSent } from '../core/redis';
import { AppError, reason } from '../core/errors';
import type { Logger } from '../core/logger';
import { issueRequestsTotal } from '../core/metrics';
import type { Queues } from '../queues/connection';
import { addJob, notQueued } from '../queues/enqueue';
import { MAX_ISSUE_BATCH, type IssueJob } from '../queues/jobs';
import { newJobId, parseRequestId, requestIdOf } from '../queues/names';
import { batchJobState, ORPHAN_ADMISSION_AGE_MS, readOutcome, storeOutcomes, type StoredOutcome } from '../queues/outcomes';
import { admitOnce, releaseAdmission, type AdmissionAnswer } from '../storage/admission/admission';
import { findCouponByRequest } from '../storage/coupon';
import { ISSUE_BY_POLICY_METHODS } from '../usecases/issue-coupon';
import { noteSoldOutRefusal } from '../observability/stock-alerts';
import type { RejectionCounter } from '../observability/rejection-stats';
import { IDEMPOTENCY_TTL_SECONDS } from './idempotency';
import type { OutcomeHub } from './outcome-hub';
import { failpoint } from '../core/failpoints';

export interface IntakeRequest extends IssueJob {
  /** How long the client waits for the outcome (Prefer: wait), in ms; 0 when it polls. */
  waitMs: number;
  /** The request's Idempotency-Key, as its Redis key and the fingerprint of what it asks. */
  idempotency?: { redisKey: string; fingerprint: string };
}

export interface IntakeAnswer {
  requestId: string;
  /** The Idempotency-Key was used for another request: 409. */
  conflict?: boolean;
  /** The Idempotency-Key's first request (requestId is that request's id): answer with its outcome. */
  replay?: boolean;
  /** The final outcome, when the web decided the request itself. */
  decided?: StoredOutcome;
  /** For a queued request whose client waits: its outcome once a worker publishes it (null: not in time). */
  outcome?: Promise<StoredOutcome | null>;
}

export interface IntakeDeps {
  queues: Queues;
  hub: OutcomeHub;
  rejections: RejectionCounter;
  log: Logger;
}

interface Item {
  data: IntakeRequest;
  index: number;
  requestId: string;
  /** Answered from the Idempotency-Key's first request, or refused for another body: not issued at all. */
  keyed?: { replayOf: string } | { conflict: true };
  decided?: StoredOutcome;
  admittedAs?: { total: number | null; admitted: number | null };
  /** Its admission call got no answer: Redis may have admitted it. */
  admissionUnknown?: true;
}

/** Takes issue requests; each resolves once it is decided or queued, or rejects with 503 when it could not be queued. */
export function createIssueIntake(deps: IntakeDeps): (request: IntakeRequest) => Promise<IntakeAnswer> {
  const owed = new OwedReleases(deps);
  return coalescePerTurn((batch: IntakeRequest[]) => takeTurn(deps, owed, batch), MAX_ISSUE_BATCH);
}

/** How often a web retries giving back the slots of turns it could not queue, while Redis is away. */
const OWED_RETRY_MS = 250;

/**
 * What this web owes Redis for turns it answered 503. Their admitted slots go back, and their
 * Idempotency-Keys are freed so a retry starts afresh, as soon as Redis answers: a Redis that stops
 * gracefully keeps them on disk, and left alone the slots would come back only at the reconciler's
 * pace (ADMISSION_RECONCILE_AGE_MS), after the sale's last buyers may have been told SOLD_OUT, while
 * their shoppers, told 503, met USER_LIMIT_REACHED on their retry. All of it is settled before this
 * web admits anything else.
 *
 * A turn whose job add failed in a way that leaves it unknown whether Redis ran it (its reply was lost
 * with the connection, or timed out) is settled by the job's presence once Redis answers: there, the
 * job settles its requests and their keys answer its outcome; absent, the turn is undone as above.
 */
class OwedReleases {
  private readonly slots = new Map<string, string>(); // requestId -> policyId
  private readonly keys = new Set<string>();
  /** By one request of the turn (its job is the turn's batch job). */
  private readonly uncertain = new Map<string, { admitted: Item[]; keys: string[] }>();
  private settling: Promise<void> | null = null;
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly deps: IntakeDeps) {}

  /** Whether anything is owed (the sale path asks this every turn). */
  get any(): boolean {
    return this.slots.size > 0 || this.keys.size > 0 || this.uncertain.size > 0;
  }

  /**
   * A turn that was not queued: its slots and keys go back at once, or as soon as Redis answers. Its
   * 503 does not wait for that (a Redis that stopped answering would make it wait a timeout more):
   * the next turn settles everything owed before it admits, a retry of these requests included.
   */
  undo(admitted: Item[], keys: string[]): void {
    for (const i of admitted) this.slots.set(i.requestId, i.data.policyId!);
    for (const k of keys) this.keys.add(k);
    this.settleSoon();
  }

  /** A turn whose add may or may not have run, named by one of its requests. */
  addUncertain(requestId: string, admitted: Item[], keys: string[]): void {
    this.uncertain.set(requestId, { admitted, keys });
    this.settleSoon();
  }

  private settleSoon(): void {
    void this.settle().then(() => {
      if (this.any) this.retrying();
    });
  }

  /**
   * Settles what Redis takes now; resolves either way. One round at a time: asked while a round
   * runs, it runs another after it, so what was owed meanwhile is in it.
   */
  settle(): Promise<void> {
    if (!this.any) return Promise.resolve();
    if (this.settling) return this.settling.then(() => this.settle());
    this.settling = this.giveBack().finally(() => (this.settling = null));
    return this.settling;
  }

  private retrying(): void {
    if (this.timer) return;
    this.deps.log.warn(
      { slots: this.slots.size, keys: this.keys.size, uncertain: this.uncertain.size },
      'turns answered 503 not settled with Redis yet: retrying until it answers',
    );
    this.timer = setInterval(() => void this.settle(), OWED_RETRY_MS).unref();
  }

  private async giveBack(): Promise<void> {
    const redis = this.deps.queues.connection;
    // Asked on the connection the add went on: Redis runs its commands in order, so an add that was
    // still on its way is run before this question.
    for (const [requestId, turn] of this.uncertain) {
      try {
        const queued = (await batchJobState(this.deps.queues, requestId)) !== 'absent';
        this.uncertain.delete(requestId);
        if (queued) {
          this.deps.log.warn(
            { jobId: parseRequestId(requestId).jobId, requests: turn.admitted.length },
            'a turn answered 503 was queued after all: its job settles it',
          );
        } else {
          for (const i of turn.admitted) this.slots.set(i.requestId, i.data.policyId!);
          for (const k of turn.keys) this.keys.add(k);
        }
      } catch {
        // Still away: the next round asks again.
      }
    }
    await Promise.all(
      [...this.slots].map(async ([requestId, policyId]) => {
        try {
          await releaseAdmission(redis, policyId, requestId, true);
          this.slots.delete(requestId);
        } catch {
          // Still away: the next round tries again.
        }
      }),
    );
    if (this.keys.size > 0) {
      const keys = [...this.keys];
      try {
        await redis.del(...keys);
        for (const k of keys) this.keys.delete(k);
      } catch {
        // Still away: the next round tries again.
      }
    }
    if (!this.any && this.timer) {
      clearInterval(this.timer);
      this.timer = null;
      this.deps.log.info('settled the turns answered 503 with Redis');
    }
  }
}

async function takeTurn(deps: IntakeDeps, owed: OwedReleases, batch: IntakeRequest[]): Promise<(IntakeAnswer | Error)[]> {
  // Slots owed from an earlier turn go back before this turn admits: first come stays first served.
  if (owed.any) await owed.settle();
  const jobId = newJobId('issue-batch', randomUUID());
  const now = Date.now();
  const all: Item[] = batch.map((data, index) => ({ data, index, requestId: requestIdOf(jobId, index) }));
  try {
    await claimKeys(deps, all);
  } catch (error) {
    return all.map(() => notQueued(error));
  }
  const items = all.filter((i) => !i.keyed);
  await admitByPolicy(deps, items, now);
  // A web that dies here holds admissions whose records and job do not exist yet.
  await failpoint('web.after-admission');

  const carried = items.filter((i) => !i.decided);
  const waits = new Map(carried.filter((i) => i.data.waitMs > 0).map((i) => [i.index, deps.hub.wait(i.requestId, i.data.waitMs)]));
  let stored = false;
  let adding = false;
  try {
    // The record goes first: a worker that finishes the job overwrites it, never the other way round.
    await storeOutcomes(
      deps.queues.connection,
      jobId,
      items.map((i) => [i.index, i.decided ?? pendingRecord(i, now)]),
    );
    stored = true;
    if (carried.length > 0) {
      const requests = carried.map(({ data: { waitMs: _wait, ...data }, requestId, admittedAs }) => ({
        ...data,
        requestId,
        ...(admittedAs && { admittedAs }),
      }));
      adding = true;
      await addJob(deps.queues, 'issue-batch', { requests }, jobId);
      await failpoint('web.after-add');
    }
  } catch (error) {
    for (const i of carried) deps.hub.cancel(i.requestId);
    // Not queued, or not known to be: given back now, or once Redis answers whether the job exists.
    if (adding && !neverSent(error)) owed.addUncertain(carried[0]!.requestId, mayHoldAdmission(carried), claimedKeys(items));
    else owed.undo(mayHoldAdmission(carried), claimedKeys(items));
    const unavailable = error instanceof AppError ? error : notQueued(error);
    // A refusal the web decided is final whatever became of the others, once its record is stored
    // (its statusUrl must answer). A replay of a request of this turn shares its first request's fate.
    const replaysThisTurn = (i: Item) => i.keyed && 'replayOf' in i.keyed && i.keyed.replayOf.startsWith(`${jobId}.`);
    return all.map((i) =>
      i.keyed
        ? replaysThisTurn(i)
          ? unavailable
          : keyedAnswer(i)
        : i.decided && stored
          ? { requestId: i.requestId, decided: i.decided }
          : unavailable,
    );
  }
  countDecided(deps, items);
  return all.map((i) =>
    i.keyed
      ? keyedAnswer(i)
      : i.decided
        ? { requestId: i.requestId, decided: i.decided }
        : { requestId: i.requestId, outcome: waits.get(i.index) },
  );
}

/**
 * The carried requests that may hold an admission: those the web admitted, and those whose
 * admission call failed without an answer (Redis may have run it). Releasing one that holds none
 * changes nothing (release.lua).
 */
const mayHoldAdmission = (carried: Item[]) => carried.filter((i) => i.data.policyId && (i.admittedAs || i.admissionUnknown));
const claimedKeys = (items: Item[]) => items.filter((i) => i.data.idempotency).map((i) => i.data.idempotency!.redisKey);

function keyedAnswer(i: Item): IntakeAnswer {
  return i.keyed && 'replayOf' in i.keyed ? { requestId: i.keyed.replayOf, replay: true } : { requestId: i.requestId, conflict: true };
}

/**
 * Claims the Idempotency-Keys of the turn's requests that carry one: `SET NX GET` of
 * `<fingerprint>|<requestId>` for a day. A key seen before names its first request (the same body:
 * answered with that request's outcome) or another body (409); neither is issued again.
 */
async function claimKeys(deps: IntakeDeps, items: Item[]): Promise<void> {
  const keyed = items.filter((i) => i.data.idempotency);
  const claim = (i: Item) => `${i.data.idempotency!.fingerprint}|${i.requestId}|${Date.now()}`;
  const previous = await Promise.all(
    keyed.map((i) =>
      deps.queues.connection.call('SET', i.data.idempotency!.redisKey, claim(i), 'NX', 'GET', 'EX', String(IDEMPOTENCY_TTL_SECONDS)),
    ),
  );
  await Promise.all(
    keyed.map(async (item, k) => {
      const prior = previous[k];
      if (typeof prior !== 'string') return;
      const [fingerprint, requestId, claimedAt] = prior.split('|');
      if (fingerprint !== item.data.idempotency!.fingerprint || !requestId) {
        item.keyed = { conflict: true };
      } else if (Date.now() - Number(claimedAt ?? 0) >= ORPHAN_ADMISSION_AGE_MS && (await vanished(deps, requestId))) {
        // The key's first request was never stored nor queued (its web died between claiming the key
        // and writing the request down): this retry takes the key over and is asked afresh.
        await deps.queues.connection.call('SET', item.data.idempotency!.redisKey, claim(item), 'XX', 'EX', String(IDEMPOTENCY_TTL_SECONDS));
      } else {
        item.keyed = { replayOf: requestId };
      }
    }),
  );
}

/**
 * A request with neither an outcome record nor a batch job, nor a coupon in Postgres: it never got
 * past its web's turn. (A Redis that lost its data loses the record and the job of a request whose
 * coupon is committed: that request is the key's answer, and a retry must not be asked afresh.)
 */
async function vanished(deps: IntakeDeps, requestId: string): Promise<boolean> {
  const [record, job] = await Promise.all([
    readOutcome(deps.queues.connection, requestId, deps.log),
    batchJobState(deps.queues, requestId),
  ]);
  return record === null && job === 'absent' && (await findCouponByRequest(requestId)) === null;
}

/**
 * One admit.lua call per policy named in the turn. Requests by code go to the worker as they are (a
 * single-use code must be claimed first); a code that names no policy is refused here.
 */
async function admitByPolicy(deps: IntakeDeps, items: Item[], now: number): Promise<void> {
  const byPolicy = new Map<string, Item[]>();
  for (const item of items) {
    const { policyId, via } = item.data;
    if (policyId === null) item.decided = refusal(item, 'CODE_NOT_FOUND', now);
    else if ((via ?? 'policy') === 'policy') {
      const group = byPolicy.get(policyId);
      if (group) group.push(item);
      else byPolicy.set(policyId, [item]);
    }
  }
  await Promise.all(
    [...byPolicy].map(async ([policyId, group]) => {
      let answers: AdmissionAnswer[];
      try {
        answers = await admitOnce(
          deps.queues.connection,
          policyId,
          ISSUE_BY_POLICY_METHODS,
          group.map((i) => ({ requestId: i.requestId, userId: i.data.userId })),
          true,
        );
      } catch (error) {
        // Redis did not answer: the requests go to the job as they are (or the add fails with 503 too,
        // and whatever the call may have admitted is given back with the turn).
        deps.log.warn({ err: error, policyId }, 'admission in the web failed; leaving the requests to a worker');
        for (const item of group) item.admissionUnknown = true;
        return;
      }
      answers.forEach((answer, k) => {
        const item = group[k]!;
        if (answer.kind === 'refused') {
          item.decided = refusal(item, answer.code, now);
          if (answer.code === 'SOLD_OUT') noteSoldOutRefusal(deps.log, policyId, answer.total);
        } else if (answer.kind === 'admitted') {
          item.admittedAs = { total: answer.total, admitted: answer.admitted };
        }
      });
    }),
  );
}

function refusal(item: Item, code: Parameters<typeof reason>[0], now: number): StoredOutcome {
  return { s: 'rejected', u: item.data.userId, c: now, f: now, e: reason(code), w: 1 };
}

function pendingRecord(item: Item, now: number): StoredOutcome {
  return { s: 'pending', u: item.data.userId, c: now };
}

function countDecided(deps: IntakeDeps, items: Item[]): void {
  const refused = items.flatMap((i) => (i.decided?.e ? [{ policyId: i.data.policyId, code: i.decided.e.code }] : []));
  // One increment per code and turn: a sale's turn refuses a hundred requests for the same reason.
  const byCode = new Map<string, number>();
  for (const r of refused) byCode.set(r.code, (byCode.get(r.code) ?? 0) + 1);
  for (const [code, n] of byCode) issueRequestsTotal.inc({ outcome: 'rejected', reason: code }, n);
  deps.rejections.count(refused);
}
