// Named points where a test can stop a process on purpose, the way fail-rs and FoundationDB's
// "buggify" do: FAILPOINTS=bridge.before-commit=hang makes the bridge announce the point and hang
// there, so a test can SIGKILL it at exactly that step. Honoured only when NODE_ENV=test.
import { config } from './config';
import { logger } from './logger';

export type FailpointAction = 'hang' | 'exit';

let parsed: Map<string, FailpointAction> | undefined;

function table(): Map<string, FailpointAction> {
  if (!parsed) {
    parsed = new Map();
    const cfg = config();
    if (cfg.NODE_ENV === 'test' && cfg.FAILPOINTS) {
      for (const entry of cfg.FAILPOINTS.split(',')) {
        const [name, action] = entry.split('=').map((s) => s.trim());
        if (name && (action === 'hang' || action === 'exit')) parsed.set(name, action);
      }
    }
  }
  return parsed;
}

/** Does nothing unless the named failpoint is armed; then logs "failpoint <name>" and hangs or exits. */
export async function failpoint(name: string): Promise<void> {
  const action = table().get(name);
  if (!action) return;
  logger().warn({ failpoint: name, action }, `failpoint ${name}`);
  if (action === 'exit') process.exit(86);
  await new Promise(() => undefined);
}
