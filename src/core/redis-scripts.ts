// Lua scripts as named ioredis commands: each call goes as EVALSHA, and ioredis falls back to EVAL by
// itself after a Redis restart forgot the script.
//
// Every group of scripts registers here when its module loads, and the first call of any group on a
// connection defines every registered script on it at once. Defining each group on its own first use
// crashed a worker at start: on a connection with auto-pipelining, a command defined after the
// pipeline of the current tick was opened is missing from that pipeline ("pipeline[functionName] is
// not a function"), so the first calls of two groups in one tick failed, and ioredis then threw out of
// the reply handler (uncaught). Defining them all before the first call leaves no such window.
import type { Redis } from 'ioredis';

export interface ScriptDef {
  /** How many of the call's arguments are keys (they come first). */
  keys: number;
  lua: string;
}

/** Every script of the process, by command name. */
const registered = new Map<string, ScriptDef>();
/** How many of the registered scripts each connection has defined. */
const definedOn = new WeakMap<Redis, number>();

/** A function that returns the connection with `scripts` (and every other registered group) defined on it. */
export function scriptCommands<C>(scripts: Record<string, ScriptDef>): (redis: Redis) => Redis & C {
  for (const [name, def] of Object.entries(scripts)) {
    const known = registered.get(name);
    if (known && (known.lua !== def.lua || known.keys !== def.keys)) throw new Error(`two different Lua scripts are named ${name}`);
    registered.set(name, def);
  }
  return (redis) => {
    if ((definedOn.get(redis) ?? 0) < registered.size) {
      for (const [name, { keys, lua }] of registered) redis.defineCommand(name, { numberOfKeys: keys, lua });
      definedOn.set(redis, registered.size);
    }
    return redis as Redis & C;
  };
}
