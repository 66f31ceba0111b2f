// Helpers the infrastructure scripts share: running commands, probing ports, waiting, and
// installing a Debian package when a binary is missing.
import { spawn, spawnSync, type SpawnOptions } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';

export interface Logger {
  info(msg: string): void;
  warn(msg: string): void;
}

/** What an ensure* function hands back: `started` tells whether stop() does anything. */
export interface Service {
  name: string;
  started: boolean;
  /** The server's pid, when this process started it. */
  pid?: number;
  stop(): Promise<void>;
}

export const consoleLogger: Logger = {
  info: (msg) => process.stderr.write(`${msg}\n`),
  warn: (msg) => process.stderr.write(`warning: ${msg}\n`),
};

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** The repository root, found by walking up to package.json so it also works from dist/. */
export function repoRoot(from: string = __dirname): string {
  let dir = from;
  while (!existsSync(path.join(dir, 'package.json'))) {
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error(`no package.json above ${from}`);
    dir = parent;
  }
  return dir;
}

export function isLoopback(host: string): boolean {
  const bare = host.replace(/^\[|\]$/g, '');
  return bare === 'localhost' || bare === '::1' || /^127\./.test(bare);
}

export function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

export interface RunResult {
  code: number;
  output: string;
}

/** Runs a command to completion, collecting stdout and stderr together (for error messages). */
export function run(cmd: string, args: string[], opts: SpawnOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { ...opts, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    const collect = (chunk: Buffer) => {
      // Keep the tail only: a failing apt-get or mvn can print megabytes.
      output = (output + chunk.toString()).slice(-20_000);
    };
    child.stdout?.on('data', collect);
    child.stderr?.on('data', collect);
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? 1, output }));
  });
}

