// Brings up the backing services the app and the tests need (Postgres, Redis, optionally
// Kafka): throwaway containers when a Docker engine answers, otherwise local servers; and
// stops only what it started.
import type { StartedTestContainer } from 'testcontainers';
import { ensureKafka } from './kafka';
import { ensurePostgres } from './postgres';
import { freePort, type Logger, type Service } from './process';
import { ensureRedis } from './redis';

export interface ServicesOptions {
  databaseUrl: string;
  redisUrl: string;
  /** Leave out when the caller does not need Kafka. */
  kafkaBrokers?: string[];
  log: Logger;
  /**
   * May start containers when a Docker engine answers. Callers pass true only when no URL was
   * given explicitly: an explicit URL means "use that server".
   */
  useContainers?: boolean;
}

export interface RunningServices {
  /** The addresses actually in use (containers get their own ports). */
  databaseUrl: string;
  redisUrl: string;
  kafkaBrokers?: string[];
  stop(): Promise<void>;
}

export async function ensureServices(opts: ServicesOptions): Promise<RunningServices> {
  if (opts.useContainers && (await dockerAnswers())) {
    opts.log.info('services: a Docker engine answers; starting containers with testcontainers...');
    return startContainers(opts);
  }
  const services: Service[] = [];
  const stop = () => stopAll(services, opts.log);
  try {
    // Postgres and Redis do not depend on each other; Kafka is the slow one, so it goes last.
    const settled = await Promise.allSettled([ensurePostgres(opts.databaseUrl, opts.log), ensureRedis(opts.redisUrl, opts.log)]);
    for (const result of settled) if (result.status === 'fulfilled') services.push(result.value);
    const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    if (opts.kafkaBrokers) services.push(await ensureKafka(opts.kafkaBrokers, opts.log));
  } catch (error) {
    await stop();
    throw error;
  }
  return { databaseUrl: opts.databaseUrl, redisUrl: opts.redisUrl, kafkaBrokers: opts.kafkaBrokers, stop };
}

/** Stops what we started, newest first, so nothing loses a dependency while still stopping. */
async function stopAll(services: Service[], log: Logger): Promise<void> {
  for (const service of services.splice(0).reverse()) {
    if (!service.started) continue;
    log.info(`${service.name}: stopping...`);
    await service.stop().catch((error: Error) => log.warn(`${service.name}: stop failed: ${error.message}`));
  }
}

/** testcontainers' own runtime check: finds Docker or Podman by socket, env or config. */
async function dockerAnswers(): Promise<boolean> {
  try {
    // Loaded lazily: it is a dev dependency and costs ~0.7 s to load.
    const { getContainerRuntimeClient } = await import('testcontainers');
    await getContainerRuntimeClient();
    return true;
  } catch {
    return false;
  }
}

async function startContainers(opts: ServicesOptions): Promise<RunningServices> {
  const { GenericContainer, Wait, getContainerRuntimeClient } = await import('testcontainers');
  const host = (await getContainerRuntimeClient()).info.containerRuntime.host;
  const started: StartedTestContainer[] = [];
  const stop = async () => {
    for (const container of started.splice(0).reverse()) await container.stop().catch(() => {});
  };
  const database = new URL(opts.databaseUrl).pathname.slice(1) || 'postgres';
  const redisDb = new URL(opts.redisUrl).pathname.slice(1);
  try {
    const settled = await Promise.allSettled([
      new GenericContainer('postgres:15-alpine')
        .withEnvironment({ POSTGRES_HOST_AUTH_METHOD: 'trust', POSTGRES_DB: database })
        .withExposedPorts(5432)
        // The image's init script starts and stops a temporary server first.
        .withWaitStrategy(Wait.forLogMessage(/database system is ready to accept connections/, 2))
        .start(),
      new GenericContainer('redis:7-alpine')
        .withCommand(['redis-server', '--appendonly', 'yes', '--maxmemory-policy', 'noeviction'])
        .withExposedPorts(6379)
        .withWaitStrategy(Wait.forLogMessage('Ready to accept connections'))
        .start(),
    ]);
    for (const result of settled) if (result.status === 'fulfilled') started.push(result.value);
    const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    const [postgres, redis] = started as [StartedTestContainer, StartedTestContainer];
    const kafkaBrokers = opts.kafkaBrokers ? [await startKafkaContainer(host, started)] : undefined;
    const result = {
      databaseUrl: `postgres://postgres@${host}:${postgres.getMappedPort(5432)}/${database}`,
      redisUrl: `redis://${host}:${redis.getMappedPort(6379)}${redisDb ? `/${redisDb}` : ''}`,
      kafkaBrokers,
      stop,
    };
    opts.log.info(`services: containers up (${result.databaseUrl}, ${result.redisUrl}, kafka ${kafkaBrokers ?? 'not asked'})`);
    return result;
  } catch (error) {
    await stop();
    throw error;
  }
}

/**
 * Kafka tells clients the address to reconnect to, so the host port must be known before the
 * broker starts: we pick a free one and bind it explicitly instead of a random mapping.
 */
async function startKafkaContainer(host: string, started: StartedTestContainer[]): Promise<string> {
  const { GenericContainer, Wait } = await import('testcontainers');
  const hostPort = await freePort();
  const container = await new GenericContainer('apache/kafka:3.9.1')
    .withEnvironment({
      KAFKA_NODE_ID: '1',
      KAFKA_PROCESS_ROLES: 'broker,controller',
      KAFKA_CONTROLLER_QUORUM_VOTERS: '1@localhost:9093',
      KAFKA_LISTENERS: 'PLAINTEXT://0.0.0.0:9092,CONTROLLER://0.0.0.0:9093,BROKER://0.0.0.0:9094',
      KAFKA_ADVERTISED_LISTENERS: `PLAINTEXT://${host}:${hostPort},BROKER://localhost:9094`,
      KAFKA_LISTENER_SECURITY_PROTOCOL_MAP: 'CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,BROKER:PLAINTEXT',
      KAFKA_CONTROLLER_LISTENER_NAMES: 'CONTROLLER',
      KAFKA_INTER_BROKER_LISTENER_NAME: 'BROKER',
      KAFKA_NUM_PARTITIONS: '6',
      KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR: '1',
      KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS: '1',
      KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR: '1',
      KAFKA_TRANSACTION_STATE_LOG_MIN_ISR: '1',
      KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS: '0',
    })
    .withExposedPorts({ container: 9092, host: hostPort })
    .withWaitStrategy(Wait.forLogMessage('Kafka Server started'))
    .start();
  started.push(container);
  return `${host}:${hostPort}`;
}
