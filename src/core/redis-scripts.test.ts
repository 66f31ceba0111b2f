// Lua commands on a real Redis, over a connection with auto-pipelining as the service opens them.
import IORedis from 'ioredis';
import { scriptCommands } from './redis-scripts';

describe('scriptCommands', () => {
  let redis: IORedis;
  beforeAll(async () => {
    redis = new IORedis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379', { enableAutoPipelining: true, maxRetriesPerRequest: 1 });
    await redis.ping();
  });
  afterAll(() => redis.disconnect());

  it('runs the first calls of two groups made in the same tick (one auto-pipeline)', async () => {
    const first = scriptCommands<{ scriptTestFirst(key: string): Promise<number> }>({ scriptTestFirst: { keys: 1, lua: 'return 1' } });
    const second = scriptCommands<{ scriptTestSecond(key: string, n: string): Promise<number> }>({
      scriptTestSecond: { keys: 1, lua: 'return tonumber(ARGV[1]) * 2' },
    });
    // Defined one group at a time, the second call was missing from the tick's pipeline and failed.
    await expect(Promise.all([first(redis).scriptTestFirst('k1'), second(redis).scriptTestSecond('k2', '21')])).resolves.toEqual([1, 42]);
  });

  it('refuses two different scripts under one name', () => {
    scriptCommands({ scriptTestSame: { keys: 0, lua: 'return 1' } });
    expect(() => scriptCommands({ scriptTestSame: { keys: 0, lua: 'return 2' } })).toThrow(
      'two different Lua scripts are named scriptTestSame',
    );
  });
});