/** Like run(), but a non-zero exit is an error that carries the command's last lines. */
export async function runOrThrow(cmd: string, args: string[], opts: SpawnOptions = {}): Promise<string> {
  const result = await run(cmd, args, opts);
  if (result.code !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} exited with ${result.code}:\n${tail(result.output, 30)}`);
  }
  return result.output;
}

export function tail(text: string, lines: number): string {
  return text.trimEnd().split('\n').slice(-lines).join('\n');
}

/** The absolute path of an executable in one of extraDirs or on PATH, or undefined. */
export function findExecutable(name: string, extraDirs: string[] = []): string | undefined {
  const local = extraDirs.map((dir) => path.join(dir, name)).find((file) => existsSync(file));
  if (local) return local;
  const found = spawnSync('sh', ['-c', 'command -v "$1"', 'sh', name], { encoding: 'utf8' });
  return found.status === 0 && found.stdout.trim() ? found.stdout.trim() : undefined;
}

/** True when something accepts a TCP connection at host:port within the timeout. */
export function isPortOpen(host: string, port: number, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    const done = (open: boolean) => {
      socket.destroy();
      resolve(open);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

/** True when this process could listen on host:port right now. */
export function isPortFree(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(false));
    server.listen({ host, port, exclusive: true }, () => server.close(() => resolve(true)));
  });
}

/**
 * A port free on host now, chosen below the OS's ephemeral range (there is a small race until someone
 * binds it). A port the OS hands out for `listen(0)` comes from the range it also gives outgoing
 * connections their local ports from: a process started a moment later on that port found it taken
 * by a client's long-lived connection (EADDRINUSE on every restart, a fault-suite world that never
 * came up). Below the range, only a listener can take it.
 */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  const below = ephemeralLow();
  for (let attempt = 0; below !== null && attempt < 50; attempt += 1) {
    const port = FIXED_PORTS_FROM + Math.floor(Math.random() * (below - FIXED_PORTS_FROM));
    // Nothing holds a port between this answer and its bind: callers asking at once (Promise.all)
    // must not get the same one.
    if (handedOut.has(port)) continue;
    handedOut.add(port);
    if (await isPortFree(host, port)) return port;
  }
  return anyPort(host);
}

/** The ports freePort chose in this process. */
const handedOut = new Set<number>();

/** Ports chosen by freePort start here: above the well-known services a box may run. */
const FIXED_PORTS_FROM = 10_000;

/** The first port of the OS's ephemeral range (Linux), or null where it cannot be read or leaves no room; read once. */
function ephemeralLow(): number | null {
  if (ephemeralLowRead === undefined) {
    try {
      const low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
      ephemeralLowRead = Number.isInteger(low) && low > FIXED_PORTS_FROM + 1_000 ? low : null;
    } catch {
      ephemeralLowRead = null;
    }
  }
  return ephemeralLowRead;
}
let ephemeralLowRead: number | null | undefined;

/** A port the OS picks (from its ephemeral range). */
function anyPort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen({ host, port: 0 }, () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

export interface WaitOptions {
  timeoutMs: number;
  intervalMs?: number;
  /** Called about every progressEveryMs while still waiting, with the seconds waited so far. */
  onProgress?: (waitedSeconds: number) => void;
  progressEveryMs?: number;
  /** Checked each round; a returned message aborts the wait early (e.g. the child died). */
  abortIf?: () => string | undefined;
}

/** Polls check() until it returns true; throws with `what` in the message on timeout. */
export async function waitUntil(what: string, check: () => Promise<boolean>, opts: WaitOptions): Promise<void> {
  const started = Date.now();
  const interval = opts.intervalMs ?? 500;
  const progressEvery = opts.progressEveryMs ?? 10_000;
  let nextProgress = started + progressEvery;
  for (;;) {
    if (await check()) return;
    const abort = opts.abortIf?.();
    if (abort) throw new Error(`${what}: ${abort}`);
    const now = Date.now();
    if (now - started >= opts.timeoutMs) throw new Error(`${what}: timed out after ${Math.round(opts.timeoutMs / 1000)} s`);
    if (opts.onProgress && now >= nextProgress) {
      opts.onProgress(Math.round((now - started) / 1000));
      nextProgress = now + progressEvery;
    }
    await sleep(interval);
  }
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM means it exists but belongs to someone else.
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Stops a process we started: SIGTERM, then wait until it is gone and its port closed,
 * then SIGKILL after graceMs. Waiting for the port lets the next run bind it again.
 */
export async function terminate(pid: number, opts: { host: string; port: number; graceMs: number }): Promise<void> {
  const gone = async () => !isAlive(pid) && !(await isPortOpen(opts.host, opts.port, 300));
  signal(pid, 'SIGTERM');
  try {
    await waitUntil(`pid ${pid}`, gone, { timeoutMs: opts.graceMs, intervalMs: 200 });
  } catch {
    signal(pid, 'SIGKILL');
    await waitUntil(`pid ${pid} after SIGKILL`, gone, { timeoutMs: 5000, intervalMs: 200 });
  }
}

/** True while any process of the group led by pgid runs (a command started detached leads its own). */
export function groupAlive(pgid: number | undefined): boolean {
  if (pgid === undefined) return false;
  try {
    process.kill(-pgid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Signals a whole process group: a shell and the command it runs. */
export function signalGroup(pgid: number | undefined, sig: NodeJS.Signals): void {
  if (pgid === undefined) return;
  try {
    process.kill(-pgid, sig);
  } catch {
    // The group is already gone.
  }
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // Already gone: nothing to stop.
  }
}

/**
 * Installs a Debian package. `apt-get update` only runs when the plain install fails, since
 * the package lists are usually fresh enough and the update costs time and network.
 */
export async function aptInstall(pkg: string, log: Logger): Promise<void> {
  const sudo = isRoot() ? [] : ['sudo', '-n'];
  // `env` sets the variable on the far side of sudo, which would otherwise drop it.
  const apt = (args: string[]) => {
    const [cmd, ...rest] = [...sudo, 'env', 'DEBIAN_FRONTEND=noninteractive', 'apt-get', ...args];
    return run(cmd as string, rest);
  };
  log.info(`${pkg}: installing the Debian package (apt-get install -y ${pkg})...`);
  if ((await apt(['install', '-y', '--no-install-recommends', pkg])).code === 0) return;
  log.info(`${pkg}: install failed, running apt-get update and trying again...`);
  const update = await apt(['update']);
  if (update.code !== 0) throw new Error(`apt-get update failed:\n${tail(update.output, 20)}`);
  const second = await apt(['install', '-y', '--no-install-recommends', pkg]);
  if (second.code !== 0) throw new Error(`apt-get install ${pkg} failed:\n${tail(second.output, 20)}`);
}

/** Synchronous "does this user exist" check, used to decide how to run the Postgres binaries. */
export function systemUserExists(name: string): boolean {
  return spawnSync('id', ['-u', name], { stdio: 'ignore' }).status === 0;
}

export interface ChildService {
  pid: number;
  /** Why the child is gone (exit code or signal), or undefined while it runs. */
  exited(): string | undefined;
}

/**
 * Starts a long-running server as a child in its own process group, its output appended to
 * logFile. The own group keeps a terminal's Ctrl-C away from it, so the caller can stop the
 * app before its services; unref() keeps a forgotten child from holding this process open.
 */
export function spawnService(cmd: string, args: string[], opts: { cwd: string; logFile: string }): ChildService {
  const out = openSync(opts.logFile, 'a');
  const child = spawn(cmd, args, { cwd: opts.cwd, detached: true, stdio: ['ignore', out, out] });
  closeSync(out);
  let exitReason: string | undefined;
  child.on('error', (error) => (exitReason = error.message));
  child.on('exit', (code, sig) => (exitReason = sig ? `killed by ${sig}` : `exited with ${code}`));
  child.unref();
  if (child.pid === undefined) throw new Error(`could not start ${cmd}`);
  return { pid: child.pid, exited: () => exitReason };
}
