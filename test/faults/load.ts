// The fault suite's load: shoppers racing for a flash sale's coupons, then the winners checking out
// and paying (every payment event delivered twice, some refunded). Every client behaves as a careful
// platform backend does: the same Idempotency-Key on every retry, another web when one does not
// answer, and it keeps asking until it knows. Every answer is recorded, for the checker.
import { randomUUID } from 'node:crypto';
import { mapLimit } from '../../src/core/concurrency';
import type { Api } from '../support/http';

export interface Answer {
  at: number;
  /** HTTP status, or 0 when the request got no answer (connection refused or cut). */
  status: number;
  web: number;
  /** The outcome the answer told, when it told one. */
  outcome?: 'won' | 'lost' | 'failed' | 'pending';
  code?: string;
}

export interface Shopper {
  user: string;
  token: string;
  key: string;
  answers: Answer[];
  /** What the shopper was finally told (none when it never learned within the deadline). */
  final?: { outcome: 'won' | 'lost'; code?: string; couponId?: string; at: number };
  /** Requests that ended `failed` (the system gave up on them): the shopper asked again with a new key. */
  failedRequests: number;
}

export interface Checkout {
  user: string;
  token: string;
  couponId: string;
  orderId: string;
  key: string;
  answers: Answer[];
  reservation?: { id: string; at: number };
  refusal?: string;
  /** Whether this order's payment is refunded after it completed. */
  refund: boolean;
  events: { eventId: string; type: 'PAYMENT_COMPLETED' | 'PAYMENT_REFUNDED' }[];
}

export interface LoadOptions {
  apis: Api[];
  /** Stops every client that has not finished by then. */
  deadlineMs: number;
  concurrency: number;
  /** Called with each final answer's time (and whether it was a win), so the runner can strike and time recovery. */
  onFinal?: (at: number, won: boolean) => void;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A client's next web: its own first, then the next one after each time a web did not answer. */
function webOf(start: number, attempt: number, count: number): number {
  return (start + attempt) % count;
}

async function call(api: Api, method: string, path: string, opts: Parameters<Api['call']>[2]) {
  try {
    return await api.call(method, path, opts);
  } catch {
    return { status: 0, body: undefined, headers: {} };
  }
}

/** One shopper asks for a coupon of `policyId` until it knows whether it got one. */
async function shop(shopper: Shopper, index: number, policyId: string, opts: LoadOptions, until: number): Promise<void> {
  for (let attempt = 0; Date.now() < until; attempt += 1) {
    const web = webOf(index, attempt, opts.apis.length);
    const reply = await call(opts.apis[web] as Api, 'POST', '/api/v1/coupons/issue', {
      token: shopper.token,
      body: { policyId },
      headers: { prefer: 'wait=10', 'idempotency-key': shopper.key },
    });
    const answer: Answer = { at: Date.now(), status: reply.status, web };
    shopper.answers.push(answer);
    if (reply.status === 200) {
      const view = reply.body as { status: string; result?: { id: string }; reason?: { code: string } };
      if (view.status === 'succeeded' || view.status === 'rejected') {
        answer.outcome = view.status === 'succeeded' ? 'won' : 'lost';
        answer.code = view.reason?.code;
        shopper.final = { outcome: answer.outcome, code: view.reason?.code, couponId: view.result?.id, at: answer.at };
        opts.onFinal?.(answer.at, answer.outcome === 'won');
        return;
      }
      answer.outcome = view.status === 'failed' ? 'failed' : 'pending';
      if (view.status === 'failed') {
        // The system gave up on this request; a backend asks again, as a new request.
        shopper.failedRequests += 1;
        shopper.key = randomUUID();
      }
    }
    // 202 (the wait ran out), 429, 5xx, or no answer: ask again with the same key.
    await sleep(reply.status === 202 ? 0 : 100 + Math.random() * 200);
  }
}

export async function runSale(shoppers: Shopper[], policyId: string, opts: LoadOptions): Promise<void> {
  const until = Date.now() + opts.deadlineMs;
  await mapLimit(
    shoppers.map((s, i) => ({ s, i })),
    opts.concurrency,
    ({ s, i }) => shop(s, i, policyId, opts, until),
  );
}

/** One winner reserves its coupon on its own order, retrying with its key until it knows. */
async function reserveOne(checkout: Checkout, index: number, opts: LoadOptions, until: number): Promise<void> {
  const body = { couponId: checkout.couponId, orderId: checkout.orderId, orderAmount: 50_000 };
  for (let attempt = 0; Date.now() < until; attempt += 1) {
    const web = webOf(index, attempt, opts.apis.length);
    const api = opts.apis[web] as Api;
    const reply = await call(api, 'POST', '/api/v1/coupons/reserve', {
      token: checkout.token,
      body,
      headers: { prefer: 'wait=10', 'idempotency-key': checkout.key },
    });
    const answer: Answer = { at: Date.now(), status: reply.status, web };
    checkout.answers.push(answer);
    const view = (reply.status === 200 ? reply.body : undefined) as
      { status: string; result?: { reservationId: string }; reason?: { code: string } } | undefined;
    if (view?.status === 'succeeded' && view.result) {
      answer.outcome = 'won';
      checkout.reservation = { id: view.result.reservationId, at: answer.at };
      opts.onFinal?.(answer.at, true);
      return;
    }
    if (view?.status === 'rejected') {
      answer.outcome = 'lost';
      answer.code = view.reason?.code;
      checkout.refusal = view.reason?.code;
      opts.onFinal?.(answer.at, false);
      return;
    }
    await sleep(reply.status === 202 ? 0 : 100 + Math.random() * 200);
  }
}

export async function runReserves(checkouts: Checkout[], opts: LoadOptions): Promise<void> {
  const until = Date.now() + opts.deadlineMs;
  await mapLimit(
    checkouts.map((c, i) => ({ c, i })),
    opts.concurrency,
    ({ c, i }) => reserveOne(c, i, opts, until),
  );
}

/** The payment events of the reserved checkouts: each COMPLETED (and REFUNDED after it) delivered twice. */
export function paymentEvents(checkouts: Checkout[]): { key: string; value: string }[][] {
  const rounds: { key: string; value: string }[][] = [[], []];
  for (const c of checkouts) {
    if (!c.reservation) continue;
    const completed = { eventId: randomUUID(), type: 'PAYMENT_COMPLETED' as const };
    c.events.push(completed);
    if (c.refund) c.events.push({ eventId: randomUUID(), type: 'PAYMENT_REFUNDED' as const });
    for (const e of c.events) {
      const message = {
        key: c.orderId,
        value: JSON.stringify({ ...e, orderId: c.orderId, reservationId: c.reservation.id, occurredAt: new Date().toISOString() }),
      };
      // Per order: COMPLETED, REFUNDED, then both again (a redelivery of the whole order's history).
      rounds[0]?.push(message);
      rounds[1]?.push(message);
    }
  }
  return rounds;
}
