// The flash-sale bench's report: a table of every sale (per run and the medians of the runs), the
// bar (PASS, or MISS: a missed performance bar is reported, not fatal), and the invariants (PASS or
// FAIL: a FAIL line fails the bench).
import { fmtInt, fmtMs, median, round } from './common';
import type { CpuGroup } from './cpu';
import type { SaleResult } from './sale';

export const BAR = { outcomesPerSec: 6_000, stretchOutcomesPerSec: 10_000, p99Ms: 200 };
/** The bar is judged on this way of asking. */
export const BAR_MODE = 'wait';

export interface RunSales {
  run: number;
  /** By sale name: `wait`, `poll`, `baseline` (one Lua admission), `hello`, `insert`. */
  sales: Record<string, SaleResult>;
}

const CPU_GROUPS: (CpuGroup | 'other')[] = ['web', 'worker', 'bridge', 'postgres', 'redis', 'kafka', 'baseline', 'bench', 'other'];

export interface Medians {
  outcomesPerSec: number | null;
  p50: number | null;
  p95: number | null;
  p99: number | null;
  firstAnswersPerSec: number | null;
  requestsPerUser: number | null;
  cpuMsPerShopper: Record<string, number | null>;
  redisBytesPerAccepted: number | null;
  /** Our outcomes/s over the baseline's of the same run. */
  ofBaseline: number | null;
}

/** The medians of one sale name over the runs. */
export function mediansOf(runs: RunSales[], name: string): Medians | null {
  const sales = runs.map((r) => r.sales[name]).filter((s): s is SaleResult => s !== undefined);
  if (sales.length === 0) return null;
  const m = (pick: (s: SaleResult) => number | null) => median(sales.map(pick));
  return {
    outcomesPerSec: m((s) => s.figures.outcomesPerSec),
    p50: m((s) => s.figures.toOutcomeMs.p50),
    p95: m((s) => s.figures.toOutcomeMs.p95),
    p99: m((s) => s.figures.toOutcomeMs.p99),
    firstAnswersPerSec: m((s) => s.figures.firstAnswersPerSec),
    requestsPerUser: m((s) => s.figures.requestsPerUser),
    cpuMsPerShopper: Object.fromEntries(CPU_GROUPS.map((g) => [g, m((s) => s.cpuMsPerShopper[g])])),
    redisBytesPerAccepted: m((s) => s.redisBytesPerAccepted),
    ofBaseline: median(runs.map((r) => ratio(r.sales[name], r.sales.baseline))),
  };
}

function ratio(ours: SaleResult | undefined, base: SaleResult | undefined): number | null {
  if (!ours || !base || base.figures.outcomesPerSec <= 0) return null;
  return round(ours.figures.outcomesPerSec / base.figures.outcomesPerSec, 2);
}

const pad = (s: string, n: number) => s.padEnd(n);
const lpad = (s: string, n: number) => s.padStart(n);
const ms = (v: number | null) => (v === null ? 'n/a' : v >= 1000 ? `${round(v / 1000, 2)} s` : `${round(v, 1)}`);

export const TABLE_HEADER = `${pad('run', 5)}${pad('sale', 9)}${lpad('outcomes/s', 11)}${lpad('p50 ms', 9)}${lpad('p95 ms', 9)}${lpad('p99 ms', 9)}${lpad('first/s', 9)}${lpad('req/user', 9)}${lpad('x base', 8)}   outcomes; cpu ms per shopper`;

function cpuText(cpu: Record<string, number | null>): string {
  return CPU_GROUPS.filter((g) => (cpu[g] ?? 0) > 0)
    .map((g) => `${g} ${cpu[g]}`)
    .join(', ');
}

function outcomesText(s: SaleResult): string {
  const c = s.figures.counts;
  const others = Object.entries(c.otherReasons).map(([k, n]) => `${k} ${fmtInt(n)}`);
  const refused = c.refused['429'] + c.refused['503'] + c.refused['5xx'] + c.refused.other;
  return [
    `won ${fmtInt(c.won)}`,
    `SOLD_OUT ${fmtInt(c.soldOut)}`,
    ...others,
    ...(c.failed ? [`failed ${fmtInt(c.failed)}`] : []),
    ...(refused
      ? [`refused ${fmtInt(refused)} (429 ${c.refused['429']}, 503 ${c.refused['503']}, 5xx ${c.refused['5xx']}, other ${c.refused.other})`]
      : []),
  ].join(', ');
}

