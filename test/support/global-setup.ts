// Jest global setup: makes sure Postgres, Redis and Kafka answer (local servers, or containers
// when a Docker engine answers and no URL was given), hands their addresses to the test workers
// through the environment, empties the test Redis database and migrates the test database.
import Redis from 'ioredis';
import { runMigrations } from '../../src/storage/migrator';
import { ensureTopics } from '../../scripts/infra/kafka';
import { consoleLogger as log } from '../../scripts/infra/process';
import { ensureServices, type RunningServices } from '../../scripts/infra/services';

// A fixed secret keeps tokens reproducible between runs; it only ever signs test tokens.
const TEST_JWT_SECRET = 'coupon-service-test-secret-0123456789abc';
const TEST_CODE_SECRET = 'coupon-service-test-code-key-0123456789ab';

/** Where global-teardown finds what this setup started (both run in jest's main process). */
export const SERVICES_KEY = '__couponServices';

// Jest loads global setup through its default export.
export default async function globalSetup(): Promise<void> {
  const started = Date.now();
  const env = process.env;
  const explicit = Boolean(env.DATABASE_URL || env.REDIS_URL || env.KAFKA_BROKERS);
  const services = await ensureServices({
    databaseUrl: env.DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/coupons_test',
    redisUrl: env.REDIS_URL || 'redis://127.0.0.1:6379/1',
    kafkaBrokers: (env.KAFKA_BROKERS || '127.0.0.1:9092').split(',').map((b) => b.trim()),
    log,
    useContainers: !explicit,
  });
  (globalThis as Record<string, unknown>)[SERVICES_KEY] = services;
  try {
    exportEnvironment(services);
    await prepareData(services);
  } catch (error) {
    // Jest skips global teardown when setup fails: stop what we started here.
    await services.stop();
    throw error;
  }
  log.info(`test setup: ready in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

function exportEnvironment(services: RunningServices): void {
  process.env.DATABASE_URL = services.databaseUrl;
  process.env.REDIS_URL = services.redisUrl;
  process.env.KAFKA_BROKERS = (services.kafkaBrokers ?? []).join(',');
  process.env.JWT_SECRET ||= TEST_JWT_SECRET;
  process.env.CODE_HMAC_SECRET ||= TEST_CODE_SECRET;
  process.env.NODE_ENV = 'test';
  process.env.LOG_LEVEL ||= 'silent';
}

async function prepareData(services: RunningServices): Promise<void> {
  await flushTestRedis(services.redisUrl);
  log.info('test setup: migrating the test database...');
  await runMigrations(services.databaseUrl);
  const topics = [process.env.KAFKA_PAYMENTS_TOPIC || 'payments.v1', process.env.KAFKA_USER_EVENTS_TOPIC || 'user-events.v1'];
  await ensureTopics(services.kafkaBrokers ?? [], topics, 6);
}

/** Empties the test database, never database 0, which is where a developer's own data lives. */
async function flushTestRedis(redisUrl: string): Promise<void> {
  const db = Number(new URL(redisUrl).pathname.slice(1) || 0);
  if (db === 0) {
    log.warn(`test setup: ${redisUrl} is Redis database 0; not flushing it (use /1 or another index for tests)`);
    return;
  }
  const redis = new Redis(redisUrl, { maxRetriesPerRequest: 1 });
  try {
    await redis.flushdb();
    log.info(`test setup: flushed Redis database ${db}`);
  } finally {
    redis.disconnect();
  }
}
