// Coupon codes in Postgres: the hashes of generated codes, their batches and the sealed codes of a
// batch until its owner fetches them. The rules (generation, hashing, sealing) are src/domain/codes.ts.
import { QueryTypes, type Sequelize, type Transaction } from 'sequelize';

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
export async function finishBatch(
  db: Sequelize,
  batch: { batchId: string; policyId: string; hashes: string[]; sealed: Buffer },
): Promise<boolean> {
  const { batchId, policyId, hashes, sealed } = batch;
  return db.transaction(async (transaction) => {
    await lockBatch(db, batchId, transaction);
    const [kept] = await db.query<{ n: string }>(
      'SELECT count(*) AS n FROM coupon_codes WHERE batch_id = $1 AND code_hash = ANY($2::text[])',
      {
        bind: [batchId, hashes],
        type: QueryTypes.SELECT,
        transaction,
      },
    );
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
