import { MAX_INSTANCES, parseStartArgs, planInstances, portEnv, UsageError, type BasePorts } from './formation';

const PROCFILE: [string, string][] = [
  ['web', 'exec node dist/src/web/main.js'],
  ['worker', 'exec node dist/src/worker/main.js'],
  ['bridge', 'exec node dist/src/bridge/main.js'],
];
const PORTS: BasePorts = { web: 3000, worker: 9464, bridge: 9465 };

describe('start arguments', () => {
  it('reads TYPE=N words, comma lists and foreman-style -m / --formation', () => {
    expect(parseStartArgs([]).formation).toEqual({});
    expect(parseStartArgs(['worker=3']).formation).toEqual({ worker: 3 });
    expect(parseStartArgs(['worker=3', 'web=2,bridge=0']).formation).toEqual({ worker: 3, web: 2, bridge: 0 });
    expect(parseStartArgs(['-m', 'web=2,worker=4']).formation).toEqual({ web: 2, worker: 4 });
    expect(parseStartArgs(['--formation=worker=2']).formation).toEqual({ worker: 2 });
  });

  it('reads -f PROCFILE and --help', () => {
    expect(parseStartArgs(['-f', 'Procfile.dev', 'worker=2'])).toEqual({ formation: { worker: 2 }, procfile: 'Procfile.dev', help: false });
    expect(parseStartArgs(['--procfile=other']).procfile).toBe('other');
    expect(parseStartArgs(['-h']).help).toBe(true);
  });

  it('refuses what it cannot mean, with the reason', () => {
    const refusal = (argv: string[]) => {
      try {
        parseStartArgs(argv);
      } catch (error) {
        expect(error).toBeInstanceOf(UsageError);
        return (error as Error).message;
      }
      throw new Error(`${argv.join(' ')} was accepted`);
    };
    expect(refusal(['worker'])).toContain('not TYPE=N');
    expect(refusal(['worker=-1'])).toContain('not TYPE=N');
    expect(refusal(['worker=two'])).toContain('not TYPE=N');
    expect(refusal([`worker=${MAX_INSTANCES + 1}`])).toContain(`at most ${MAX_INSTANCES}`);
    expect(refusal(['worker=2', 'worker=3'])).toContain('given twice');
    expect(refusal(['-m'])).toContain('needs a value');
    expect(refusal(['--workers', '3'])).toContain('unknown option');
  });
});

describe('the instances of a formation', () => {
  it('runs every Procfile type once by default, named type.N, in Procfile order', () => {
    const plan = planInstances(PROCFILE, {}, PORTS);
    expect(plan.map((i) => i.name)).toEqual(['web.1', 'worker.1', 'bridge.1']);
    expect(plan.map((i) => i.env)).toEqual([{ PORT: '3000' }, { WORKER_OPS_PORT: '9464' }, { BRIDGE_OPS_PORT: '9465' }]);
    expect(plan[0]?.listens).toBe('API on http://localhost:3000');
    expect(plan[1]?.listens).toBe('ops (/metrics, /health) on http://localhost:9464');
  });

  it('gives each instance ports of its own, and no two instances of any type the same', () => {
    const plan = planInstances(PROCFILE, { web: 2, worker: 3, bridge: 2 }, { ...PORTS, webOps: 9466 });
    expect(plan.map((i) => i.name)).toEqual(['web.1', 'web.2', 'worker.1', 'worker.2', 'worker.3', 'bridge.1', 'bridge.2']);
    expect(plan.filter((i) => i.type === 'web').map((i) => i.env)).toEqual([
      { PORT: '3000', OPS_PORT: '9466' },
      { PORT: '3001', OPS_PORT: '9467' },
    ]);
    expect(plan.filter((i) => i.type === 'worker').map((i) => i.env.WORKER_OPS_PORT)).toEqual(['9464', '9474', '9484']);
    expect(plan.filter((i) => i.type === 'bridge').map((i) => i.env.BRIDGE_OPS_PORT)).toEqual(['9465', '9475']);
    expect(plan.map((i) => i.command)).toEqual([0, 0, 1, 1, 1, 2, 2].map((n) => PROCFILE[n]?.[1]));
  });

  it('keeps worker and bridge ports apart at the largest formation', () => {
    const plan = planInstances(
      PROCFILE,
      { web: MAX_INSTANCES, worker: MAX_INSTANCES, bridge: MAX_INSTANCES },
      { web: 3000, webOps: 9700, worker: 9464, bridge: 9465 },
    );
    const ports = plan.flatMap((i) => Object.values(i.env));
    expect(new Set(ports).size).toBe(ports.length);
  });

  it('leaves a base of 0 (any free port) at 0 for every instance', () => {
    expect([1, 2, 3].map((n) => portEnv('worker', n, { ...PORTS, worker: 0 }))).toEqual(Array(3).fill({ WORKER_OPS_PORT: '0' }));
    expect(planInstances(PROCFILE, { worker: 1 }, { ...PORTS, worker: 0 })[1]?.listens).toContain('a free port');
  });

  it('runs none of a type set to 0, and gives other Procfile types no ports', () => {
    const plan = planInstances([...PROCFILE, ['clock', 'exec node clock.js']], { bridge: 0, web: 0 }, PORTS);
    expect(plan.map((i) => i.name)).toEqual(['worker.1', 'clock.1']);
    expect(plan[1]?.env).toEqual({});
  });

  it('refuses a type the Procfile does not have, and a formation of nothing', () => {
    expect(() => planInstances(PROCFILE, { wroker: 2 }, PORTS)).toThrow(
      /no process type wroker in the Procfile \(it has web, worker, bridge\)/,
    );
    expect(() => planInstances(PROCFILE, { web: 0, worker: 0, bridge: 0 }, PORTS)).toThrow(/no process at all/);
  });
});
