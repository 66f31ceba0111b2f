// Lua scripts as named ioredis commands, defined once per connection: each call then goes as
// EVALSHA, and ioredis falls back to EVAL by itself after a Redis restart forgot the script.
import type { Redis } from 'ioredis';

export interface ScriptDef {
  /** How many of the call's arguments are keys (they come first). */
  keys: number;
  lua: string;
}

/** A function that returns the connection with `scripts` defined on it (once per connection). */
export function scriptCommands<C>(scripts: Record<string, ScriptDef>): (redis: Redis) => Redis & C {
  const loaded = new WeakSet<Redis>();
  return (redis) => {
    if (!loaded.has(redis)) {
      for (const [name, { keys, lua }] of Object.entries(scripts)) redis.defineCommand(name, { numberOfKeys: keys, lua });
      loaded.add(redis);
    }
    return redis as Redis & C;
  };
}
