// The service's own processes (web, worker, bridge) as children of a test or a bench: how one is
// started, its output kept in a log file and read line by line, waited for, and stopped. The tests
// (test/support/stack.ts) run them from source, the benches (scripts/bench/stack.ts) as the Procfile
// runs them; both start a whole stack of them with app-stack.ts, and single processes here.
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { repoRoot } from './process';

const ROOT = repoRoot();

/** The entry point of each process in the sources. */
export const SOURCE_ENTRIES = { web: 'src/web/main.ts', worker: 'src/worker/main.ts', bridge: 'src/bridge/main.ts' } as const;

/** `node --import tsx <entry>`: one process per service (no tsx wrapper), so a signal reaches the service itself. */
export function fromSource(entry: string): string[] {
  return [process.execPath, '--import', 'tsx', entry];
}

/** `name: command` lines of the Procfile, as written. */
export function procfileCommands(): Map<string, string> {
  const commands = new Map<string, string>();
  for (const line of readFileSync(path.join(ROOT, 'Procfile'), 'utf8').split('\n')) {
    const match = /^([A-Za-z0-9_-]+):\s*(.+)$/.exec(line.trim());
    if (match?.[1] && match[2]) commands.set(match[1], match[2].trim());
  }
  return commands;
}

/**
 * A Procfile command as argv, to start without a shell: the Procfile uses no shell syntax beyond a
 * leading `exec`, which a runner's shell needs to hand signals to node itself.
 */
export function commandArgv(command: string): string[] {
  return command.replace(/^exec\s+/, '').split(/\s+/);
}

export interface LaunchOptions {
  /** argv[0] is the executable. */
  argv: string[];
  /** The whole environment of the process. */
  env: NodeJS.ProcessEnv;
  /** Where its stdout and stderr go, from the start (the file is replaced); its directory is made. */
  logFile: string;
  /** Every complete line it prints, stdout and stderr each line by line (for counting warnings, say). */
  onLine?: (line: string) => void;
}

/**
 * Starts a process in the repository root with its output piped: into logFile, to onLine, and
 * readable by the caller on child.stdout and child.stderr (waitForLine). The log file is closed once
 * the process's output is.
 */
export function launchProcess(opts: LaunchOptions): ChildProcess {
  mkdirSync(path.dirname(opts.logFile), { recursive: true });
  const log = createWriteStream(opts.logFile);
  const [command, ...args] = opts.argv as [string, ...string[]];
  const child = spawn(command, args, { cwd: ROOT, env: opts.env, stdio: ['ignore', 'pipe', 'pipe'] });
  for (const stream of [child.stdout, child.stderr]) {
    let partial = '';
    stream?.on('data', (chunk: Buffer) => {
      log.write(chunk);
      if (!opts.onLine) return;
      const lines = (partial + chunk.toString('utf8')).split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) opts.onLine(line);
    });
  }
  child.once('close', () => log.end());
  return child;
}

/** Resolves when the child prints a line containing `marker`; rejects if it exits first. */
export function waitForLine(child: ChildProcess, marker: string, timeoutMs = 60_000): Promise<void> {
  return new Promise((resolveLine, reject) => {
    let buffer = '';
    const timer = setTimeout(() => done(new Error(`no "${marker}" within ${timeoutMs} ms`)), timeoutMs);
    const onData = (chunk: Buffer) => {
      buffer = (buffer + chunk.toString()).slice(-10_000);
      if (buffer.includes(marker)) done();
    };
    const onExit = (code: number | null) => done(new Error(`process exited (${code}) before "${marker}": ${buffer.slice(-2000)}`));
    const done = (error?: Error) => {
      clearTimeout(timer);
      child.stdout?.off('data', onData);
      child.stderr?.off('data', onData);
      child.off('exit', onExit);
      if (error) reject(error);
      else resolveLine();
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    child.on('exit', onExit);
  });
}

/** Signals the child (SIGTERM: it drains) and resolves once it exited; SIGKILL after timeoutMs. */
export function stopProcess(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 20_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolveStop) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('exit', () => {
      clearTimeout(timer);
      resolveStop();
    });
    child.kill(signal);
  });
}
