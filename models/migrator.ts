// Applies the versioned migrations (umzug, history in the schema_migrations table).
import { Umzug, SequelizeStorage } from 'umzug';
import type { Sequelize } from 'sequelize';
import { createSequelize } from '../core/postgres';
import { migrations } from './migrations';

export function createMigrator(db: Sequelize, log: (msg: string) => void = () => {}) {
  return new Umzug({
    migrations,
    context: db,
    storage: new SequelizeStorage({ sequelize: db, tableName: 'schema_migrations' }),
    logger: {
      info: (event) => log(`migration ${String(event.event ?? '')} ${String(event.name ?? '')}`.trim()),
      warn: (event) => log(`migration warning ${JSON.stringify(event)}`),
      error: (event) => log(`migration error ${JSON.stringify(event)}`),
      debug: () => {},
    },
  });
}

/** Brings the database at databaseUrl up to the newest schema. Safe to run from several processes. */
export async function runMigrations(databaseUrl: string, log?: (msg: string) => void): Promise<string[]> {
  const db = createSequelize(databaseUrl, 1);
  try {
    // One migrator at a time across processes: a transaction-less advisory lock held on this session.
    await db.query('SELECT pg_advisory_lock(hashtext($1))', { bind: ['coupon-service/migrations'] });
    const applied = await createMigrator(db, log).up();
    return applied.map((m) => m.name);
  } finally {
    await db.close();
  }
}
