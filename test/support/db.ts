// Direct reads of Postgres for assertions: tests check the rows, not only what the API says.
import { Pool } from 'pg';

let pool: Pool | undefined;

export function db(): Pool {
  pool ??= new Pool({ connectionString: process.env.DATABASE_URL, max: 4 });
  return pool;
}

export async function closeDb(): Promise<void> {
  await pool?.end();
  pool = undefined;
}

export interface CouponRow {
  id: string;
  user_id: string;
  slot: number | null;
  status: string;
  request_id: string;
}

export async function couponsOf(policyId: string): Promise<CouponRow[]> {
  const { rows } = await db().query<CouponRow>('SELECT id, user_id, slot, status, request_id FROM coupons WHERE policy_id = $1 ORDER BY slot', [policyId]);
  return rows;
}
