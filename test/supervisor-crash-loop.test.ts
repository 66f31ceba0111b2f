// `npm start` gives up on a process that cannot stay up: restarted with a growing delay, then, on the
// sixth crash within a minute, the runner stops everything else and exits non-zero with the reason.
// A process that exits 0 without being asked to counts as a crash too.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { groupAlive } from '../scripts/infra/process';
import { uniqueId } from './support/fixtures';
import { startRunner, type Runner } from './support/runner';

let runner: Runner | undefined;
let dir: string;

afterAll(async () => {
  await runner?.kill();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('npm start with a process that always dies', () => {
  it('restarts it with backoff, then gives up: stops the rest and exits 1', async () => {
    dir = mkdtempSync(join(tmpdir(), 'procfile-'));
    const procfile = join(dir, 'Procfile');
    writeFileSync(procfile, ['crasher: echo "failing on purpose" >&2; exit 3', 'quitter: exit 0', 'steady: exec sleep 300', ''].join('\n'));
    const prefix = uniqueId('q');
    runner = startRunner('supervisor-crash-loop', ['-f', procfile], {
      QUEUE_PREFIX: prefix,
      KAFKA_PAYMENTS_TOPIC: `payments.v1.${prefix}`,
      KAFKA_USER_EVENTS_TOPIC: `user-events.v1.${prefix}`,
    });
    const code = await runner.exited;
    const own = runner.ownLines();
    expect(code).toBe(1);

    // Each crash of the loop was restarted once, with the delay doubling from 0.5 s.
    const restarts = own.filter((line) => line.startsWith('warning: start: crasher.1 exited unexpectedly'));
    expect(restarts.length).toBeGreaterThanOrEqual(5);
    expect(
      restarts
        .slice(0, 5)
        .map((line) => /\(exit code 3, .*\); restart (\d+) \(attempt (\d+) in a row\) in ([\d.]+) s$/.exec(line)?.slice(1)),
    ).toEqual([
      ['1', '1', '0.5'],
      ['2', '2', '1.0'],
      ['3', '3', '2.0'],
      ['4', '4', '4.0'],
      ['5', '5', '8.0'],
    ]);
    expect(runner.lines()).toContain('crasher.1 | failing on purpose');
    // Exit code 0 without a stop asked for is a crash as well.
    expect(own.some((line) => line.startsWith('warning: start: quitter.1 exited unexpectedly (exit code 0'))).toBe(true);

    // The first process to crash a sixth time within 60 s ends the run, which stops the rest.
    const reason = /^warning: start: (crasher|quitter)\.1 crashed 6 times within 60 s \(more than 5\); giving up; stopping everything$/;
    expect(own.filter((line) => reason.test(line))).toHaveLength(1);
    expect(own).toContain('start: stopping steady.1...');
    expect(own).toContain('start: steady.1 stopped (signal SIGTERM)');
    expect(own).toContainEqual(expect.stringMatching(/^start: restarts per process: crasher\.1 [4-5], quitter\.1 [4-5], steady\.1 0$/));
    expect(own.at(-1)).toMatch(
      /^start: stopped because (crasher|quitter)\.1 crashed 6 times within 60 s \(more than 5\); giving up \(exit code 1\)$/,
    );
    expect(runner.pidsOf('steady.1')).toHaveLength(1);
    expect(runner.pidsOf('steady.1').filter((pid) => groupAlive(pid))).toEqual([]);
  }, 90_000);
});
