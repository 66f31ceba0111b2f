import { coalescePerTurn, isolatingFailures, mapLimit } from './concurrency';

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
