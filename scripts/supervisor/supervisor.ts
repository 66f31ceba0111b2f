// Runs the Procfile's processes and keeps them running, as foreman, pm2 or systemd would: a process
// that exits on its own is restarted after a backoff (restart-policy.ts), a crash loop ends the run,
// and stop() stops them in order (web first, so no request comes in that nothing would process).
import { spawn, type ChildProcess } from 'node:child_process';
import readline from 'node:readline';
import { groupAlive, signalGroup, sleep, type Logger } from '../infra/process';
import type { Instance } from './formation';
import { DEFAULT_RESTART_POLICY, NO_CRASHES, onCrash, type CrashRecord, type RestartPolicy } from './restart-policy';

/** Stop order by type: the webs first (no new requests), then the bridge (no new events), then the workers. */
export const STOP_ORDER = ['web', 'bridge', 'worker'];
const COLORS = [36, 33, 35, 32, 34, 31];

export interface SupervisorOptions {
  cwd: string;
  env: NodeJS.ProcessEnv;
  log: Logger;
  policy?: RestartPolicy;
  /** How long a type may take to drain after SIGTERM before it is killed. */
  stopGraceMs: number;
  /** Called once when a process crash-loops; the caller stops everything (stop()) and exits. */
  onGiveUp(message: string): void;
  /** Where the processes' output lines go; by default to this process's stdout and stderr, each prefixed with its process's name. */
  output?: (name: string, line: string, stream: 'stdout' | 'stderr') => void;
}

interface Managed {
  instance: Instance;
  child?: ChildProcess;
  startedAt: number;
  /** Restarts since the run began, for the log and the stop summary. */
  restarts: number;
  crashes: CrashRecord;
  /** A restart waiting out its backoff. */
  timer?: NodeJS.Timeout;
  color: number;
}

export class Supervisor {
  private readonly managed: Managed[];
  private readonly labelWidth: number;
  private stopping = false;
  private readonly policy: RestartPolicy;

  constructor(
    instances: Instance[],
    private readonly opts: SupervisorOptions,
  ) {
    this.policy = opts.policy ?? DEFAULT_RESTART_POLICY;
    this.managed = instances.map((instance, i) => ({
      instance,
      startedAt: 0,
      restarts: 0,
      crashes: NO_CRASHES,
      color: COLORS[i % COLORS.length] as number,
    }));
    this.labelWidth = Math.max(...instances.map((i) => i.name.length));
  }

  start(): void {
    for (const m of this.managed) this.spawn(m);
  }

  /** The pid of the named process (web.1, worker.2) while it runs; undefined while it waits for a restart. */
  pidOf(name: string): number | undefined {
    const m = this.managed.find((x) => x.instance.name === name);
    return m?.child && m.child.exitCode === null && m.child.signalCode === null ? m.child.pid : undefined;
  }

  /** Restarts per process so far, e.g. `web.1 0, worker.1 2`. */
  restartCounts(): string {
    return this.managed.map((m) => `${m.instance.name} ${m.restarts}`).join(', ');
  }

  /**
   * Stops every process, type by type in STOP_ORDER (then any other type): SIGTERM to the type's
   * process groups, wait until they are empty, SIGKILL what is left after the grace. No restarts from here on.
   */
  async stop(): Promise<void> {
    this.stopping = true;
    for (const m of this.managed) clearTimeout(m.timer);
    const types = [...new Set(this.managed.map((m) => m.instance.type))];
    const rank = (type: string) => (STOP_ORDER.includes(type) ? STOP_ORDER.indexOf(type) : STOP_ORDER.length);
    for (const type of types.sort((a, b) => rank(a) - rank(b))) {
      await this.stopAll(this.managed.filter((m) => m.instance.type === type));
    }
  }

  /** A second Ctrl-C: no more waiting for drains. */
  killAll(): void {
    this.stopping = true;
    for (const m of this.managed) {
      clearTimeout(m.timer);
      signalGroup(m.child?.pid, 'SIGKILL');
    }
  }

