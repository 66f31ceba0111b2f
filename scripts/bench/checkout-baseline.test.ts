import { bareLines, bareSummary, checkoutServiceCpuMs, cpuRatio, type BareResult } from './checkout-baseline';

const bare = (route: BareResult['route'], serviceCpuMs: number, p95: number): BareResult => ({
  route,
  rate: 500,
  requests: 5_000,
  failed: 0,
  latencyMs: { p50: 2, p95, p99: p95 * 2 },
  cpuMsPerRequest: { baseline: serviceCpuMs / 2, postgres: serviceCpuMs / 2, bench: 0.3 },
  serviceCpuMs,
  machineBusyPct: 40,
});

describe('the checkout bench baseline figures', () => {
  it("bills a checkout the service's processes, not the bench or the rest of the machine", () => {
    const perCheckout = { bench: 1, web: 0.8, worker: 0.7, bridge: 0.3, postgres: 0.7, redis: 0.6, kafka: 0.2, other: 0.4 };
    expect(checkoutServiceCpuMs(perCheckout)).toBeCloseTo(3.3, 6);
    expect(checkoutServiceCpuMs({ ...perCheckout, worker: null })).toBeNull();
  });

  it('gives the ratio only when both sides are known', () => {
    expect(cpuRatio(3.3, bare('insert', 0.5, 8))).toBe(6.6);
    expect(cpuRatio(null, bare('insert', 0.5, 8))).toBeNull();
    expect(cpuRatio(3.3, bare('insert', 0, 8))).toBeNull();
  });

  it('prints each route with its ratio, and the medians over the runs', () => {
    const lines = bareLines(3, [bare('insert', 0.5, 8), bare('admit', 0.25, 3)]);
    expect(lines.join('\n')).toMatch(
      /one Postgres INSERT at 500\/s: p50 2 ms \/ p95 8 ms[\s\S]*= 6 × this request's \(0.5 ms: baseline \+ postgres\)/,
    );
    expect(lines.join('\n')).toMatch(/= 12 × this request's \(0.25 ms: baseline \+ redis\)/);
    const summary = bareSummary([
      { checkoutMs: 3, bare: [bare('insert', 0.5, 8)] },
      { checkoutMs: 4, bare: [bare('insert', 0.5, 10)] },
      { checkoutMs: null, bare: [bare('insert', 1, 12)] },
    ]);
    expect(summary).toHaveLength(1);
    expect(summary[0]).toMatch(/service CPU 0.5 ms a request, p95 10 ms; a checkout = 7 × its CPU \(runs: 6 · 8 · n\/a\)/);
  });
});
