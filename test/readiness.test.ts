// The web process's readiness follows Redis: 503 while it is unreachable, 200 again once it is back,
// in the same process (no restart), and 503 while draining; the bridge's too, from its SIGTERM on.
import type { ChildProcess } from 'node:child_process';
import IORedis from 'ioredis';
import { Agent, request } from 'undici';
import { sequelize, closeSequelize } from '../src/core/postgres';
import { waitForReady } from '../src/core/redis';
import { redisKeysUnder } from '../src/core/redis-keys';
import { createQueues } from '../src/queues/connection';
import { parseRequestId } from '../src/queues/names';
import { healthRoutes } from '../src/web/routes/health';
import { EventProducer, eventually, paymentEvent } from './support/checkout';
import { Api } from './support/http';
import { createPolicy, uniqueId } from './support/fixtures';
import { freePort } from '../scripts/infra/process';
import { launch, logLinesWhen, startStack, stopProcess, waitForLine } from './support/stack';
import { proxiedRedis, type TcpProxy } from './support/tcp-proxy';
import { tokenFor } from './support/tokens';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface ReadyAnswer {
  status: number;
  body: unknown;
  /** Milliseconds since `since`, when the answer arrived. */
  at: number;
}

/** One /health/ready answer, or null when the server no longer takes the connection. */
async function readyAnswer(base: string, since: number): Promise<ReadyAnswer | null> {
  return fetch(`${base}/health/ready`).then(
    async (r) => ({ status: r.status, body: await r.json(), at: Date.now() - since }),
    () => null,
  );
}

/** How `child` exits; watch it before sending the signal. */
function exitOf(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  return new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
}

/** Polls /health/ready until it answers `status`; returns that answer and how long it took. */
async function readyUntil(api: Api, status: number, timeoutMs: number) {
  const started = Date.now();
  for (;;) {
    const reply = await api.get('/health/ready');
    if (reply.status === status || Date.now() - started > timeoutMs) return { ...reply, ms: Date.now() - started };
    await sleep(100);
  }
}

describe('web readiness while Redis goes away and comes back', () => {
  let proxy: TcpProxy;
  let web: ChildProcess;
  let api: Api;

  beforeAll(async () => {
    let redisUrl: string;
    ({ proxy, redisUrl } = await proxiedRedis());
    const port = await freePort();
    const prefix = uniqueId('q');
    // Every Redis connection of the process goes through the proxy.
    web = launch('readiness-web', 'src/web/main.ts', {
      PORT: String(port),
      QUEUE_PREFIX: prefix,
      REDIS_URL: redisUrl,
      NODE_ENV: 'test',
      LOG_LEVEL: 'info',
    });
    await waitForLine(web, 'web listening');
    api = new Api(`http://127.0.0.1:${port}`, 4);
  });

  afterAll(async () => {
    await api?.close();
    if (web) await stopProcess(web);
    await proxy?.close();
  });

  it('answers 503 with redis down, and 200 again when Redis is back, same process', async () => {
    const pid = web.pid;
    const before = await api.get('/health/ready');
    expect(before.status).toBe(200);
    expect(before.body).toEqual({ status: 'ready', checks: { postgres: 'ok', redis: 'ok', queues: 'ok' } });
    expect((await api.get('/health/live')).status).toBe(200);

    await proxy.pause('refuse');
    const down = await readyUntil(api, 503, 30_000);
    expect(down.status).toBe(503);
    expect(down.body).toEqual({ status: 'unavailable', checks: { postgres: 'ok', redis: 'down', queues: 'down' } });
    // Liveness is not readiness: the process is fine, a restart would not help.
    expect((await api.get('/health/live')).status).toBe(200);
    // Stays down while Redis is away (no stale "ok" from a cached answer): each answer checks again.
    const next = [];
    for (let i = 0; i < 5; i += 1) next.push((await api.get('/health/ready')).status);
    expect(next).toEqual(Array(5).fill(503));

    await proxy.resume();
    // The producer connection retries every 2 s at most.
    const up = await readyUntil(api, 200, 30_000);
    expect(up.status).toBe(200);
    expect(up.body).toEqual({ status: 'ready', checks: { postgres: 'ok', redis: 'ok', queues: 'ok' } });
    expect(web.pid).toBe(pid);
    expect(web.exitCode).toBeNull();
    expect(web.signalCode).toBeNull();
  });
});

