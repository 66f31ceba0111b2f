// Runs `npm start`'s runner (scripts/start.ts, as scripts/start.sh execs it after the build) for a
// test, and reads its output: the runner's own lines (`start: ...`) and the prefixed lines of each
// process it supervises (`worker.1 | {pino json}`). The output is kept under .data/test-logs too.
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { groupAlive, isAlive, signalGroup } from '../../scripts/infra/process';
import { logFile, type LogLine } from './stack';

const ROOT = resolve(__dirname, '../..');

export interface Runner {
  child: ChildProcess;
  /** Exit code, or the signal's name. */
  exited: Promise<number | string>;
  /** Every output line so far, stdout and stderr, in the order they came. */
  lines(): string[];
  /** The runner's own lines (`start: ...` and `warning: start: ...`), without the process output. */
  ownLines(): string[];
  /** Polls the output until a line matches; its match. Rejects on timeout or when the runner exits first. */
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<RegExpExecArray>;
  /** The pino lines process `name` (e.g. worker.2) printed so far. */
  logOf(name: string): LogLine[];
  /** Every pid the runner said it started for `name`, oldest first. */
  pidsOf(name: string): number[];
  /** Kills whatever is still running of this run (the runner and every process group it started). */
  kill(): Promise<void>;
}

export function startRunner(name: string, args: string[], env: Record<string, string>): Runner {
  mkdirSync(dirname(logFile(name)), { recursive: true });
  const file = createWriteStream(logFile(name));
  const child = spawn(process.execPath, ['--import', 'tsx', 'scripts/start.ts', ...args], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const all: string[] = [];
  for (const stream of [child.stdout, child.stderr]) {
    let partial = '';
    stream?.on('data', (chunk: Buffer) => {
      file.write(chunk);
      const parts = (partial + chunk.toString()).split('\n');
      partial = parts.pop() ?? '';
      all.push(...parts);
    });
  }
  const exited = new Promise<number | string>((resolveExit) =>
    child.once('exit', (code, signal) => resolveExit(code ?? signal ?? 'unknown')),
  );
  const lines = () => [...all];
  const pidsOf = (process: string) =>
    lines().flatMap((line) => {
      const match = new RegExp(`^start: ${process.replace('.', '\\.')} started.*, pid (\\d+)`).exec(line);
      return match ? [Number(match[1])] : [];
    });
  return {
    child,
    exited,
    lines,
    ownLines: () => lines().filter((line) => /^(warning: )?start: /.test(line)),
    async waitFor(pattern, timeoutMs = 60_000) {
      const until = Date.now() + timeoutMs;
      for (;;) {
        const found = lines()
          .map((line) => pattern.exec(line))
          .find((m): m is RegExpExecArray => m !== null);
        if (found) return found;
        if (child.exitCode !== null || child.signalCode !== null)
          throw new Error(`the runner exited before printing ${pattern}:\n${lines().slice(-30).join('\n')}`);
        if (Date.now() > until) throw new Error(`no ${pattern} within ${timeoutMs} ms:\n${lines().slice(-30).join('\n')}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    },
    logOf(process) {
      const prefix = new RegExp(`^${process.replace('.', '\\.')}\\s*\\| `);
      return lines().flatMap((line) => {
        if (!prefix.test(line)) return [];
        try {
          return [JSON.parse(line.replace(prefix, '')) as LogLine];
        } catch {
          return [];
        }
      });
    },
    pidsOf,
    async kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      const pids = lines()
        .flatMap((line) => /^start: \S+ started.*, pid (\d+)/.exec(line)?.[1] ?? [])
        .map(Number);
      for (const pid of pids) signalGroup(pid, 'SIGKILL');
      const until = Date.now() + 10_000;
      while ((pids.some((pid) => groupAlive(pid)) || (child.pid !== undefined && isAlive(child.pid))) && Date.now() < until)
        await new Promise((r) => setTimeout(r, 100));
      file.end();
    },
  };
}
