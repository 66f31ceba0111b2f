// The flash-sale bench's load generator: every user asks once, through a fixed number of keep-alive
// connections, and keeps asking until it knows its outcome, as a shopper's page would. Two ways of
// asking: `wait` (POST with `Prefer: wait=10`, answered 200 with the outcome; a 202 is long-polled) and
// `poll` (POST, 202, then long-poll the statusUrl). Per user it records when the first answer came and
// when the outcome was known; everything the bench reports about a sale is computed from these.
// Each user's request is built as bytes before the clock starts and sent on a plain keep-alive
// connection (keep-alive.ts), so the generator costs little CPU on a box it shares with the service.
import { KeepAliveConnection, requestBytes } from './keep-alive';

export type AskMode = 'wait' | 'poll';

/** What one user learned: a final outcome, or a refusal at the door (an HTTP status, or 0 for a network error). */
export interface Shopper {
  sentAt: number;
  firstAt: number;
  firstStatus: number;
  /** When the outcome (or the refusal) was known; 0 while unknown. */
  doneAt: number;
  /** 'won', a rejection reason code (SOLD_OUT, ...), 'failed', or 'refused'. */
  outcome: 'won' | 'failed' | 'refused' | string | null;
  /** The HTTP status that refused the user (0: no answer at all). */
  refusedWith?: number;
  couponId?: string;
  jobId?: string;
  /** A refusal's or failure's answer, cut short, for the report. */
  detail?: string;
}

export interface LoadOptions {
  /** One URL, or several web processes: user i goes to baseUrl[i % n], as a balancer would spread them. */
  baseUrl: string | string[];
  connections: number;
  mode: AskMode;
  /** One `authorization` header value per user. */
  auth: string[];
  /** The POST body every user sends. */
  body: string;
  path?: string;
  /** Per-request timeout. */
  timeoutMs?: number;
}

export interface LoadResult {
  shoppers: Shopper[];
  /** performance.now() when the first request went out. */
  startedAt: number;
  /** Requests sent in all (POSTs and polls). */
  requests: number;
}

const POLL_WAIT_MS = 10_000;

interface JobView {
  status?: string;
  jobId?: string;
  statusUrl?: string;
  result?: { id?: string };
  reason?: { code?: string };
}

/** Drives one sale: every user once, `connections` of them at a time; resolves when every user knows. */
export async function runShoppers(opts: LoadOptions): Promise<LoadResult> {
  const urls = (Array.isArray(opts.baseUrl) ? opts.baseUrl : [opts.baseUrl]).map((u) => new URL(u));
  const path = opts.path ?? '/api/v1/coupons/issue';
  const timeoutMs = opts.timeoutMs ?? 15_000;
  // Every user's POST, as bytes, before the clock starts; user i asks urls[i % n], as a balancer would.
  const posts = opts.auth.map((authorization, user) =>
    requestBytes(
      'POST',
      urls[user % urls.length] as URL,
      path,
      {
        authorization,
        'content-type': 'application/json',
        ...(opts.mode === 'wait' && { prefer: 'wait=10' }),
      },
      opts.body,
    ),
  );
  const shoppers: Shopper[] = opts.auth.map(() => ({ sentAt: 0, firstAt: 0, firstStatus: 0, doneAt: 0, outcome: null }));
  let requests = 0;

  const shop = async (conn: KeepAliveConnection, user: number) => {
    const s = shoppers[user] as Shopper;
    s.sentAt = performance.now();
    try {
      requests += 1;
      let reply = await conn.send(posts[user] as Buffer);
      s.firstAt = performance.now();
      s.firstStatus = reply.status;
      for (;;) {
        if (reply.status !== 200 && reply.status !== 202) return refuse(s, reply.status, reply.text);
        const view = JSON.parse(reply.text) as JobView;
        if (view.jobId) s.jobId = view.jobId;
        if (view.status !== 'pending') return settle(s, view);
        const statusUrl = view.statusUrl ?? `/api/v1/jobs/${view.jobId}`;
        const poll = requestBytes('GET', urls[user % urls.length] as URL, `${statusUrl}?waitMs=${POLL_WAIT_MS}`, {
          authorization: opts.auth[user] as string,
        });
        requests += 1;
        reply = await conn.send(poll);
      }
    } catch (error) {
      if (!s.firstAt) s.firstAt = performance.now();
      refuse(s, 0, error instanceof Error ? error.message : String(error));
    }
  };

  // Each web process gets its share of the connections and asks for its own users, in order.
  const lanesPerUrl = Math.ceil(Math.min(opts.connections, shoppers.length) / urls.length);
  const nextUser = urls.map((_, u) => u);
  const lane = async (u: number) => {
    const conn = new KeepAliveConnection(urls[u] as URL, timeoutMs);
    try {
      while ((nextUser[u] as number) < shoppers.length) {
        const user = nextUser[u] as number;
        nextUser[u] = user + urls.length;
        await shop(conn, user);
      }
    } finally {
      conn.close();
    }
  };
  const startedAt = performance.now();
  await Promise.all(urls.flatMap((_, u) => Array.from({ length: lanesPerUrl }, () => lane(u))));
  return { shoppers, startedAt, requests };
}

function settle(s: Shopper, view: JobView): void {
  s.doneAt = performance.now();
  if (view.status === 'succeeded') {
    s.outcome = 'won';
    s.couponId = view.result?.id;
  } else if (view.status === 'rejected') {
    s.outcome = view.reason?.code ?? 'UNKNOWN';
  } else {
    s.outcome = 'failed';
    s.detail = `${view.status}: ${view.reason?.code ?? ''}`;
  }
}

function refuse(s: Shopper, status: number, text: string): void {
  s.doneAt = performance.now();
  s.outcome = 'refused';
  s.refusedWith = status;
  s.detail = `${status} ${text.slice(0, 200)}`;
}