describe('readiness while draining', () => {
  afterAll(() => closeSequelize());

  it('answers 503 draining though every dependency answers', async () => {
    const queues = createQueues();
    try {
      let draining = false;
      const routes = healthRoutes(queues, () => draining);
      await Promise.all([waitForReady(queues.connection), sequelize().query('SELECT 1')]);
      expect((await routes.request('/ready')).status).toBe(200);
      draining = true;
      const res = await routes.request('/ready');
      expect(res.status).toBe(503);
      expect(await res.json()).toEqual({ status: 'draining', checks: { postgres: 'ok', redis: 'ok', queues: 'ok' } });
    } finally {
      await queues.close();
    }
  });

  it('answers 503 draining from the moment the web gets SIGTERM until it stops taking connections, and still answers a long-poll in flight', async () => {
    // No worker: the job stays pending, so its long-poll is in flight for the whole 5 s it asks for,
    // longer than the grace.
    const GRACE_MS = 2_500;
    const stack = await startStack({ workers: 0, name: 'readiness-web-drain', env: { WEB_DRAIN_GRACE_MS: String(GRACE_MS) } });
    const api = new Api(stack.baseUrl, 4);
    const redis = new IORedis(process.env.REDIS_URL as string);
    const monitor = await redis.monitor();
    try {
      const policyId = await createPolicy(api);
      const token = await tokenFor(uniqueId('drain'));
      const issued = await api.post('/api/v1/coupons/issue', token, { policyId });
      expect(issued.status).toBe(202);
      expect(await readyAnswer(stack.baseUrl, Date.now())).toMatchObject({ status: 200, body: { status: 'ready' } });
      // The long-poll has reached the web once the web reads the request's outcome from Redis.
      const outcomeKey = redisKeysUnder(stack.queuePrefix).outcomes(parseRequestId(issued.body.jobId).jobId);
      const readByWeb = new Promise<void>((seen) =>
        monitor.on('monitor', (_time: string, args: string[]) => args[0]?.toLowerCase() === 'hget' && args[1] === outcomeKey && seen()),
      );
      const longPoll = api.get(`/api/v1/jobs/${issued.body.jobId}?waitMs=5000`, token);
      await readByWeb;

      const exited = exitOf(stack.web);
      const draining = waitForLine(stack.web, '"web draining"');
      stack.web.kill('SIGTERM');
      await draining;
      const answers: ReadyAnswer[] = [];
      let refusedAt = 0;
      // Bounded: a web that never stops taking connections fails the test instead of hanging it.
      for (const since = Date.now(); Date.now() - since < GRACE_MS + 10_000;) {
        const answer = await readyAnswer(stack.baseUrl, since);
        if (!answer) {
          refusedAt = Date.now(); // the grace is over: the web no longer takes connections
          break;
        }
        answers.push(answer);
        await sleep(50);
      }
      expect(answers.length).toBeGreaterThanOrEqual(1);
      for (const answer of answers)
        expect(answer).toEqual({
          status: 503,
          body: { status: 'draining', checks: { postgres: 'ok', redis: 'ok', queues: 'ok' } },
          at: expect.any(Number),
        });
      // Unready for the whole grace, not just for a moment: the web took connections (and answered
      // each 503) until at least the grace after it logged the drain, which it logs before the timer.
      const [drainLine] = await logLinesWhen('readiness-web-drain-web', (l) => l.msg === 'web draining');
      expect(refusedAt).toBeGreaterThan(0);
      expect(refusedAt - Date.parse(String(drainLine?.time))).toBeGreaterThanOrEqual(GRACE_MS);

      // The request in flight when the signal came is answered as usual, and only then does the web exit.
      const polled = await longPoll;
      expect({ status: polled.status, job: polled.body.status }).toEqual({ status: 200, job: 'pending' });
      expect(await exited).toEqual({ code: 0, signal: null });
    } finally {
      monitor.disconnect();
      redis.disconnect();
      await api.close();
      await stack.stop();
    }
  });

  it('closes every kept-alive connection while draining: a client that never pauses does not keep the web alive', async () => {
    const GRACE_MS = 1_000;
    const stack = await startStack({ workers: 0, name: 'readiness-keepalive-drain', env: { WEB_DRAIN_GRACE_MS: String(GRACE_MS) } });
    // One connection, kept alive, one request after the other: it is never idle for more than a moment.
    const agent = new Agent({ connections: 1, pipelining: 1, keepAliveTimeout: 60_000 });
    try {
      const exited = exitOf(stack.web);
      const answers: { status: number; connection: string }[] = [];
      let stop = false;
      const client = (async () => {
        while (!stop) {
          try {
            const r = await request(`${stack.baseUrl}/health/live`, { dispatcher: agent });
            await r.body.text();
            answers.push({ status: r.statusCode, connection: String(r.headers.connection ?? '') });
          } catch {
            return; // refused: the web stopped taking connections
          }
        }
      })();
      await eventually(
        async () => answers.length,
        (n) => n >= 20,
        10_000,
        'the client going',
      );
      stack.web.kill('SIGTERM');
      const outcome = await Promise.race([exited, sleep(GRACE_MS + 8_000).then(() => 'still running after the grace')]);
      stop = true;
      await client;
      expect(outcome).toEqual({ code: 0, signal: null });
      // Kept alive before the drain; each answer after it closed its connection.
      expect(answers[0]).toEqual({ status: 200, connection: 'keep-alive' });
      expect(answers.filter((a) => a.connection === 'close').length).toBeGreaterThan(0);
    } finally {
      await agent.close();
      await stack.stop();
    }
  });

  it("answers the bridge's /health/ready 503 draining from its SIGTERM on while it still holds an uncommitted batch", async () => {
    const stack = await startStack({ workers: 0, name: 'readiness-bridge-drain' });
    const events = new EventProducer();
    // The bridge stops before committing its first batch's offset and stays there: its drain waits for that commit.
    const bridge = await stack.startBridge({ FAILPOINTS: 'bridge.before-commit=hang' });
    try {
      const url = stack.opsUrl(bridge);
      const held = waitForLine(bridge, 'failpoint bridge.before-commit', 30_000);
      await events.publish(stack.paymentsTopic, paymentEvent('PAYMENT_COMPLETED', uniqueId('order')));
      await held;
      expect(await readyAnswer(url, Date.now())).toMatchObject({
        status: 200,
        body: { status: 'ready', checks: { postgres: 'ok', redis: 'ok', kafka: 'ok' } },
      });

      const draining = waitForLine(bridge, 'bridge stopping');
      bridge.kill('SIGTERM');
      await draining;
      // Three answers after the signal, however long each takes: the bridge still holds its batch.
      const since = Date.now();
      const answers: (ReadyAnswer | null)[] = [];
      while (answers.length < 3) {
        answers.push(await readyAnswer(url, since));
        await sleep(50);
      }
      // Postgres, Redis and Kafka answer: the 503 is the drain's alone.
      for (const answer of answers)
        expect(answer).toEqual({
          status: 503,
          body: { status: 'draining', checks: { postgres: 'ok', redis: 'ok', kafka: 'ok' } },
          at: expect.any(Number),
        });
      expect({ exitCode: bridge.exitCode, signal: bridge.signalCode }).toEqual({ exitCode: null, signal: null });
    } finally {
      // Its batch never finishes, so neither does its drain.
      await stopProcess(bridge, 'SIGKILL');
      await events.close();
      await stack.stop();
    }
  });
});
