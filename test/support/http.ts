// A small HTTP client for tests: JSON in and out, a bounded number of connections, and helpers
// for the 202-then-poll flow of the API.
import { Agent, request } from 'undici';

export interface Reply<T = any> {
  status: number;
  body: T;
  headers: Record<string, string | string[] | undefined>;
}

export class Api {
  private readonly agent: Agent;

  constructor(
    readonly baseUrl: string,
    connections = 128,
  ) {
    this.agent = new Agent({ connections, pipelining: 1, keepAliveTimeout: 10_000 });
  }

  async call<T = any>(
    method: string,
    path: string,
    opts: { token?: string; body?: unknown; headers?: Record<string, string>; rawBody?: string } = {},
  ): Promise<Reply<T>> {
    const headers: Record<string, string> = { ...opts.headers };
    if (opts.token) headers.authorization = `Bearer ${opts.token}`;
    let body: string | undefined = opts.rawBody;
    if (opts.body !== undefined) {
      body = JSON.stringify(opts.body);
      headers['content-type'] ??= 'application/json';
    }
    const res = await request(`${this.baseUrl}${path}`, { method: method as 'GET', headers, body, dispatcher: this.agent });
    const text = await res.body.text();
    let parsed: unknown = text;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      /* keep the text */
    }
    return { status: res.statusCode, body: parsed as T, headers: res.headers };
  }

  get = <T = any>(path: string, token?: string) => this.call<T>('GET', path, { token });
  post = <T = any>(path: string, token: string | undefined, body?: unknown) => this.call<T>('POST', path, { token, body });
  patch = <T = any>(path: string, token: string | undefined, body?: unknown) => this.call<T>('PATCH', path, { token, body });

  /** Long-polls a job until it leaves `pending` (or `deadlineMs` passes). */
  async settle(jobId: string, token: string, deadlineMs = 60_000): Promise<any> {
    const until = Date.now() + deadlineMs;
    for (;;) {
      const reply = await this.get(`/api/v1/jobs/${jobId}?waitMs=5000`, token);
      if (reply.status !== 200) throw new Error(`job ${jobId}: HTTP ${reply.status} ${JSON.stringify(reply.body)}`);
      if (reply.body.status !== 'pending' || Date.now() > until) return reply.body;
    }
  }

  async close(): Promise<void> {
    await this.agent.close();
  }
}

export { mapLimit } from '../../src/core/concurrency';
