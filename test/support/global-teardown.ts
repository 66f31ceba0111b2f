// Jest global teardown: stops the services that global-setup started (none when it reused
// running ones).
import { consoleLogger as log } from '../../scripts/infra/process';
import type { RunningServices } from '../../scripts/infra/services';
import { SERVICES_KEY } from './global-setup';

// Jest loads global teardown through its default export.
export default async function globalTeardown(): Promise<void> {
  const store = globalThis as Record<string, unknown>;
  const services = store[SERVICES_KEY] as RunningServices | undefined;
  delete store[SERVICES_KEY];
  await services?.stop();
  log.info('test teardown: done');
}
