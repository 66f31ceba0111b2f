// Running the service: health checks, 503 when the queue's Redis is away (I9), the Kafka bridge
// process, and the trace id that follows a request from HTTP into the worker's log.
import { randomUUID } from 'node:crypto';
import type { ChildProcess } from 'node:child_process';
import { QUEUES } from '../src/queues/names';
import { startTestApp, type TestApp } from './support/app';
import { closeDb, couponsOf } from './support/db';
import { policyBody, uniqueId } from './support/fixtures';
import { Api } from './support/http';
import { launch, logLinesWhen, startStack, stopProcess, waitForLine, type Stack } from './support/stack';
import { proxiedRedis, type TcpProxy } from './support/tcp-proxy';
import { adminToken, tokenFor } from './support/tokens';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function exitOf(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  return new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
}

describe('a running stack', () => {
  const name = 'operations';
  let stack: Stack;
  let api: Api;
  let admin: string;

  beforeAll(async () => {
    stack = await startStack({ workers: 1, name });
    api = new Api(stack.baseUrl, 16);
    admin = await adminToken();
  });

  afterAll(async () => {
    await api?.close();
    await stack?.stop();
    await closeDb();
  });

  /** Issues one coupon of a fresh policy, optionally with an X-Request-Id, and waits for its job. */
  async function issueOnce(headers: Record<string, string> = {}) {
    const policy = await api.post('/api/v1/coupons/policies', admin, policyBody({ totalQuantity: 5 }));
    expect(policy.status).toBe(201);
    const user = uniqueId('trace');
    const token = await tokenFor(user);
    const reply = await api.call('POST', '/api/v1/coupons/issue', { token, body: { policyId: policy.body.id }, headers });
    expect(reply.status).toBe(202);
    const job = await api.settle(reply.body.jobId, token, 30_000);
    expect(job.status).toBe('succeeded');
    expect((await couponsOf(policy.body.id)).map((c) => c.user_id)).toEqual([user]);
    return { jobId: reply.body.jobId as string, echoed: reply.headers['x-request-id'] };
  }

  it('answers /health/live and /health/ready with 200, every readiness check ok', async () => {
    const live = await api.get('/health/live');
    expect(live.status).toBe(200);
    expect(live.body).toEqual({ status: 'ok' });
    const ready = await api.get('/health/ready');
    expect(ready.status).toBe(200);
    expect(ready.body).toEqual({ status: 'ready', checks: { postgres: 'ok', redis: 'ok', queues: 'ok' } });
  });

  it("echoes the caller's X-Request-Id and logs it with the job id, in the web and in the worker", async () => {
    const traceId = `req-${randomUUID()}`;
    const { jobId, echoed } = await issueOnce({ 'X-Request-Id': traceId });
    expect(echoed).toBe(traceId);

    const workerLines = await logLinesWhen(`${name}-worker-1`, (l) => l.jobId === jobId && l.msg === 'coupon issued');
    expect(workerLines).toHaveLength(1);
    expect(workerLines[0]).toMatchObject({ traceId, jobId, process: 'worker' });
    // The web logs one line per request: the issue request's names the job it queued.
    const webLines = await logLinesWhen(`${name}-web`, (l) => l.jobId === jobId);
    expect(webLines.map((l) => [l.msg, l.traceId, l.enqueued, l.method, l.path, l.status])).toEqual([
      ['request', traceId, 'issue', 'POST', '/api/v1/coupons/issue', 202],
    ]);
  });

  it('gives a request without a usable X-Request-Id a generated trace id that reaches the worker log', async () => {
    for (const headers of [{}, { 'X-Request-Id': 'bad id with spaces' }] as Record<string, string>[]) {
      const { jobId, echoed } = await issueOnce(headers);
      expect(echoed).toMatch(UUID);
      const workerLines = await logLinesWhen(`${name}-worker-1`, (l) => l.jobId === jobId && l.msg === 'coupon issued');
      expect(workerLines.map((l) => l.traceId)).toEqual([echoed]);
    }
  });
});

