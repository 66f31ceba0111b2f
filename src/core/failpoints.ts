// Named points where a test can stop a process on purpose, the way fail-rs and FoundationDB's
// "buggify" do: FAILPOINTS=bridge.before-commit=hang makes the bridge announce the point and hang
// there, so a test can SIGKILL it at exactly that step. Honoured only when NODE_ENV=test.
//
// Actions: `hang`; `exit` (exit code 86 at once, as a crash there would end it); `exit@N` and
// `hang@N` (the Nth time this process reaches the point, and only once per deployment: the first
// process to get there leaves a mark under the temp dir, named by QUEUE_PREFIX, so a process
// restarted by a supervisor, or another process of the deployment, passes it). The fault suite
// crashes a worker mid-sale at an exact step this way (test/faults/faults.ts).
import { mkdirSync, openSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { config } from './config';
import { logger, type Logger } from './logger';

export type FailpointAction = { kind: 'hang' | 'exit'; atHit: number; once: boolean };

interface Armed {
  action: FailpointAction;
  hits: number;
}

let parsed: Map<string, Armed> | undefined;

/** `hang`, `exit`, `hang@N` or `exit@N` (N ≥ 1); null for anything else. */
export function parseFailpointAction(text: string): FailpointAction | null {
  if (text === 'hang' || text === 'exit') return { kind: text, atHit: 1, once: false };
  const at = /^(hang|exit)@([1-9]\d{0,6})$/.exec(text);
  return at ? { kind: at[1] as 'hang' | 'exit', atHit: Number(at[2]), once: true } : null;
}

function table(): Map<string, Armed> {
  if (!parsed) {
    parsed = new Map();
    const cfg = config();
    if (cfg.NODE_ENV === 'test' && cfg.FAILPOINTS) {
      for (const entry of cfg.FAILPOINTS.split(',')) {
        const [name, text] = entry.split('=').map((s) => s.trim());
        const action = text ? parseFailpointAction(text) : null;
        if (name && action) parsed.set(name, { action, hits: 0 });
      }
    }
  }
  return parsed;
}

/** Where a once-only failpoint leaves its mark: one folder per deployment (QUEUE_PREFIX). */
export function failpointMarkDir(queuePrefix = config().QUEUE_PREFIX): string {
  return path.join(tmpdir(), 'coupon-failpoints', queuePrefix.replace(/[^A-Za-z0-9_.-]/g, '_'));
}

/** True for the first process of the deployment to claim the mark (an exclusive create). */
function claimMark(name: string): boolean {
  const dir = failpointMarkDir();
  mkdirSync(dir, { recursive: true });
  try {
    closeSync(openSync(path.join(dir, name), 'wx'));
    return true;
  } catch {
    return false;
  }
}

/**
 * Does nothing unless the named failpoint is armed; then logs "failpoint <name>" (through `log`, so
 * the line carries the request's or job's ids) and hangs or exits.
 */
export async function failpoint(name: string, log: Logger = logger()): Promise<void> {
  const armed = table().get(name);
  if (!armed) return;
  const { action } = armed;
  armed.hits += 1;
  // Without @N every hit stops; with it the Nth only, in the one process that claims the mark.
  if (action.once && (armed.hits !== action.atHit || !claimMark(name))) return;
  log.warn({ failpoint: name, action: action.kind }, `failpoint ${name}`);
  if (action.kind === 'exit') process.exit(86);
  await new Promise(() => undefined);
}
