// Helpers the benchmark scenarios share: output, rounding and formatting, medians, token signing, git state.
import { spawnSync } from 'node:child_process';
import { createSecretKey } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type IORedis from 'ioredis';
import type { Client as PgClient } from 'pg';
import { SignJWT } from 'jose';
import { z } from 'zod';
import { ROOT } from './stack';

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Progress goes to stderr, so stdout stays the summary. */
export const note = (line: string) => process.stderr.write(`[bench] ${line}\n`);
export const round = (n: number, digits = 0) => Math.round(n * 10 ** digits) / 10 ** digits;
export const fmtInt = (n: number) => Math.round(n).toLocaleString('en-US');
export const fmtMs = (ms: number | null) => (ms === null ? 'n/a' : ms >= 1000 ? `${round(ms / 1000, 2)} s` : `${round(ms, 1)} ms`);
export const wallNow = () => performance.timeOrigin + performance.now();

/** The median of the runs' values (Infinity counts: a run that never settled is the slowest). */
export function median(values: (number | null | undefined)[]): number | null {
  const xs = values.filter((v): v is number => typeof v === 'number' && !Number.isNaN(v)).sort((a, b) => a - b);
  if (xs.length === 0) return null;
  const mid = Math.floor(xs.length / 2);
  const m = xs.length % 2 ? (xs[mid] as number) : ((xs[mid - 1] as number) + (xs[mid] as number)) / 2;
  return Number.isFinite(m) ? round(m, 3) : null;
}

/** The p-th percentile (0..100) of a sample, nearest-rank; null for an empty one. */
export function percentile(sorted: number[], p: number): number | null {
  if (sorted.length === 0) return null;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank] as number;
}

/** Redis's `used_memory` (INFO memory), to report what a request leaves behind in bytes. */
export async function redisUsedMemory(redis: IORedis): Promise<number> {
  return Number(/used_memory:(\d+)/.exec(await redis.info('memory'))?.[1] ?? 0);
}

/** Signs HS256 tokens valid for six hours with one key object. */
export function signer(secret: string) {
  const key = createSecretKey(Buffer.from(secret, 'utf8'));
  const exp = Math.floor(Date.now() / 1000) + 6 * 3600;
  return (sub: string, role: 'user' | 'admin') =>
    new SignJWT({ role }).setProtectedHeader({ alg: 'HS256', typ: 'JWT' }).setSubject(sub).setIssuedAt().setExpirationTime(exp).sign(key);
}

export function gitState(): { commit: string | null; dirty: boolean | null } {
  const rev = spawnSync('git', ['rev-parse', 'HEAD'], { cwd: ROOT, encoding: 'utf8' });
  const status = spawnSync('git', ['status', '--porcelain', '--untracked-files=no'], { cwd: ROOT, encoding: 'utf8' });
  return { commit: rev.status === 0 ? rev.stdout.trim() : null, dirty: status.status === 0 ? status.stdout.trim().length > 0 : null };
}

/** Writes a run's report to bench/results/<name>-<start time>.json and to `latest`; answers the line that says where. */
export function writeResults(name: string, latest: string, startedAt: Date, report: object): string {
  const dir = path.join(ROOT, 'bench', 'results');
  mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `${name}-${startedAt.toISOString().replace(/:/g, '-')}.json`);
  const json = `${JSON.stringify(report, null, 2)}\n`;
  writeFileSync(file, json);
  writeFileSync(path.join(dir, latest), json);
  return `Results: ${path.relative(ROOT, file)} (and bench/results/${latest})`;
}

/** Runs a benchmark's main and exits with its code: 0 when the invariants held, 1 when not, 2 when it could not run. */
export function runBench(main: () => Promise<number>): void {
  main().then(
    (code) => process.exit(code),
    (error: unknown) => {
      process.stderr.write(`[bench] could not run: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
      process.exit(2);
    },
  );
}

/** A bench setting: a whole number from the environment, at least `min`, `def` when unset. */
export const int = (def: number, min = 1) => z.coerce.number().int().min(min).default(def);

/** A bench setting: a comma-separated list of `values` ("none" or empty: none), `def` when unset. */
export const list = <T extends string>(values: readonly [T, ...T[]], def: string) =>
  z
    .string()
    .default(def)
    .transform((s) =>
      s
        .split(',')
        .map((x) => x.trim())
        .filter((x) => x && x !== 'none'),
    )
    .pipe(z.array(z.enum(values)));

const notedOnce = new Set<string>();

/**
 * Writes every dirty Postgres buffer out before a measured phase, so the phase does not pay for the
 * writes of the one before: after the flash-sale bench's one-INSERT baseline (20,000 rows) the
 * checkpointer flushed during the next sale and billed it 0.12-0.28 ms of Postgres CPU per shopper,
 * against 0.014-0.016 with a checkpoint first. Needs a superuser or pg_checkpoint; a reused stack's
 * database role may have neither, which is noted once.
 */
export async function checkpoint(pg: PgClient): Promise<void> {
  await pg.query('CHECKPOINT').catch((e: Error) => {
    const line = `no CHECKPOINT before each measured phase (${e.message})`;
    if (!notedOnce.has(line)) note(line);
    notedOnce.add(line);
  });
}
