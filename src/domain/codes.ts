// Coupon codes, the rules: how single-use codes are generated, spelt, hashed and sealed for storage,
// and how a code a user types in is matched (case-insensitively; only its keyed hash is ever stored).
// No I/O: src/storage/codes.ts keeps them in Postgres.
import { createCipheriv, createDecipheriv, createHmac, hkdfSync, randomBytes } from 'node:crypto';
import { z } from 'zod';

/** Digits and capitals without the look-alikes 0/O and 1/I/L: 31 symbols, about 4.95 bits each. */
export const CODE_ALPHABET = '23456789ABCDEFGHJKMNPQRSTUVWXYZ';
export const MAX_CODES_PER_JOB = 100_000;
export const DEFAULT_CODE_LENGTH = 12;
export const MIN_CODE_LENGTH = 8;
export const MAX_CODE_LENGTH = 32;

export const codeRequestSchema = z
  .object({
    count: z.number().int().min(1).max(MAX_CODES_PER_JOB),
    // Random symbols after the prefix: 8 give 31^8 ≈ 8.5e11 codes, enough that guessing one of
    // 100,000 takes millions of tries, which the wrong-code limit never allows.
    length: z.number().int().min(MIN_CODE_LENGTH).max(MAX_CODE_LENGTH).default(DEFAULT_CODE_LENGTH),
    prefix: z
      .string()
      .regex(/^[A-Za-z0-9-]{1,16}$/, '1-16 letters, digits or -')
      .transform((p) => p.toUpperCase())
      .optional(),
  })
  .strict();
export type CodeRequest = z.infer<typeof codeRequestSchema>;

/** What a user may type as a code: shared codes are 4-32 of [A-Za-z0-9_-], generated ones up to 48. */
export const redeemCodeSchema = z.string().trim().min(1).max(64);

/** The one spelling of a code that is stored, hashed and compared: trimmed, in capitals. */
export function normalizeCode(code: string): string {
  return code.trim().toUpperCase();
}

/** The keyed hash stored for a code: HMAC-SHA256 under the deployment's secret, hex. */
export function codeHash(secret: string, code: string): string {
  return createHmac('sha256', secret).update(normalizeCode(code), 'utf8').digest('hex');
}

/**
 * `count` random codes of `length` symbols after `prefix`, from the operating system's CSPRNG.
 * Bytes at or above 248 (= 8 × 31) are skipped, so every symbol is equally likely.
 */
export function generateCodes(count: number, length: number, prefix = ''): string[] {
  const limit = 256 - (256 % CODE_ALPHABET.length);
  const codes: string[] = [];
  let pool = randomBytes(count * length * 2);
  let at = 0;
  for (let i = 0; i < count; i += 1) {
    let code = prefix;
    while (code.length < prefix.length + length) {
      if (at >= pool.length) {
        pool = randomBytes(count * length);
        at = 0;
      }
      const byte = pool[at++] as number;
      if (byte < limit) code += CODE_ALPHABET[byte % CODE_ALPHABET.length];
    }
    codes.push(code);
  }
  return codes;
}

// Sealing: AES-256-GCM under a key derived (HKDF-SHA256) from the deployment's code secret, so the
// codes at rest are unreadable without it and a second secret need not be configured. The batch id
// is the additional data: a sealed blob opens only as the codes of the batch it was sealed for.
const SEAL_VERSION = 1;
const SEAL_INFO = 'coupon-service/generated-codes/v1';
const sealKeys = new Map<string, Buffer>();

function sealKey(secret: string): Buffer {
  let key = sealKeys.get(secret);
  if (!key) {
    key = Buffer.from(hkdfSync('sha256', secret, '', SEAL_INFO, 32));
    sealKeys.set(secret, key);
  }
  return key;
}

/** The codes of a batch, encrypted for storage: version byte, 12-byte IV, 16-byte tag, ciphertext. */
export function sealCodes(secret: string, batchId: string, codes: string[]): Buffer {
  const iv = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', sealKey(secret), iv);
  cipher.setAAD(Buffer.from(batchId, 'utf8'));
  const body = Buffer.concat([cipher.update(JSON.stringify(codes), 'utf8'), cipher.final()]);
  return Buffer.concat([Buffer.from([SEAL_VERSION]), iv, cipher.getAuthTag(), body]);
}

/** The codes sealCodes sealed for `batchId`; throws when the blob was altered, is another batch's, or the secret differs. */
export function openCodes(secret: string, batchId: string, sealed: Buffer): string[] {
  if (sealed[0] !== SEAL_VERSION) throw new Error(`sealed codes of an unknown version ${sealed[0]}`);
  const decipher = createDecipheriv('aes-256-gcm', sealKey(secret), sealed.subarray(1, 13));
  decipher.setAAD(Buffer.from(batchId, 'utf8'));
  decipher.setAuthTag(sealed.subarray(13, 29));
  const plain = Buffer.concat([decipher.update(sealed.subarray(29)), decipher.final()]).toString('utf8');
  return z.array(z.string()).parse(JSON.parse(plain));
}
