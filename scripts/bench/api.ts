// The benches' calls to the service: JSON over keep-alive connections, with a bearer token, and the
// unlimited policy a bench seeds its coupons into.
import { request, type Agent } from 'undici';
import { requestBytes, type KeepAlivePool } from './keep-alive';

/** A JSON call to the stack with a user's token: its status and parsed body (the text when it is not JSON). */
export type Call = (
  method: 'GET' | 'POST',
  url: string,
  token: string,
  body?: unknown,
  headers?: Record<string, string>,
) => Promise<{ status: number; body: any }>;

/** Calls to the stack at baseUrl over the agent's keep-alive connections. */
export function apiClient(baseUrl: string, agent: Agent): Call {
  return async (method, url, token, body, headers = {}) => {
    const res = await request(`${baseUrl}${url}`, {
      method,
      dispatcher: agent,
      ...jsonRequest(token, body, headers),
      headersTimeout: 20_000,
      bodyTimeout: 20_000,
    });
    const text = await res.body.text();
    return { status: res.statusCode, body: parsed(text) };
  };
}

/**
 * The same calls over a pool of plain keep-alive connections to one server (keep-alive.ts): the
 * request's bytes built at once, no undici on the way. What a call costs the bench's process (which
 * shares the box with the service) is about half of what undici's costs; the checkout bench uses it.
 */
export function keepAliveClient(pool: KeepAlivePool): Call {
  return async (method, url, token, body, headers = {}) => {
    const json = jsonRequest(token, body, headers);
    const answer = await pool.send(requestBytes(method, pool.url, url, json.headers, json.body));
    return { status: answer.status, body: parsed(answer.text) };
  };
}

/** A call's headers (the bearer token, JSON's content type when there is a body, the caller's) and its body as JSON. */
function jsonRequest(token: string, body: unknown, headers: Record<string, string>) {
  return {
    headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  };
}

function parsed(text: string): unknown {
  if (!text) return undefined;
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** Creates an ACTIVE DOWNLOAD policy without a quantity, one coupon a user; returns its id. */
export async function createUnlimitedPolicy(call: Call, adminToken: string, name: string, discount: object): Promise<string> {
  const created = await call('POST', '/api/v1/coupons/policies', adminToken, {
    name,
    discount,
    issueMethod: 'DOWNLOAD',
    totalQuantity: null,
    perUserLimit: 1,
    issueWindow: { startsAt: new Date(Date.now() - 60_000).toISOString() },
    validity: { days: 7 },
  });
  if (created.status !== 201) throw new Error(`policy not created: ${created.status} ${JSON.stringify(created.body)}`);
  return created.body.id as string;
}