describe('an ingress whose Redis is unreachable', () => {
  let proxy: TcpProxy;
  let t: TestApp;

  beforeAll(async () => {
    let redisUrl: string;
    ({ proxy, redisUrl } = await proxiedRedis());
    // Only the queue connections go through the proxy: they are what an issue request needs for its 202.
    t = await startTestApp({ redisUrl });
  });

  afterAll(async () => {
    await t?.close();
    await proxy?.close();
  });

  // `refuse`: Redis is down and its port closed. `drop`: something in front of Redis (a TCP load
  // balancer) still accepts connections but drops each at once.
  it.each(['refuse', 'drop'] as const)(
    'answers 503 UNAVAILABLE, never 202, queues none of the refused requests, and 202 again once Redis is back (%s)',
    async (mode) => {
      const user = uniqueId(`i9-${mode}`);
      const token = await tokenFor(user);
      const policyId = uniqueId('policy');
      const issue = () => t.call('POST', '/api/v1/coupons/issue', { token, body: { policyId } });
      const timedIssue = async () => {
        const started = Date.now();
        return { ...(await issue()), ms: Date.now() - started };
      };
      const first = await issue();
      expect(first.status).toBe(202);
      expect((await t.call('GET', '/health/ready')).status).toBe(200);

      // One request is on the wire (the proxy holds its bytes) when Redis goes away, the rest come after.
      proxy.latencyMs = 300;
      const onTheWire = new Promise<void>((seen) => {
        proxy.cutOn = (chunk) => {
          if (chunk.includes(user)) seen();
          return false; // relayed (after the latency) as usual: this only watches
        };
      });
      const cutOff = timedIssue();
      await onTheWire;
      proxy.cutOn = null;
      await proxy.pause(mode);
      const refused = await Promise.all([cutOff, ...Array.from({ length: 20 }, timedIssue)]);
      expect(refused.map((r) => r.status)).toEqual(Array(21).fill(503));
      expect(refused.filter((r) => r.ms > 2_500)).toEqual([]); // answered, not left hanging
      for (const reply of refused) expect(reply.body).toEqual({ error: { code: 'UNAVAILABLE', message: expect.any(String) } });
      const ready = await t.call('GET', '/health/ready');
      expect(ready.status).toBe(503);
      expect(ready.body).toEqual({ status: 'unavailable', checks: { postgres: 'ok', redis: 'down', queues: 'down' } });

      proxy.latencyMs = 0;
      await proxy.resume();
      // The producer reconnects by itself within its retry backoff (at most 2 s); until then: 503.
      const until = Date.now() + 15_000;
      const meanwhile: number[] = [];
      let again = await issue();
      while (again.status !== 202 && Date.now() < until) {
        meanwhile.push(again.status);
        await sleep(200);
        again = await issue();
      }
      expect(again.status).toBe(202);
      expect(meanwhile.filter((s) => s !== 503)).toEqual([]);
      expect((await t.call('GET', '/health/ready')).status).toBe(200);

      // A 503 means "not queued": no refused request turns into a job once Redis is back. A command
      // resent after the reconnect would have gone to Redis ahead of the add of the 202 just answered.
      const jobs = await t.queues.get(QUEUES.issue).getJobs(['waiting', 'delayed', 'active', 'completed', 'failed']);
      const requests = jobs.flatMap((job) => (job.data as { requests?: { userId: string; requestId: string }[] }).requests ?? []);
      const mine = requests.filter((r) => r.userId === user).map((r) => r.requestId);
      expect(mine.sort()).toEqual([first.body.jobId, again.body.jobId].sort());
    },
  );
});

describe('the Kafka bridge process', () => {
  it('consumes the payments and user-events topics, says so, and exits 0 on SIGTERM', async () => {
    const name = 'operations-bridge';
    const bridge = launch(name, 'src/bridge/main.ts', { LOG_LEVEL: 'info', NODE_ENV: 'test', KAFKA_SESSION_TIMEOUT_MS: '6000' });
    try {
      await waitForLine(bridge, 'bridge joined the consumer group', 90_000);
      const exited = exitOf(bridge);
      bridge.kill('SIGTERM');
      expect(await exited).toEqual({ code: 0, signal: null });
    } finally {
      await stopProcess(bridge, 'SIGKILL');
    }
    const [consuming] = await logLinesWhen(name, (l) => l.msg === 'bridge consuming');
    expect(consuming).toMatchObject({
      process: 'bridge',
      level: 'info',
      groupId: 'coupon-bridge',
      topics: [process.env.KAFKA_PAYMENTS_TOPIC || 'payments.v1', process.env.KAFKA_USER_EVENTS_TOPIC || 'user-events.v1'],
    });
    expect((consuming?.brokers as string[]).length).toBeGreaterThan(0);
    expect(await logLinesWhen(name, (l) => l.msg === 'bridge stopped')).toHaveLength(1);
  });
});
