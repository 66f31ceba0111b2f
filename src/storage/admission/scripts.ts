// Loads the admission Lua scripts once per connection (EVALSHA, falling back to EVAL after a Redis restart).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Redis } from 'ioredis';

const SCRIPTS = {
  admitCoupons: { file: 'admit.lua', keys: 5 },
  releaseCoupon: { file: 'release.lua', keys: 4 },
  settleCoupon: { file: 'settle.lua', keys: 4 },
  setPolicyMeta: { file: 'set-meta.lua', keys: 1 },
  freeEndedPolicy: { file: 'free-ended.lua', keys: 4 },
} as const;

export interface AdmissionCommands {
  /** admit.lua: [validUntil, validDays, total, then status, slot, resumed, admitted per request]. */
  admitCoupons(
    meta: string,
    stock: string,
    free: string,
    users: string,
    pending: string,
    methods: string,
    waitWhenPending: '0' | '1',
    ...requestAndUser: string[]
  ): Promise<(string | number)[]>;
  releaseCoupon(stock: string, free: string, users: string, pending: string, requestId: string, returnSlot: '0' | '1'): Promise<number>;
  settleCoupon(stock: string, free: string, users: string, pending: string, requestId: string, couponSlot: string): Promise<number>;
  setPolicyMeta(meta: string, version: string, ttlMs: string, ...fields: string[]): Promise<number>;
  freeEndedPolicy(stock: string, free: string, users: string, pending: string): Promise<number>;
}

export type AdmissionRedis = Redis & AdmissionCommands;

const loaded = new WeakSet<Redis>();

export function withAdmissionScripts(redis: Redis): AdmissionRedis {
  if (!loaded.has(redis)) {
    for (const [name, { file, keys }] of Object.entries(SCRIPTS)) {
      redis.defineCommand(name, { numberOfKeys: keys, lua: readFileSync(join(__dirname, 'lua', file), 'utf8') });
    }
    loaded.add(redis);
  }
  return redis as AdmissionRedis;
}
