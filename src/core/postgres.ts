// The PostgreSQL client: one Sequelize instance per process, created on first use and closed on shutdown.
import { Sequelize } from 'sequelize';
import { config } from './config';

let instance: Sequelize | undefined;

export function createSequelize(databaseUrl: string, poolMax = 10): Sequelize {
  return new Sequelize(databaseUrl, {
    dialect: 'postgres',
    logging: false,
    benchmark: false,
    // Keep a few connections open between bursts: opening one forks a Postgres backend, which a sale's
    // first second should not pay for.
    pool: { max: poolMax, min: Math.min(2, poolMax), idle: 60_000, acquire: 10_000 },
    // JIT off: it pays off for long analytic queries, not for ours. The planner cannot size a jsonb
    // batch (it guesses 100 rows), so the batched checkout reads crossed jit_above_cost and spent
    // ~25 ms compiling each one: most of Postgres's CPU at 900 checkouts/s.
    dialectOptions: { application_name: 'coupon-service', statement_timeout: 15_000, options: '-c jit=off' },
  });
}

export function sequelize(): Sequelize {
  if (!instance) {
    const cfg = config();
    instance = createSequelize(cfg.DATABASE_URL, cfg.DATABASE_POOL_MAX);
  }
  return instance;
}

/** The process pool's connections in use and idle, and the queries waiting for one (metrics); null before first use. */
export function poolStats(): { using: number; available: number; waiting: number } | null {
  const pool = (instance?.connectionManager as { pool?: { using: number; available: number; waiting: number } } | undefined)?.pool;
  return pool ? { using: pool.using, available: pool.available, waiting: pool.waiting } : null;
}

export async function closeSequelize(): Promise<void> {
  if (instance) {
    const closing = instance;
    instance = undefined;
    await closing.close();
  }
}
