// `npm run migrate`: brings the database at DATABASE_URL up to the newest schema.
import { config } from '../src/core/config';
import { runMigrations } from '../src/storage/migrator';

runMigrations(config().DATABASE_URL, (msg) => process.stdout.write(`${msg}\n`))
  .then((applied) => {
    process.stdout.write(applied.length ? `migrated: ${applied.join(', ')}\n` : 'schema is up to date\n');
  })
  .catch((error: unknown) => {
    process.stderr.write(`migration failed: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exit(1);
  });