/** One row of the table: a sale of one run. */
export function saleRow(run: number | string, name: string, s: SaleResult, base?: SaleResult): string {
  const f = s.figures;
  const x = ratio(s, base);
  const redis = s.redisBytesPerAccepted === null ? '' : `; redis ${fmtInt(s.redisBytesPerAccepted)} B/request`;
  return `${pad(String(run), 5)}${pad(name, 9)}${lpad(fmtInt(f.outcomesPerSec), 11)}${lpad(ms(f.toOutcomeMs.p50), 9)}${lpad(ms(f.toOutcomeMs.p95), 9)}${lpad(ms(f.toOutcomeMs.p99), 9)}${lpad(fmtInt(f.firstAnswersPerSec), 9)}${lpad(String(f.requestsPerUser), 9)}${lpad(x === null || name === 'baseline' ? '' : String(x), 8)}   ${outcomesText(s)}; ${cpuText(s.cpuMsPerShopper)}${redis}${s.held ? '' : '  [CHECKS FAILED]'}`;
}

/** The row of the medians of one sale name. */
export function medianRow(name: string, m: Medians): string {
  const v = (n: number | null) => (n === null ? 'n/a' : fmtInt(n));
  return `${pad('med', 5)}${pad(name, 9)}${lpad(v(m.outcomesPerSec), 11)}${lpad(ms(m.p50), 9)}${lpad(ms(m.p95), 9)}${lpad(ms(m.p99), 9)}${lpad(v(m.firstAnswersPerSec), 9)}${lpad(String(m.requestsPerUser ?? 'n/a'), 9)}${lpad(m.ofBaseline === null || name === 'baseline' ? '' : String(m.ofBaseline), 8)}   ${cpuText(m.cpuMsPerShopper)}${m.redisBytesPerAccepted === null ? '' : `; redis ${fmtInt(m.redisBytesPerAccepted)} B/request`}`;
}

export interface BarLine {
  name: string;
  ok: boolean;
  shown: string;
  target: string;
}

/** The bar, judged on the medians of the `Prefer: wait` sales. */
export function barLines(m: Medians | null): BarLine[] {
  const rate = m?.outcomesPerSec ?? null;
  return [
    {
      name: 'shoppers knowing their outcome /s',
      ok: (rate ?? 0) >= BAR.outcomesPerSec,
      shown: rate === null ? 'n/a' : fmtInt(rate),
      target: `>= ${fmtInt(BAR.outcomesPerSec)} (stretch ${fmtInt(BAR.stretchOutcomesPerSec)}: ${(rate ?? 0) >= BAR.stretchOutcomesPerSec ? 'met' : 'not met'})`,
    },
    {
      name: 'p99 request -> outcome',
      ok: m?.p99 !== null && m?.p99 !== undefined && m.p99 < BAR.p99Ms,
      shown: fmtMs(m?.p99 ?? null),
      target: `< ${BAR.p99Ms} ms`,
    },
  ];
}

/** PASS/FAIL lines of every failed check of the sales (warm-up included), and one PASS line when all held. */
export function invariantLines(all: { label: string; sale: SaleResult; gate: boolean }[]): { lines: string[]; held: boolean } {
  const lines: string[] = [];
  let held = true;
  for (const { label, sale, gate } of all) {
    for (const c of sale.checks.filter((x) => !x.ok)) {
      if (gate) held = false;
      lines.push(`  ${gate ? 'FAIL' : 'WARN'}  ${label}: ${c.name}: ${c.detail}`);
    }
  }
  const gated = all.filter((a) => a.gate);
  if (held)
    lines.unshift(
      `  PASS  invariants held in all ${gated.length} sales (warm-up included), ${gated[0]?.sale.checks.length ?? 0} checks each`,
    );
  return { lines, held };
}
