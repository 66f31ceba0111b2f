// `npm run token -- <userId> [user|admin] [ttlSeconds]`: prints a bearer token signed with JWT_SECRET
// (its first key when it lists several), or with the development secret `npm start` keeps in
// .data/dev-secrets.env, for trying the API by hand.
import { createSecretKey } from 'node:crypto';
import { SignJWT } from 'jose';
import { signingJwtSecret } from '../src/core/config';
import { devSecret } from './infra/dev-secrets';

const [sub, role = 'user', ttl = '3600'] = process.argv.slice(2);
if (!sub || (role !== 'user' && role !== 'admin') || !/^\d+$/.test(ttl)) {
  process.stderr.write('usage: npm run token -- <userId> [user|admin] [ttlSeconds]\n');
  process.exit(64);
}
const secret = devSecret('JWT_SECRET');
if (secret) process.env.JWT_SECRET = secret;
new SignJWT({ role })
  .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
  .setSubject(sub)
  .setIssuedAt()
  .setExpirationTime(Math.floor(Date.now() / 1000) + Number(ttl))
  .sign(createSecretKey(Buffer.from(signingJwtSecret(), 'utf8')))
  .then((token) => {
    process.stdout.write(`${token}\n`);
  });
