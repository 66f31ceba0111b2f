// OPS_PORT: the web serves its ops surface (metrics, readiness that queries Postgres, Bull Board) on a
// port of its own, off the public balancer; the public port keeps the API, /docs and /health/live.
// Also the security headers every answer carries, and the content policies of the two pages.
import { createHash } from 'node:crypto';
import type { ChildProcess } from 'node:child_process';
import { freePort } from '../scripts/infra/process';
import { uniqueId } from './support/fixtures';
import { launch, logLines, stopProcess, waitForLine } from './support/stack';
import { tokenFor } from './support/tokens';

const BOARD = { user: 'ops', password: 'ops-port-board-password' };

/** A request's status, its body read to the end: a body left unread holds its keep-alive socket open after the test. */
async function statusOf(url: string, init?: RequestInit): Promise<number> {
  const res = await fetch(url, init);
  await res.arrayBuffer();
  return res.status;
}
const basic = `Basic ${Buffer.from(`${BOARD.user}:${BOARD.password}`).toString('base64')}`;

describe('a web process with OPS_PORT', () => {
  let web: ChildProcess;
  let publicUrl: string;
  let opsUrl: string;

  beforeAll(async () => {
    const port = await freePort();
    web = launch('ops-port-web', 'src/web/main.ts', {
      PORT: String(port),
      OPS_PORT: '0',
      QUEUE_PREFIX: uniqueId('q'),
      NODE_ENV: 'test',
      LOG_LEVEL: 'info',
      BULL_BOARD_USER: BOARD.user,
      BULL_BOARD_PASSWORD: BOARD.password,
    });
    await Promise.all([waitForLine(web, 'web listening'), waitForLine(web, 'ops server listening')]);
    // The log file is written a moment after the line reaches the pipe.
    let opsPort: number | undefined;
    for (let i = 0; i < 100 && opsPort === undefined; i += 1) {
      opsPort = logLines('ops-port-web').find((l) => l.msg === 'ops server listening')?.port as number | undefined;
      if (opsPort === undefined) await new Promise((resolve) => setTimeout(resolve, 50));
    }
    publicUrl = `http://127.0.0.1:${port}`;
    opsUrl = `http://127.0.0.1:${opsPort}`;
  });

  afterAll(async () => {
    if (web) await stopProcess(web);
  });

  it('serves metrics, readiness and Bull Board on the ops port only', async () => {
    for (const path of ['/metrics', '/health/ready', '/admin/queues']) {
      const res = await fetch(`${publicUrl}${path}`, { headers: { authorization: basic } });
      expect([path, res.status]).toEqual([path, 404]);
      expect(await res.json()).toMatchObject({ error: { code: 'NOT_FOUND' } });
    }
    expect(await statusOf(`${publicUrl}/health/live`)).toBe(200);
    expect(await statusOf(`${publicUrl}/docs/openapi.json`)).toBe(200);
    const token = await tokenFor(uniqueId('u'));
    expect(await statusOf(`${publicUrl}/api/v1/coupons/users/x`, { headers: { authorization: `Bearer ${token}` } })).toBe(403);

    expect(await statusOf(`${opsUrl}/metrics`)).toBe(200);
    expect(await statusOf(`${opsUrl}/health/ready`)).toBe(200);
    expect(await statusOf(`${opsUrl}/health/live`)).toBe(200);
    expect(await statusOf(`${opsUrl}/admin/queues`)).toBe(401);
    expect(await statusOf(`${opsUrl}/admin/queues`, { headers: { authorization: basic } })).toBe(200);
    expect(await statusOf(`${opsUrl}/api/v1/coupons/policies`)).toBe(404);
  });

  it('sends security headers on every answer, and content policies that let /docs and the board work', async () => {
    const api = await fetch(`${publicUrl}/api/v1/coupons/policies`);
    await api.arrayBuffer();
    expect(api.status).toBe(401);
    expect(api.headers.get('x-content-type-options')).toBe('nosniff');
    expect(api.headers.get('x-frame-options')).toBe('DENY');
    expect(api.headers.get('content-security-policy')).toContain("default-src 'none'");
    const missing = await fetch(`${publicUrl}/nothing-here`);
    await missing.arrayBuffer();
    expect(missing.headers.get('x-content-type-options')).toBe('nosniff');

    // /docs: its one inline stylesheet is allowed by its hash, and nothing else is loaded.
    const docs = await fetch(`${publicUrl}/docs`);
    const html = await docs.text();
    const style = /<style>([\s\S]*?)<\/style>/.exec(html)?.[1] as string;
    const hash = createHash('sha256').update(style, 'utf8').digest('base64');
    const csp = docs.headers.get('content-security-policy') as string;
    expect(csp).toContain(`style-src 'sha256-${hash}'`);
    expect(csp).toContain("default-src 'none'");
    expect(html).not.toMatch(/<script|<link|<img|src=/i);

    // The board: every script and stylesheet of its page comes from its own static path, which the policy allows.
    const board = await fetch(`${opsUrl}/admin/queues`, { headers: { authorization: basic } });
    const page = await board.text();
    const boardCsp = board.headers.get('content-security-policy') as string;
    expect(boardCsp).toContain("script-src 'self'");
    const scripts = [...page.matchAll(/<script[^>]*\ssrc="([^"]+)"/g)].map((m) => m[1] as string);
    expect(scripts.length).toBeGreaterThan(0);
    for (const src of scripts) {
      expect(src).toMatch(/^static\//);
      expect([src, await statusOf(`${opsUrl}/admin/queues/${src}`, { headers: { authorization: basic } })]).toEqual([src, 200]);
    }
    // Inline scripts would be blocked: the page has none that run (its config is JSON data).
    const inline = [...page.matchAll(/<script(?![^>]*\ssrc=)([^>]*)>/g)].map((m) => m[1] as string);
    for (const attrs of inline) expect(attrs).toContain('type="application/json"');
  });
});
