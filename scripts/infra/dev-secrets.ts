// The development secrets a bare `npm start` makes up once and keeps (src/core/config.ts refuses to
// run without JWT_SECRET and CODE_HMAC_SECRET), so that `npm run token` and the benches sign tokens
// the running stack accepts.
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { repoRoot } from './process';

export const DEV_SECRETS = path.join(repoRoot(), '.data', 'dev-secrets.env');

/** `name` from the environment, else the one `npm start` keeps in .data/dev-secrets.env. */
export function devSecret(name: 'JWT_SECRET' | 'CODE_HMAC_SECRET', fromEnv: string | undefined = process.env[name]): string | undefined {
  if (fromEnv) return fromEnv;
  if (!existsSync(DEV_SECRETS)) return undefined;
  return new RegExp(`^${name}=(.+)$`, 'm').exec(readFileSync(DEV_SECRETS, 'utf8'))?.[1]?.trim();
}
