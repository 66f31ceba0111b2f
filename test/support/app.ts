// The HTTP app in-process, over real Postgres and Redis, for API tests that need no worker.
import type { Hono } from 'hono';
import { createApp } from '../../src/web/app';
import type { AppEnv } from '../../src/web/context';
import { createOutcomeHub } from '../../src/web/outcome-hub';
import { logger } from '../../src/core/logger';
import { closeSequelize, sequelize } from '../../src/core/postgres';
import { createRedis, waitForReady } from '../../src/core/redis';
import { initModels } from '../../src/storage';
import { initUserCouponCache } from '../../src/storage/cache/user-coupon-cache';
import { createQueues, type Queues } from '../../src/queues/connection';
import { testSecret } from './tokens';

export interface TestApp {
  app: Hono<AppEnv>;
  queues: Queues;
  call(
    method: string,
    path: string,
    opts?: { token?: string; body?: unknown; rawBody?: string; headers?: Record<string, string> },
  ): Promise<{ status: number; body: any; headers: Headers }>;
  close(): Promise<void>;
}

/** `redisUrl` reroutes the queue connections (the producer), e.g. through a tcp-proxy. */
export async function startTestApp(opts: { redisUrl?: string } = {}): Promise<TestApp> {
  initModels(sequelize());
  const queues = createQueues(opts.redisUrl);
  const redis = createRedis('client');
  initUserCouponCache(redis);
  await waitForReady(queues.connection);
  const outcomes = createOutcomeHub(logger(), opts.redisUrl);
  await outcomes.ready;
  const app = createApp({ queues, redis, log: logger(), outcomes, jwtSecret: testSecret() });
  return {
    app,
    queues,
    async call(method, path, opts = {}) {
      const headers: Record<string, string> = { ...opts.headers };
      if (opts.token) headers.authorization = `Bearer ${opts.token}`;
      let body = opts.rawBody;
      if (opts.body !== undefined) {
        body = JSON.stringify(opts.body);
        headers['content-type'] ??= 'application/json';
      }
      const res = await app.request(path, { method, headers, body });
      const text = await res.text();
      let parsed: unknown = text;
      try {
        parsed = text ? JSON.parse(text) : undefined;
      } catch {
        /* keep text */
      }
      return { status: res.status, body: parsed, headers: res.headers };
    },
    async close() {
      await outcomes.close();
      await queues.close();
      redis.disconnect();
      await closeSequelize();
    },
  };
}