  private async stopAll(group: Managed[]): Promise<void> {
    const running = group.filter((m) => groupAlive(m.child?.pid));
    if (running.length === 0) return;
    this.opts.log.info(`start: stopping ${running.map((m) => m.instance.name).join(', ')}...`);
    for (const m of running) signalGroup(m.child?.pid, 'SIGTERM');
    const deadline = Date.now() + this.opts.stopGraceMs;
    while (running.some((m) => groupAlive(m.child?.pid)) && Date.now() < deadline) await sleep(100);
    const stuck = running.filter((m) => groupAlive(m.child?.pid));
    if (stuck.length > 0) {
      this.opts.log.warn(
        `start: ${stuck.map((m) => m.instance.name).join(', ')} still running after ${this.opts.stopGraceMs / 1000} s; killing`,
      );
      for (const m of stuck) signalGroup(m.child?.pid, 'SIGKILL');
      while (stuck.some((m) => groupAlive(m.child?.pid))) await sleep(100);
    }
    for (const m of running) this.opts.log.info(`start: ${m.instance.name} stopped (${exitDescription(m.child)})`);
  }

  /**
   * Runs the command through a shell in its own process group: a terminal's Ctrl-C then reaches only
   * the runner, which stops the processes in order, and a stop reaches whatever the command started.
   */
  private spawn(m: Managed): void {
    const { instance } = m;
    const child = spawn(instance.command, {
      cwd: this.opts.cwd,
      env: { ...this.opts.env, ...instance.env },
      shell: true,
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    m.child = child;
    m.startedAt = Date.now();
    this.prefixOutput(m, child);
    child.once('error', (error) => this.opts.log.warn(`start: ${instance.name}: ${error.message}`));
    child.once('exit', () => this.onExit(m, child));
    const again = m.restarts > 0 ? ` again (restart ${m.restarts})` : '';
    this.opts.log.info(
      `start: ${instance.name} started${again}, pid ${child.pid ?? '?'}${instance.listens ? `; ${instance.listens}` : ''}`,
    );
  }

  private onExit(m: Managed, child: ChildProcess): void {
    if (this.stopping || m.child !== child) return;
    const name = m.instance.name;
    // What the command left behind in its group (a shell that did not exec) must not hold its ports.
    signalGroup(child.pid, 'SIGKILL');
    const now = Date.now();
    const upForMs = now - m.startedAt;
    const decision = onCrash(m.crashes, { now, upForMs }, this.policy);
    m.crashes = decision.record;
    const how = `${exitDescription(child)}, pid ${child.pid}, up ${(upForMs / 1000).toFixed(1)} s`;
    if (decision.action === 'give-up') {
      const windowS = this.policy.windowMs / 1000;
      this.opts.log.warn(`start: ${name} exited unexpectedly (${how})`);
      this.opts.onGiveUp(
        `${name} crashed ${decision.crashesInWindow} times within ${windowS} s (more than ${this.policy.maxCrashes}); giving up`,
      );
      return;
    }
    m.restarts += 1;
    this.opts.log.warn(
      `start: ${name} exited unexpectedly (${how}); restart ${m.restarts} (attempt ${decision.attempt} in a row) in ${(decision.delayMs / 1000).toFixed(1)} s`,
    );
    m.timer = setTimeout(() => {
      if (!this.stopping) this.spawn(m);
    }, decision.delayMs);
  }

  private prefixOutput(m: Managed, child: ChildProcess): void {
    const output = this.opts.output;
    if (output) {
      for (const [stream, name] of [
        [child.stdout, 'stdout'],
        [child.stderr, 'stderr'],
      ] as const) {
        if (stream) readline.createInterface({ input: stream }).on('line', (line) => output(m.instance.name, line, name));
      }
      return;
    }
    const plain = `${m.instance.name.padEnd(this.labelWidth)} |`;
    const label = process.stdout.isTTY ? `\x1b[${m.color}m${plain}\x1b[0m` : plain;
    for (const [stream, sink] of [
      [child.stdout, process.stdout],
      [child.stderr, process.stderr],
    ] as const) {
      if (stream) readline.createInterface({ input: stream }).on('line', (line) => sink.write(`${label} ${line}\n`));
    }
  }
}

export function exitDescription(child: ChildProcess | undefined): string {
  if (!child) return 'never started';
  if (child.signalCode) return `signal ${child.signalCode}`;
  return child.exitCode === null ? 'still running' : `exit code ${child.exitCode}`;
}
