// Applies the versioned migrations (umzug, history in the schema_migrations table), then the
// functions of src/storage/sql/ that changed (checksums in schema_sql_files). See src/storage/migrations/index.ts.
import { Umzug, SequelizeStorage } from 'umzug';
import { QueryTypes, type Sequelize } from 'sequelize';
import { createSequelize } from '../core/postgres';
import { migrations } from './migrations';
import { baseline, SQUASHED_MIGRATIONS } from './migrations/0014-baseline';
import { applySqlFiles, SQL_DIR } from './sql-files';

const MIGRATIONS_TABLE = 'schema_migrations';

export function createMigrator(db: Sequelize, log: (msg: string) => void = () => {}) {
  return new Umzug({
    migrations,
    context: db,
    storage: new SequelizeStorage({ sequelize: db, tableName: MIGRATIONS_TABLE }),
    logger: {
      info: (event) => log(`migration ${String(event.event ?? '')} ${String(event.name ?? '')}`.trim()),
      warn: (event) => log(`migration warning ${JSON.stringify(event)}`),
      error: (event) => log(`migration error ${JSON.stringify(event)}`),
      debug: () => {},
    },
  });
}

/**
 * A database that ran the migrations 0001-0014 one by one has the schema of 0014-baseline already:
 * its history is rewritten to say so (their rows replaced by the baseline's), so the baseline is
 * never run there. A database that ran only some of them is refused: it needs the rest first, from
 * a build that still has them. True when the history was rewritten.
 */
export async function adoptSquashedHistory(db: Sequelize, log: (msg: string) => void = () => {}): Promise<boolean> {
  const [table] = await db.query<{ exists: boolean }>('SELECT to_regclass($1) IS NOT NULL AS exists', {
    bind: [MIGRATIONS_TABLE],
    type: QueryTypes.SELECT,
  });
  if (!table?.exists) return false;
  const rows = await db.query<{ name: string }>(`SELECT name FROM ${MIGRATIONS_TABLE} WHERE name = ANY ($1)`, {
    bind: [SQUASHED_MIGRATIONS],
    type: QueryTypes.SELECT,
  });
  if (rows.length === 0) return false;
  const ran = new Set(rows.map((row) => row.name));
  const missing = SQUASHED_MIGRATIONS.filter((name) => !ran.has(name));
  if (missing.length > 0) {
    throw new Error(
      `the database ran some of the migrations squashed into ${baseline.name} but not ${missing.join(', ')}: ` +
        'migrate it with a build from before the squash first, then with this one',
    );
  }
  await db.transaction(async (transaction) => {
    await db.query(`DELETE FROM ${MIGRATIONS_TABLE} WHERE name = ANY ($1)`, { bind: [SQUASHED_MIGRATIONS], transaction });
    await db.query(`INSERT INTO ${MIGRATIONS_TABLE} (name) VALUES ($1) ON CONFLICT DO NOTHING`, { bind: [baseline.name], transaction });
  });
  log(`migration ${baseline.name} recorded as applied: the database ran ${SQUASHED_MIGRATIONS[0]} to ${SQUASHED_MIGRATIONS.at(-1)}`);
  return true;
}

/**
 * Brings the database at databaseUrl up to the newest schema. Safe to run from several processes.
 * Returns the migrations applied, then the src/storage/sql files applied (as `sql/<file>`).
 */
export async function runMigrations(databaseUrl: string, log?: (msg: string) => void, sqlDir: string = SQL_DIR): Promise<string[]> {
  const db = createSequelize(databaseUrl, 1);
  try {
    // One migrator at a time across processes: a transaction-less advisory lock held on this session.
    await db.query('SELECT pg_advisory_lock(hashtext($1))', { bind: ['coupon-service/migrations'] });
    await adoptSquashedHistory(db, log);
    const applied = await createMigrator(db, log).up();
    const files = await applySqlFiles(db, sqlDir, log);
    return [...applied.map((m) => m.name), ...files.map((file) => `sql/${file}`)];
  } finally {
    await db.close();
  }
}
