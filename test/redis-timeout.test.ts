// A Redis that stops answering (the connection stays open, no reply comes) must not hang requests:
// every command the web waits on has a timeout (REDIS_COMMAND_TIMEOUT_MS), a request pays one such
// timeout however many Redis calls it makes (the first timeout marks Redis as not answering and
// the rest fail at once), and a request that could not be queued is answered 503 UNAVAILABLE with
// Retry-After, then served again once Redis answers.
import type { ChildProcess } from 'node:child_process';
import { freePort } from '../scripts/infra/process';
import { uniqueId } from './support/fixtures';
import { Api } from './support/http';
import { launch, stopProcess, waitForLine } from './support/stack';
import { proxiedRedis, type TcpProxy } from './support/tcp-proxy';
import { tokenFor } from './support/tokens';

/**
 * The web's command timeout here, and the bound on a 503: under one second, and less than two
 * timeouts, so a request that waited on two calls in a row (the rate limit, then the admission)
 * would fail it. A hang detector, not a timing benchmark.
 */
const COMMAND_TIMEOUT_MS = 600;
const ANSWERED_WITHIN_MS = 1_000;

describe('web with a Redis that stops answering', () => {
  let proxy: TcpProxy;
  let web: ChildProcess;
  let api: Api;

  beforeAll(async () => {
    let redisUrl: string;
    ({ proxy, redisUrl } = await proxiedRedis());
    const port = await freePort();
    web = launch('redis-timeout-web', 'src/web/main.ts', {
      PORT: String(port),
      QUEUE_PREFIX: uniqueId('q'),
      REDIS_URL: redisUrl,
      NODE_ENV: 'test',
      LOG_LEVEL: 'info',
      RATE_LIMIT_IP_POINTS: '0',
      REDIS_COMMAND_TIMEOUT_MS: String(COMMAND_TIMEOUT_MS),
    });
    await waitForLine(web, 'web listening');
    api = new Api(`http://127.0.0.1:${port}`, 8);
  });

  afterAll(async () => {
    await proxy?.resume();
    await api?.close();
    if (web) await stopProcess(web);
    await proxy?.close();
  });

  it('answers 503 UNAVAILABLE with Retry-After instead of hanging, and 202 again once Redis answers', async () => {
    const token = await tokenFor(uniqueId('u'));
    const first = await api.post('/api/v1/coupons/issue', token, { policyId: uniqueId('p') });
    expect(first.status).toBe(202);

    proxy.stall();
    const started = Date.now();
    const [issue, job, ready] = await Promise.all([
      api.post('/api/v1/coupons/issue', token, { policyId: uniqueId('p') }),
      api.get(`/api/v1/jobs/${first.body.jobId}`, token),
      api.get('/health/ready'),
    ]);
    const took = Date.now() - started;
    const again = Date.now();
    const second = await api.post('/api/v1/coupons/issue', token, { policyId: uniqueId('p') });
    const tookAgain = Date.now() - again;
    expect(issue.status).toBe(503);
    expect(issue.body).toEqual({ error: { code: 'UNAVAILABLE', message: expect.any(String) } });
    expect(issue.headers['retry-after']).toBe('1');
    expect(job.status).toBe(503);
    expect(job.body.error.code).toBe('UNAVAILABLE');
    expect(ready.status).toBe(503);
    expect(took).toBeLessThan(ANSWERED_WITHIN_MS);
    // While Redis stays silent, the next request is told at once: no command is waited on again.
    expect(second.status).toBe(503);
    expect(tookAgain).toBeLessThan(COMMAND_TIMEOUT_MS);

    await proxy.resume();
    for (let i = 0; ; i += 1) {
      const again = await api.post('/api/v1/coupons/issue', token, { policyId: uniqueId('p') });
      if (again.status === 202 || i >= 100) {
        expect(again.status).toBe(202);
        break;
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  });
});
