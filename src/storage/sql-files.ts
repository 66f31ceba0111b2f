// The repeatable step of the migrations: the functions and triggers of src/storage/sql/, one file each
// (or one per tightly-coupled group), applied after the versioned migrations whenever a file's text
// differs from the one last applied. The checksums applied live in schema_sql_files. See
// src/storage/migrations/index.ts for how to change a function.
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import type { Sequelize } from 'sequelize';

/** The files; `npm run build` copies them next to the compiled migrator (dist/src/storage/sql). */
export const SQL_DIR = path.join(__dirname, 'sql');
/** file (its name in SQL_DIR), checksum (sha256 of its text, hex), applied_at. */
export const SQL_FILES_TABLE = 'schema_sql_files';

export interface SqlFile {
  name: string;
  text: string;
  checksum: string;
}

/** The *.sql files of dir in name order, the order they are applied in. */
export function readSqlFiles(dir: string = SQL_DIR): SqlFile[] {
  return readdirSync(dir)
    .filter((name) => name.endsWith('.sql'))
    .sort()
    .map((name) => {
      const text = readFileSync(path.join(dir, name), 'utf8');
      return { name, text, checksum: createHash('sha256').update(text).digest('hex') };
    });
}

/**
 * Applies every file of dir whose checksum differs from the one recorded (or that has none), in name
 * order, and records the new checksums; forgets the files that are gone. All in one transaction: a
 * file that fails leaves every function as it was. Returns the names of the files applied. Runs
 * under the migrations' advisory lock (runMigrations), like the versioned migrations.
 */
export async function applySqlFiles(db: Sequelize, dir: string = SQL_DIR, log: (msg: string) => void = () => {}): Promise<string[]> {
  const files = readSqlFiles(dir);
  await db.query(`
    CREATE TABLE IF NOT EXISTS ${SQL_FILES_TABLE} (
      file       text PRIMARY KEY,
      checksum   text NOT NULL,
      applied_at timestamptz(3) NOT NULL DEFAULT now()
    )`);
  return db.transaction(async (transaction) => {
    const [rows] = (await db.query(`SELECT file, checksum FROM ${SQL_FILES_TABLE}`, { transaction })) as [
      { file: string; checksum: string }[],
      unknown,
    ];
    const applied = new Map(rows.map((row) => [row.file, row.checksum]));
    const changed = files.filter((file) => applied.get(file.name) !== file.checksum);
    for (const file of changed) {
      log(`sql ${file.name}`);
      await db.query(file.text, { transaction });
      await db.query(
        `INSERT INTO ${SQL_FILES_TABLE} (file, checksum) VALUES ($1, $2)
         ON CONFLICT (file) DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = now()`,
        { bind: [file.name, file.checksum], transaction },
      );
    }
    await db.query(`DELETE FROM ${SQL_FILES_TABLE} WHERE NOT (file = ANY ($1))`, { bind: [files.map((file) => file.name)], transaction });
    return changed.map((file) => file.name);
  });
}
