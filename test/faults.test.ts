// A bounded subset of the fault suite (`npm run faults` runs all of it): the service as `npm start`
// runs it, two faults that each strike while work is in flight, and the one checker over every answer
// and the final database. Zero violations of every invariant, and each fault must have hit something.
import { FAULTS } from './faults/faults';
import { passed, runSuite, table } from './faults/run';

const subset = ['kill-worker', 'redis-empty-payments'];

describe('the fault suite, a bounded subset', () => {
  it(`survives ${subset.join(' and ')} with no violation, each striking work in flight`, async () => {
    const faults = FAULTS.filter((f) => subset.includes(f.name));
    expect(faults.map((f) => f.name)).toEqual(subset);
    const lines: string[] = [];
    const rows = await runSuite({ faults, shoppers: 500, stock: 150, schedule: 0, seed: 1, log: (line) => lines.push(line) });
    const report = table(rows);
    // What happened, strike by strike (and any process that died on its own), for a failing run.
    if (!rows.every(passed)) console.log(`${report}\n\n${lines.join('\n')}`);
    for (const row of rows) {
      expect({ name: row.name, error: row.error }).toEqual({ name: row.name, error: undefined });
      const result = row.result!;
      expect({ name: row.name, violations: result.check.violations, examples: result.check.examples }).toEqual({
        name: row.name,
        violations: Object.fromEntries(Object.keys(result.check.violations).map((k) => [k, 0])),
        examples: {},
      });
      // Every event applied and every inbox row gone before the clients' deadline.
      expect({ name: row.name, unsettled: result.unsettled }).toEqual({ name: row.name, unsettled: null });
      for (const strike of result.strikes)
        expect({ fault: strike.fault, hit: strike.hit, inFlight: strike.inFlight }).toMatchObject({ fault: strike.fault, hit: true });
      // The load was real: the stock sold out, the winners checked out, and the payments were applied.
      expect(result.check.counts).toMatchObject({ coupons: 150, won: 150, lost: 350, reserved: 150 });
      expect(result.check.counts.used + result.check.counts.restored).toBe(150);
    }
    expect(report).toContain('kill-worker');
  }, 300_000);
});
