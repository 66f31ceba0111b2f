import { classifier, groupTicks, type ProcessTicks } from './cpu';

const snap = (entries: [number, ProcessTicks][]) => new Map(entries);

describe('groupTicks', () => {
  it('counts what each process used during the phase, and a new process from zero', () => {
    const before = snap([
      [1, { group: 'web', ppid: 0, ticks: 500 }],
      [2, { group: 'redis', ppid: 0, ticks: 40 }],
    ]);
    const after = snap([
      [1, { group: 'web', ppid: 0, ticks: 530 }],
      [2, { group: 'redis', ppid: 0, ticks: 45 }],
      [3, { group: 'worker', ppid: 0, ticks: 12 }],
    ]);
    expect(groupTicks(before, after)).toMatchObject({ web: 30, redis: 5, worker: 12, postgres: 0 });
  });

  it('bills a child reaped during the phase only for what it used during it', () => {
    // Postgres: the postmaster (10) reaps backend 11, which had used 900 ticks before the phase and
    // 20 during it; the postmaster's children's time then grows by all 920.
    const before = snap([
      [10, { group: 'postgres', ppid: 1, ticks: 100 }],
      [11, { group: 'postgres', ppid: 10, ticks: 900 }],
      [12, { group: 'postgres', ppid: 10, ticks: 50 }],
    ]);
    const after = snap([
      [10, { group: 'postgres', ppid: 1, ticks: 100 + 920 }],
      [12, { group: 'postgres', ppid: 10, ticks: 53 }],
    ]);
    expect(groupTicks(before, after).postgres).toBe(20 + 3);
  });

  it('leaves a vanished process alone when its parent is not measured in its group', () => {
    // A web that exited, its parent the bench: the bench's children's time is the bench's own affair.
    const before = snap([
      [20, { group: 'bench', ppid: 1, ticks: 10 }],
      [21, { group: 'web', ppid: 20, ticks: 300 }],
    ]);
    const after = snap([[20, { group: 'bench', ppid: 1, ticks: 15 }]]);
    expect(groupTicks(before, after)).toMatchObject({ bench: 5, web: 0 });
  });
});

describe('classifier', () => {
  it("groups a reused stack's processes by their command line, as npm start and the dev scripts run them", () => {
    const classify = classifier(null);
    const group = (comm: string, cmd: string) => classify(4242, comm, () => cmd);
    expect(group('node', 'node dist/src/web/main.js')).toBe('web');
    expect(group('node', 'node dist/src/worker/main.js')).toBe('worker');
    expect(group('node', 'node dist/src/bridge/main.js')).toBe('bridge');
    expect(group('node', '/usr/bin/node --import tsx/dist/loader.mjs src/worker/main.ts')).toBe('worker');
    expect(group('node', 'node scripts/bench/baseline-server.ts')).toBeNull();
    expect(group('postgres', 'postgres: coupons idle')).toBe('postgres');
    expect(group('redis-server', 'redis-server 127.0.0.1:6379')).toBe('redis');
  });

  it('groups a spawned stack by pid', () => {
    const classify = classifier({ web: [10], workers: [11, 12], bridge: [13] }, [14]);
    expect([10, 11, 12, 13, 14, 15].map((pid) => classify(pid, 'node', () => 'node dist/src/web/main.js'))).toEqual([
      'web',
      'worker',
      'worker',
      'bridge',
      'baseline',
      null,
    ]);
  });
});
