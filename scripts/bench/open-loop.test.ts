import { openLoop } from './open-loop';

describe('the open loop', () => {
  it('starts every item once, on schedule, without waiting for the earlier ones', async () => {
    const startedAt: number[] = [];
    const finish: (() => void)[] = [];
    const t0 = performance.now();
    const loop = openLoop(30, 300, (i) => {
      startedAt[i] = performance.now() - t0;
      // No item finishes before the last one started: a closed loop would stall at the first.
      return new Promise<void>((resolve) => finish.push(resolve));
    });
    while (finish.length < 30) await new Promise((r) => setTimeout(r, 5));
    for (const f of finish) f();
    const result = await loop;
    expect(result.started).toBe(30);
    expect(result.maxInFlight).toBe(30);
    expect(startedAt.filter((t) => t !== undefined)).toHaveLength(30);
    // Item i is due at i / 300 s: the 30th at about 97 ms, not at once.
    expect(startedAt[29]).toBeGreaterThanOrEqual(90);
    expect(result.loadEnd - result.loadStart).toBeGreaterThanOrEqual(90);
  });
});
