// The admission Lua scripts (lua/, one file each) as commands of a connection (src/core/redis-scripts.ts).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Redis } from 'ioredis';
import { scriptCommands } from '../../core/redis-scripts';

const script = (file: string, keys: number) => ({ keys, lua: readFileSync(join(__dirname, 'lua', file), 'utf8') });

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

export const withAdmissionScripts = scriptCommands<AdmissionCommands>({
  admitCoupons: script('admit.lua', 5),
  releaseCoupon: script('release.lua', 4),
  settleCoupon: script('settle.lua', 4),
  setPolicyMeta: script('set-meta.lua', 1),
  freeEndedPolicy: script('free-ended.lua', 4),
});
