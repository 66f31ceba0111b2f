// OPS_PORT: the web serves its ops surface (metrics, readiness that queries Postgres, Bull Board) on a
// port of its own, off the public balancer; the public port keeps the API, /docs and /health/live.
// Also the security headers every answer carries, and the content policies of the two pages.
import { createHash } from 'node:crypto';
import type { ChildProcess } from 'node:child_process';
import { freePort } from '../scripts/infra/process';
import { uniqueId } from './support/fixtures';
import { Api } from './support/http';
import { launch, logLines, stopProcess, waitForLine } from './support/stack';
import { tokenFor } from './support/tokens';

const BOARD = { user: 'ops', password: 'ops-port-board-password' };
const basic = `Basic ${Buffer.from(`${BOARD.user}:${BOARD.password}`).toString('base64')}`;

describe('a web process with OPS_PORT', () => {
  let web: ChildProcess;
  // The project's test client: it reads every answer's body and closes its connections in afterAll,
  // so no keep-alive socket outlives the test.
  let pub: Api;
  let ops: Api;
  const board = { authorization: basic };

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
    pub = new Api(`http://127.0.0.1:${port}`, 4);
    ops = new Api(`http://127.0.0.1:${opsPort}`, 4);
  });

  afterAll(async () => {
    await Promise.all([pub?.close(), ops?.close()]);
    if (web) await stopProcess(web);
  });

  it('serves metrics, readiness and Bull Board on the ops port only', async () => {
    for (const path of ['/metrics', '/health/ready', '/admin/queues']) {
      const res = await pub.call('GET', path, { headers: board });
      expect([path, res.status]).toEqual([path, 404]);
      expect(res.body).toMatchObject({ error: { code: 'NOT_FOUND' } });
    }
    expect((await pub.get('/health/live')).status).toBe(200);
    expect((await pub.get('/docs/openapi.json')).status).toBe(200);
    const token = await tokenFor(uniqueId('u'));
    expect((await pub.get('/api/v1/coupons/users/x', token)).status).toBe(403);

    expect((await ops.get('/metrics')).status).toBe(200);
    expect((await ops.get('/health/ready')).status).toBe(200);
    expect((await ops.get('/health/live')).status).toBe(200);
    expect((await ops.get('/admin/queues')).status).toBe(401);
    expect((await ops.call('GET', '/admin/queues', { headers: board })).status).toBe(200);
    expect((await ops.get('/api/v1/coupons/policies')).status).toBe(404);
  });

  it('sends security headers on every answer, and content policies that let /docs and the board work', async () => {
    const api = await pub.get('/api/v1/coupons/policies');
    expect(api.status).toBe(401);
    expect(api.headers['x-content-type-options']).toBe('nosniff');
    expect(api.headers['x-frame-options']).toBe('DENY');
    expect(api.headers['content-security-policy']).toContain("default-src 'none'");
    expect((await pub.get('/nothing-here')).headers['x-content-type-options']).toBe('nosniff');

    // /docs: its one inline stylesheet is allowed by its hash, and nothing else is loaded.
    const docs = await pub.get<string>('/docs');
    const html = docs.body;
    const style = /<style>([\s\S]*?)<\/style>/.exec(html)?.[1] as string;
    const hash = createHash('sha256').update(style, 'utf8').digest('base64');
    const csp = docs.headers['content-security-policy'] as string;
    expect(csp).toContain(`style-src 'sha256-${hash}'`);
    expect(csp).toContain("default-src 'none'");
    expect(html).not.toMatch(/<script|<link|<img|src=/i);

    // The board: every script and stylesheet of its page comes from its own static path, which the policy allows.
    const boardPage = await ops.call<string>('GET', '/admin/queues', { headers: board });
    const page = boardPage.body;
    const boardCsp = boardPage.headers['content-security-policy'] as string;
    expect(boardCsp).toContain("script-src 'self'");
    const scripts = [...page.matchAll(/<script[^>]*\ssrc="([^"]+)"/g)].map((m) => m[1] as string);
    expect(scripts.length).toBeGreaterThan(0);
    for (const src of scripts) {
      expect(src).toMatch(/^static\//);
      expect([src, (await ops.call('GET', `/admin/queues/${src}`, { headers: board })).status]).toEqual([src, 200]);
    }
    // Inline scripts would be blocked: the page has none that run (its config is JSON data).
    const inline = [...page.matchAll(/<script(?![^>]*\ssrc=)([^>]*)>/g)].map((m) => m[1] as string);
    for (const attrs of inline) expect(attrs).toContain('type="application/json"');
  });
});
