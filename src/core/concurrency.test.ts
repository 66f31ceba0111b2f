import { coalescePerTurn, isolatingFailures, mapLimit, singleFlight, writePerTurn, writesBehind } from './concurrency';

describe('coalescePerTurn', () => {
  it('hands the calls of one turn to one batch, in order, each with its own result', async () => {
    const batches: number[][] = [];
    const double = coalescePerTurn(async (items: number[]) => {
      batches.push(items);
      return items.map((n) => (n < 0 ? new Error(`negative ${n}`) : n * 2));
    });
    const results = await Promise.allSettled([double(1), double(-2), double(3)]);
    expect(batches).toEqual([[1, -2, 3]]);
    expect(results.map((r) => (r.status === 'fulfilled' ? r.value : (r.reason as Error).message))).toEqual([2, 'negative -2', 6]);
  });
});

describe('isolatingFailures', () => {
  it('retries each item alone when the batch throws, so only the bad one fails', async () => {
    const calls: string[][] = [];
    const run = isolatingFailures(async (items: string[]) => {
      calls.push(items);
      if (items.includes('bad')) throw new Error('the whole statement failed');
      return items.map((s) => s.toUpperCase());
    });
    const results = await run(['a', 'bad', 'c']);
    expect(results.slice(0, 1)).toEqual(['A']);
    expect((results[1] as Error).message).toBe('the whole statement failed');
    expect(results[2]).toBe('C');
    expect(calls).toEqual([['a', 'bad', 'c'], ['a'], ['bad'], ['c']]);
  });

  it('lets a single item fail as it is', async () => {
    const run = isolatingFailures(async () => {
      throw new Error('down');
    });
    await expect(run(['x'])).rejects.toThrow('down');
  });
});

describe('mapLimit', () => {
  it('keeps the order and never runs more than the limit at once', async () => {
    let running = 0;
    let peak = 0;
    const out = await mapLimit([5, 1, 4, 2, 3], 2, async (n) => {
      running += 1;
      peak = Math.max(peak, running);
      await new Promise((r) => setTimeout(r, n));
      running -= 1;
      return n * 10;
    });
    expect(out).toEqual([50, 10, 40, 20, 30]);
    expect(peak).toBe(2);
  });
});

describe('singleFlight', () => {
  /** Loads that settle when told to: resolve/reject settle the latest run, `run(i)` any earlier one. */
  const controlled = () => {
    const runs: { resolve: (v: string) => void; reject: (e: Error) => void }[] = [];
    const load = () => new Promise<string>((resolve, reject) => runs.push({ resolve, reject }));
    const latest = () => runs[runs.length - 1] as (typeof runs)[number];
    return {
      load,
      runs: () => runs.length,
      run: (i: number) => runs[i] as (typeof runs)[number],
      resolve: (v: string) => latest().resolve(v),
      reject: (e: Error) => latest().reject(e),
    };
  };

  it('gives concurrent callers of one key one load, other keys their own, and loads again once it settled', async () => {
    const flights = singleFlight<string, string>();
    const a = controlled();
    const b = controlled();
    const first = [flights.run('a', a.load), flights.run('a', a.load), flights.run('a', a.load)];
    const other = flights.run('b', b.load);
    expect([a.runs(), b.runs()]).toEqual([1, 1]);
    a.resolve('A1');
    b.resolve('B1');
    expect(await Promise.all(first)).toEqual(['A1', 'A1', 'A1']);
    expect(await other).toBe('B1');
    // Nothing is kept: the next call loads afresh.
    const later = flights.run('a', a.load);
    expect(a.runs()).toBe(2);
    a.resolve('A2');
    expect(await later).toBe('A2');
  });

  it('shares a failure with every caller of the load, and does not keep it', async () => {
    const flights = singleFlight<string, string>();
    const a = controlled();
    const calls = [flights.run('a', a.load), flights.run('a', a.load)];
    a.reject(new Error('down'));
    const results = await Promise.allSettled(calls);
    expect(results.map((r) => (r.status === 'rejected' ? (r.reason as Error).message : r.value))).toEqual(['down', 'down']);
    expect(a.runs()).toBe(1);
    const retry = flights.run('a', a.load);
    expect(a.runs()).toBe(2);
    a.resolve('back');
    expect(await retry).toBe('back');
  });

  it('starts a new load after forget, while the callers of the old one still get its result', async () => {
    const flights = singleFlight<string, string>();
    const a = controlled();
    const old = flights.run('a', a.load);
    flights.forget('a');
    const fresh = flights.run('a', a.load);
    expect(a.runs()).toBe(2);
    a.run(0).resolve('old');
    expect(await old).toBe('old');
    // The old load settling does not drop the fresh one: a caller now joins it.
    const joined = flights.run('a', a.load);
    expect(a.runs()).toBe(2);
    a.run(1).resolve('fresh');
    expect(await Promise.all([fresh, joined])).toEqual(['fresh', 'fresh']);
  });
});

describe('writesBehind', () => {
  it('waits for every write handed in so far, and for later ones on a later flush', async () => {
    const writes = writesBehind();
    const landed: string[] = [];
    const write = (name: string, ms: number) => new Promise<void>((done) => setTimeout(() => (landed.push(name), done()), ms));
    writes.add(write('a', 30));
    writes.add(write('b', 10));
    await writes.flushed();
    expect(landed.sort()).toEqual(['a', 'b']);
    writes.add(write('c', 10));
    await writes.flushed();
    expect(landed).toContain('c');
  });
});

describe('writePerTurn', () => {
  it('writes the calls of one turn at once; each hears whether the write landed', async () => {
    const writes: number[][] = [];
    const write = writePerTurn(async (items: number[]) => {
      writes.push(items);
      if (items.includes(13)) throw new Error('refused');
    });
    await expect(Promise.all([write(1), write(2)])).resolves.toEqual([undefined, undefined]);
    expect((await Promise.allSettled([write(3), write(13)])).map((r) => r.status)).toEqual(['rejected', 'rejected']);
    expect(writes).toEqual([
      [1, 2],
      [3, 13],
    ]);
  });

  it('with isolate, a failed write is tried call by call and only the call that fails alone fails', async () => {
    const writes: number[][] = [];
    const write = writePerTurn(
      async (items: number[]) => {
        writes.push(items);
        if (items.includes(13)) throw new Error('refused');
      },
      { isolate: true },
    );
    expect((await Promise.allSettled([write(3), write(13)])).map((r) => r.status)).toEqual(['fulfilled', 'rejected']);
    expect(writes).toEqual([[3, 13], [3], [13]]);
  });
});
