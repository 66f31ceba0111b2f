// CPU accounting for the bench from /proc (Linux): how busy the machine was during a phase, and how
// much of it each part of the system (bench client, web, workers, Postgres, Redis, everything else)
// used. On a shared 2-core box this is what tells a slow service from a busy neighbour.
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

export type CpuGroup = 'bench' | 'web' | 'worker' | 'bridge' | 'postgres' | 'redis' | 'kafka' | 'baseline';
const GROUPS: CpuGroup[] = ['bench', 'web', 'worker', 'bridge', 'postgres', 'redis', 'kafka', 'baseline'];

/** Decides which group a process belongs to; null leaves it in "other". */
export type Classifier = (pid: number, comm: string, cmdline: () => string) => CpuGroup | null;

interface Snapshot {
  at: number;
  machine: { busy: number; total: number };
  ticks: Map<number, ProcessTicks>;
}

/** A process's own CPU ticks and those of its reaped children, with its parent. */
export interface ProcessTicks {
  group: CpuGroup;
  ppid: number;
  ticks: number;
}

export interface CpuReport {
  wallMs: number;
  cores: number;
  /** Machine-wide busy share, 100 = every core busy the whole phase. */
  machineBusyPct: number;
  /** Per group, 100 = one core busy the whole phase. */
  groupsPct: Record<CpuGroup | 'other', number>;
  /** Per group, CPU milliseconds used in the phase. */
  groupsMs: Record<CpuGroup | 'other', number>;
}

const CLK_TCK = (() => {
  const out = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' });
  const value = Number(out.stdout?.trim());
  return Number.isFinite(value) && value > 0 ? value : 100;
})();

function read(path: string): string | null {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return null; // the process exited between listing and reading
  }
}

function machineTicks(): { busy: number; total: number; cores: number } {
  const text = read('/proc/stat') ?? '';
  const fields = (text.split('\n')[0] ?? '').trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal (guest time is already inside user/nice)
  const total = fields.slice(0, 8).reduce((a, b) => a + (Number.isFinite(b) ? b : 0), 0);
  const idle = (fields[3] ?? 0) + (fields[4] ?? 0);
  const cores = text.split('\n').filter((l) => /^cpu\d+ /.test(l)).length || 1;
  return { busy: total - idle, total, cores };
}

function snapshot(classify: Classifier): Snapshot {
  const ticks = new Map<number, ProcessTicks>();
  let entries: string[] = [];
  try {
    entries = readdirSync('/proc');
  } catch {
    /* not Linux: groups stay empty */
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    const stat = read(`/proc/${pid}/stat`);
    if (!stat) continue;
    const open = stat.indexOf('(');
    const close = stat.lastIndexOf(')');
    const comm = stat.slice(open + 1, close);
    const group = classify(pid, comm, () => (read(`/proc/${pid}/cmdline`) ?? '').replace(/\0/g, ' '));
    if (!group) continue;
    // Fields after "(comm)": state is field 3, utime 14, stime 15, and cutime 16 / cstime 17, the time
    // of reaped children: that is where the CPU of a Postgres backend that exited mid-phase ends up.
    const rest = stat
      .slice(close + 2)
      .split(' ')
      .map(Number);
    ticks.set(pid, { group, ppid: rest[1] ?? 0, ticks: (rest[11] ?? 0) + (rest[12] ?? 0) + (rest[13] ?? 0) + (rest[14] ?? 0) });
  }
  const machine = machineTicks();
  return { at: performance.now(), machine, ticks };
}

/** Starts measuring a phase; the returned function ends it and reports. */
export function startCpuPhase(classify: Classifier): () => CpuReport {
  const before = snapshot(classify);
  return () => {
    const after = snapshot(classify);
    const wallMs = after.at - before.at;
    const cores = machineTicks().cores;
    const groups = { ...groupTicks(before.ticks, after.ticks), other: 0 };
    const grouped = GROUPS.reduce((sum, g) => sum + groups[g], 0);
    const machineBusy = after.machine.busy - before.machine.busy;
    const machineTotal = Math.max(1, after.machine.total - before.machine.total);
    groups.other = Math.max(0, machineBusy - grouped);
    const seconds = Math.max(wallMs, 1) / 1000;
    const pct = (t: number) => Math.round((t / CLK_TCK / seconds) * 1000) / 10;
    const ms = (t: number) => Math.round((t / CLK_TCK) * 1000);
    const each = (f: (t: number) => number) =>
      Object.fromEntries(Object.entries(groups).map(([g, t]) => [g, f(t)])) as Record<CpuGroup | 'other', number>;
    return {
      wallMs: Math.round(wallMs),
      cores,
      machineBusyPct: Math.round((machineBusy / machineTotal) * 1000) / 10,
      groupsPct: each(pct),
      groupsMs: each(ms),
    };
  };
}

/**
 * The ticks each group used between two snapshots. A process that started during the phase counts
 * from zero. One that exited and was reaped during it shows up in its parent's children's time with
 * its whole life: what it had used before the phase is taken off again, or a pooled Postgres backend
 * closed for idleness would bill a short phase for minutes of earlier work.
 */
export function groupTicks(before: Map<number, ProcessTicks>, after: Map<number, ProcessTicks>): Record<CpuGroup, number> {
  const groups = Object.fromEntries(GROUPS.map((g) => [g, 0])) as Record<CpuGroup, number>;
  for (const [pid, now] of after) groups[now.group] += Math.max(0, now.ticks - (before.get(pid)?.ticks ?? 0));
  for (const [pid, was] of before) {
    if (after.has(pid) || after.get(was.ppid)?.group !== was.group) continue;
    groups[was.group] = Math.max(0, groups[was.group] - was.ticks);
  }
  return groups;
}

/**
 * Groups by pid when the bench started the processes itself, and by command line otherwise: a reused
 * stack, as `npm start` runs it (`node dist/src/web/main.js`) or the dev scripts (`tsx
 * src/worker/main.ts`). `baseline`: the benches' bare baseline server.
 */
export function classifier(own: { web: number[]; workers: number[]; bridge?: number[] } | null, baseline: number[] = []): Classifier {
  const web = new Set(own?.web ?? []);
  const baselines = new Set(baseline);
  const workers = new Set(own?.workers ?? []);
  const bridges = new Set(own?.bridge ?? []);
  return (pid, comm, cmdline) => {
    if (pid === process.pid) return 'bench';
    if (web.has(pid)) return 'web';
    if (workers.has(pid)) return 'worker';
    if (bridges.has(pid)) return 'bridge';
    if (baselines.has(pid)) return 'baseline';
    if (comm === 'postgres') return 'postgres';
    if (comm.startsWith('redis-server')) return 'redis';
    if (comm === 'java' && /kafka/i.test(cmdline())) return 'kafka';
    if (!own && (comm === 'node' || comm.startsWith('MainThread'))) {
      const cmd = cmdline();
      if (/\bweb\/main\.(js|ts)\b/.test(cmd)) return 'web';
      if (/\bworker\/main\.(js|ts)\b/.test(cmd)) return 'worker';
      if (/\bbridge\/main\.(js|ts)\b/.test(cmd)) return 'bridge';
    }
    return null;
  };
}
