// Direct reads of Postgres for assertions: tests check the rows, not only what the API says.
import { Client, Pool } from 'pg';
import { runMigrations } from '../../src/storage/migrator';

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
  const { rows } = await db().query<CouponRow>(
    'SELECT id, user_id, slot, status, request_id FROM coupons WHERE policy_id = $1 ORDER BY slot',
    [policyId],
  );
  return rows;
}

/**
 * A new, migrated database next to the test database, for a test that must be alone with its rows
 * (say, one that checks nothing else swept them). Returns its URL.
 */
export async function freshDatabase(name: string): Promise<string> {
  const base = new URL(process.env.DATABASE_URL as string);
  const admin = new Client({ connectionString: Object.assign(new URL(base), { pathname: '/postgres' }).toString() });
  await admin.connect();
  try {
    await admin.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
    await admin.query(`CREATE DATABASE "${name}"`);
  } finally {
    await admin.end();
  }
  const url = Object.assign(new URL(base), { pathname: `/${name}` }).toString();
  await runMigrations(url);
  return url;
}
