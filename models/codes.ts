// Coupon codes: how single-use codes are generated and stored, and how a code a user types in is
// matched. Codes are matched case-insensitively; only their keyed hash is ever stored.
import { createCipheriv, createDecipheriv, createHmac, hkdfSync, randomBytes } from 'node:crypto';
import { QueryTypes, type Sequelize, type Transaction } from 'sequelize';
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

/** Stores code hashes of one generation batch; returns the hashes that were new (a collision is skipped). */
export async function insertCodeHashes(db: Sequelize, policyId: string, batchId: string, hashes: string[]): Promise<Set<string>> {
  const rows = await db.query<{ code_hash: string }>(
    `INSERT INTO coupon_codes (code_hash, policy_id, batch_id)
     SELECT h, $1, $2 FROM unnest($3::text[]) AS h
     ON CONFLICT (code_hash) DO NOTHING
     RETURNING code_hash`,
    { bind: [policyId, batchId, hashes], type: QueryTypes.SELECT },
  );
  return new Set(rows.map((r) => r.code_hash));
}

/**
 * Forgets the codes an unfinished earlier run of a generation job stored: its codes were never
 * handed out (the codes reach the admin only from a finished job), so the rerun makes a fresh set.
 * A finished batch is never touched: its count is returned instead, and the caller stops there.
 */
export async function discardUnfinishedBatch(db: Sequelize, batchId: string): Promise<{ finished: number } | { discarded: number }> {
  return db.transaction(async (transaction) => {
    await lockBatch(db, batchId, transaction);
    const done = await db.query<{ count: number }>('SELECT count FROM code_batches WHERE batch_id = $1', {
      bind: [batchId],
      type: QueryTypes.SELECT,
      transaction,
    });
    if (done[0]) return { finished: done[0].count };
    const [, meta] = await db.query(
      `DELETE FROM coupon_codes k WHERE batch_id = $1
         AND NOT EXISTS (SELECT 1 FROM coupons c WHERE c.code_hash = k.code_hash)`,
      { bind: [batchId], transaction },
    );
    return { discarded: (meta as { rowCount?: number } | undefined)?.rowCount ?? 0 };
  });
}

/**
 * Marks a batch finished and stores its codes, sealed (sealCodes), in one transaction, if every one
 * of `hashes` is still stored: false when another run of the job discarded some of them or finished
 * the batch first. Discarding and finishing take the same lock, so a run either seals a complete set
 * or seals nothing, and a finished batch always has its codes in Postgres until they are handed out.
 */
export async function finishBatch(db: Sequelize, batch: { batchId: string; policyId: string; hashes: string[]; sealed: Buffer }): Promise<boolean> {
  const { batchId, policyId, hashes, sealed } = batch;
  return db.transaction(async (transaction) => {
    await lockBatch(db, batchId, transaction);
    const [kept] = await db.query<{ n: string }>('SELECT count(*) AS n FROM coupon_codes WHERE batch_id = $1 AND code_hash = ANY($2::text[])', {
      bind: [batchId, hashes],
      type: QueryTypes.SELECT,
      transaction,
    });
    if (Number(kept?.n ?? 0) !== hashes.length) return false;
    const rows = await db.query(
      `INSERT INTO code_batches (batch_id, policy_id, count, sealed_codes) VALUES ($1, $2, $3, $4)
       ON CONFLICT (batch_id) DO NOTHING RETURNING batch_id`,
      { bind: [batchId, policyId, hashes.length, sealed], type: QueryTypes.SELECT, transaction },
    );
    return rows.length === 1;
  });
}

/** How long a finished batch keeps codes nobody fetched (the job's own result is kept as long). */
export const UNFETCHED_CODES_KEPT_S = 24 * 3600;

/** What the owner's read of a finished batch finds: its codes (taken out by this read), or why none. */
export type CodeDelivery = { codes: Buffer } | { delivered: true } | { expired: true };

/**
 * Takes a finished batch's sealed codes out of Postgres: the first call gets them and the row keeps
 * only the time they were delivered; every later call (and a concurrent one, which waits on the row
 * lock and then finds them gone) learns they were delivered. Codes older than UNFETCHED_CODES_KEPT_S
 * are never handed out.
 */
export async function takeSealedCodes(db: Sequelize, batchId: string): Promise<CodeDelivery> {
  const taken = await db.query<{ sealed_codes: Buffer }>(
    `WITH held AS (
       SELECT batch_id, sealed_codes FROM code_batches
        WHERE batch_id = $1 AND sealed_codes IS NOT NULL AND finished_at > now() - make_interval(secs => $2)
        FOR UPDATE
     )
     UPDATE code_batches b SET sealed_codes = NULL, delivered_at = now()
       FROM held WHERE b.batch_id = held.batch_id AND held.sealed_codes IS NOT NULL
     RETURNING held.sealed_codes`,
    { bind: [batchId, UNFETCHED_CODES_KEPT_S], type: QueryTypes.SELECT },
  );
  if (taken[0]) return { codes: taken[0].sealed_codes };
  const [row] = await db.query<{ delivered_at: Date | null }>('SELECT delivered_at FROM code_batches WHERE batch_id = $1', {
    bind: [batchId],
    type: QueryTypes.SELECT,
  });
  return row?.delivered_at ? { delivered: true } : { expired: true };
}

/** Drops the sealed codes of batches finished more than UNFETCHED_CODES_KEPT_S ago; how many. */
export async function dropUnfetchedCodes(db: Sequelize): Promise<number> {
  const [, meta] = await db.query(
    `UPDATE code_batches SET sealed_codes = NULL
      WHERE sealed_codes IS NOT NULL AND finished_at <= now() - make_interval(secs => $1)`,
    { bind: [UNFETCHED_CODES_KEPT_S] },
  );
  return (meta as { rowCount?: number } | undefined)?.rowCount ?? 0;
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

async function lockBatch(db: Sequelize, batchId: string, transaction: Transaction): Promise<void> {
  await db.query("SELECT pg_advisory_xact_lock(hashtextextended('code-batch/' || $1, 0))", { bind: [batchId], transaction });
}

/** The policy a single-use code belongs to, by its hash; null when no such code exists. */
export async function policyOfCode(db: Sequelize, hash: string): Promise<string | null> {
  const rows = await db.query<{ policy_id: string }>('SELECT policy_id FROM coupon_codes WHERE code_hash = $1', {
    bind: [hash],
    type: QueryTypes.SELECT,
  });
  return rows[0]?.policy_id ?? null;
}
