// The small HTTP server of processes that serve no API (worker, bridge): /metrics, /health/live and
// /health/ready for Prometheus and the orchestrator. Plain node:http: three routes need no framework.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { withTimeout } from './concurrency';
import type { Logger } from './logger';
import { metricsContentType, metricsText } from './metrics';

const CHECK_TIMEOUT_MS = 1_500;

export type Phase = 'starting' | 'running' | 'draining';

export interface Readiness {
  status: 'ready' | 'starting' | 'draining' | 'unavailable';
  checks: Record<string, 'ok' | 'down'>;
}

/** Ready when every check answers in time and the process is running (not starting, not draining). */
export async function readiness(checks: Record<string, () => Promise<unknown>>, phase: () => Phase): Promise<Readiness> {
  const names = Object.keys(checks);
  const results = await Promise.allSettled(names.map((name) => withTimeout(Promise.resolve().then(checks[name]), CHECK_TIMEOUT_MS)));
  const report = Object.fromEntries(names.map((name, i) => [name, results[i]?.status === 'fulfilled' ? 'ok' : 'down'] as const));
  const allOk = results.every((r) => r.status === 'fulfilled');
  const p = phase();
  return { status: p === 'running' ? (allOk ? 'ready' : 'unavailable') : p, checks: report };
}

export interface OpsServer {
  port: number;
  close(): Promise<void>;
}

/**
 * Listens on `port` (0: any free port). A port another process holds (a second worker on the same
 * host with the same setting) is not worth dying for: the server then takes a free port and says
 * which, so the worker still works while its metrics wait for a port of its own.
 */
export async function startOpsServer(opts: { port: number; log: Logger; ready: () => Promise<Readiness> }): Promise<OpsServer> {
  const { log } = opts;
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?', 1)[0];
    const send = (status: number, type: string, body: string) => {
      res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
      res.end(req.method === 'HEAD' ? undefined : body);
    };
    const json = (status: number, body: unknown) => send(status, 'application/json', JSON.stringify(body));
    if (req.method !== 'GET' && req.method !== 'HEAD') return json(405, { error: { code: 'METHOD_NOT_ALLOWED', message: 'GET only' } });
    if (path === '/metrics') {
      metricsText().then(
        (text) => send(200, metricsContentType, text),
        (error: unknown) => {
          log.warn({ err: error }, 'metrics could not be collected');
          json(500, { error: { code: 'INTERNAL', message: 'metrics could not be collected' } });
        },
      );
      return;
    }
    if (path === '/health/live') return json(200, { status: 'ok' });
    if (path === '/health/ready') {
      opts.ready().then(
        (r) => json(r.status === 'ready' ? 200 : 503, r),
        () => json(503, { status: 'unavailable', checks: {} }),
      );
      return;
    }
    return json(404, { error: { code: 'NOT_FOUND', message: 'ops routes: /metrics, /health/live, /health/ready' } });
  });
  let port: number;
  try {
    port = await listen(server, opts.port);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EADDRINUSE' || opts.port === 0) throw error;
    port = await listen(server, 0);
    log.warn(
      { port, wanted: opts.port },
      'ops port in use (another process on this host?); ops server on a free port instead: give each process its own port',
    );
  }
  log.info({ port }, 'ops server listening');
  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

function listen(server: Server, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const onError = (error: Error) => {
      server.off('listening', onListening);
      reject(error);
    };
    const onListening = () => {
      server.off('error', onError);
      resolve((server.address() as AddressInfo).port);
    };
    server.once('error', onError);
    server.once('listening', onListening);
    server.listen(port, '0.0.0.0');
  });
}
