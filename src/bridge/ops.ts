// The bridge's ops server: /metrics, /health/live, and /health/ready, which answers 200 while Postgres
// (the inbox) and Redis (where the jobs go) and Kafka (where the events come from) answer and the
// consumer runs.
import type { Kafka } from 'kafkajs';
import { singleFlight } from '../core/concurrency';
import type { Logger } from '../core/logger';
import { sequelize } from '../core/postgres';
import { readiness, startOpsServer, type OpsServer, type Phase } from '../core/ops-server';
import type { Queues } from '../queues/connection';

/**
 * A Kafka probe: describeCluster through an admin of its own without retries, so a probe of a broker
 * that is away fails within the check's timeout; one probe at a time, so slow ones do not pile up.
 */
function kafkaProbe(kafka: Kafka) {
  const admin = kafka.admin({ retry: { retries: 0 } });
  let connected: Promise<void> | undefined;
  const probes = singleFlight<'probe'>();
  return {
    check(): Promise<unknown> {
      return probes.run('probe', async () => {
        connected ??= admin.connect();
        try {
          await connected;
          return await admin.describeCluster();
        } catch (error) {
          connected = undefined;
          await admin.disconnect().catch(() => undefined);
          throw error;
        }
      });
    },
    stop: () => admin.disconnect().catch(() => undefined),
  };
}

export async function startBridgeOps(opts: {
  port: number;
  kafka: Kafka;
  queues: Queues;
  log: Logger;
  phase: () => Phase;
}): Promise<OpsServer> {
  const probe = kafkaProbe(opts.kafka);
  const server = await startOpsServer({
    port: opts.port,
    log: opts.log,
    ready: () =>
      readiness(
        { postgres: () => sequelize().query('SELECT 1'), redis: () => opts.queues.connection.ping(), kafka: () => probe.check() },
        opts.phase,
      ),
  });
  return {
    port: server.port,
    async close() {
      await probe.stop();
      await server.close();
    },
  };
}
