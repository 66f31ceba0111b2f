// `npm run token -- <userId> [user|admin] [ttlSeconds]`: prints a bearer token signed with JWT_SECRET
// (its first key when it lists several),
// for trying the API by hand.
import { createSecretKey } from 'node:crypto';
import { SignJWT } from 'jose';
import { signingJwtSecret } from '../src/core/config';

const [sub, role = 'user', ttl = '3600'] = process.argv.slice(2);
if (!sub || (role !== 'user' && role !== 'admin') || !/^\d+$/.test(ttl)) {
  process.stderr.write('usage: npm run token -- <userId> [user|admin] [ttlSeconds]\n');
  process.exit(64);
}
new SignJWT({ role })
  .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
  .setSubject(sub)
  .setIssuedAt()
  .setExpirationTime(Math.floor(Date.now() / 1000) + Number(ttl))
  .sign(createSecretKey(Buffer.from(signingJwtSecret(), 'utf8')))
  .then((token) => {
    process.stdout.write(`${token}\n`);
  });
