// The migrator (src/storage/migrator.ts): the squashed baseline plus the functions of src/storage/sql/ make the
// schema the migrations 0001-0014 made one by one; a database that ran those (rebuilt from
// test/fixtures/schema-after-0014.sql, captured from them) is taken to the same schema without
// running the baseline; and a changed src/storage/sql file, and only that, is applied again.
// Schemas are compared as pg_dump --schema-only prints them.
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Client } from 'pg';
import { SQUASHED_MIGRATIONS } from '../src/storage/migrations/0014-baseline';
import { runMigrations } from '../src/storage/migrator';
import { readSqlFiles, SQL_DIR } from '../src/storage/sql-files';
import { findExecutable } from '../scripts/infra/process';

const FIXTURE = path.join(__dirname, 'fixtures', 'schema-after-0014.sql');
const SQL_FILES = readSqlFiles().map((file) => file.name);

// Named after the test database, so runs against different test databases never share them.
const prefix = new URL(process.env.DATABASE_URL as string).pathname.slice(1);
const names = { fresh: `${prefix}_mig_fresh`, old: `${prefix}_mig_old`, partial: `${prefix}_mig_partial` };

function urlOf(database: string): string {
  return Object.assign(new URL(process.env.DATABASE_URL as string), { pathname: `/${database}` }).toString();
}

async function withClient<T>(url: string, fn: (client: Client) => Promise<T>): Promise<T> {
  const client = new Client({ connectionString: url });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

async function recreate(database: string): Promise<string> {
  await withClient(urlOf('postgres'), async (admin) => {
    await admin.query(`DROP DATABASE IF EXISTS "${database}" WITH (FORCE)`);
    await admin.query(`CREATE DATABASE "${database}"`);
  });
  return urlOf(database);
}

/** pg_dump from PATH, else the newest of /usr/lib/postgresql/N/bin (where Debian puts it). */
function pgDumpPath(): string {
  const root = '/usr/lib/postgresql';
  const dirs = existsSync(root)
    ? readdirSync(root)
        .sort((a, b) => Number(b) - Number(a))
        .map((v) => path.join(root, v, 'bin'))
    : [];
  const found = findExecutable('pg_dump') ?? findExecutable('pg_dump', dirs);
  if (!found) throw new Error('pg_dump not found: install the PostgreSQL client (apt-get install postgresql-client)');
  return found;
}

/** pg_dump --schema-only of url, less the \restrict lines (their key is new every run). */
function schemaOf(url: string, ...extra: string[]): string {
  const dump = spawnSync(pgDumpPath(), ['--schema-only', '--no-owner', ...extra, `--dbname=${url}`], { encoding: 'utf8' });
  if (dump.status !== 0) throw new Error(`pg_dump failed: ${dump.stderr}`);
  return dump.stdout
    .split('\n')
    .filter((line) => !line.startsWith('\\'))
    .join('\n');
}

/** Indentation aside: function bodies in migrations were indented by the TypeScript around them. */
function unindented(schema: string): string {
  return schema
    .split('\n')
    .map((line) => line.trim())
    .filter(Boolean)
    .join('\n');
}

/**
 * The objects of src/storage/sql changed since the squash, as pg_dump names them: the fixture has
 * their old text, a new database the current one (the upgrade test below shows an old database
 * takes the current one too).
 */
const CHANGED_SINCE_SQUASH = ['apply_checkout_events(jsonb); Type: FUNCTION', 'coupons tg_coupons_count_uses; Type: TRIGGER'];

/** A pg_dump schema as its objects, by the name and type of their header, each unindented. */
function schemaObjects(schema: string): Map<string, string> {
  const objects = new Map<string, string>();
  for (const block of schema.split(/^-- Name: /m).slice(1)) {
    const header = /^(.*?); Schema: /.exec(block)?.[1];
    if (header) objects.set(header, unindented(block));
  }
  return objects;
}

/** A database as the migrations 0001-0014 left it. (The dump empties the session's search_path.) */
async function oldDatabase(database: string): Promise<string> {
  const url = await recreate(database);
  await withClient(url, (c) => c.query(readFileSync(FIXTURE, 'utf8')));
  return url;
}

async function migrationHistory(url: string): Promise<string[]> {
  return withClient(url, async (c) =>
    (await c.query<{ name: string }>('SELECT name FROM schema_migrations ORDER BY name')).rows.map((r) => r.name),
  );
}

async function appliedSqlFiles(url: string): Promise<Record<string, string>> {
  return withClient(url, async (c) => {
    const { rows } = await c.query<{ file: string; checksum: string }>('SELECT file, checksum FROM schema_sql_files ORDER BY file');
    return Object.fromEntries(rows.map((r) => [r.file, r.checksum]));
  });
}

async function functionText(url: string, name: string): Promise<string> {
  return withClient(
    url,
    async (c) => (await c.query<{ def: string }>('SELECT pg_get_functiondef($1::regproc) AS def', [name])).rows[0]?.def ?? '',
  );
}

const POLICY = `INSERT INTO coupon_policies (id, name, discount_type, discount_value, issue_method, total_quantity, issue_starts_at, valid_days)
                VALUES ('p1', 'p1', 'FIXED', 1000, 'FIRST_COME', 10, now() - interval '1 day', 7)`;
const ISSUE = `SELECT outcome FROM insert_issued_coupons($1::jsonb)`;
const issueRequest = (n: number) =>
  JSON.stringify([
    {
      id: `c${n}`,
      requestId: `r${n}`,
      policyId: 'p1',
      userId: `u${n}`,
      slot: n,
      issuedAt: new Date(),
      expiresAt: new Date(Date.now() + 86_400_000),
    },
  ]);

let freshUrl: string;
let freshSchema: string;

beforeAll(async () => {
  freshUrl = await recreate(names.fresh);
  expect(await runMigrations(freshUrl)).toEqual(['0014-baseline', ...SQL_FILES.map((file) => `sql/${file}`)]);
  freshSchema = schemaOf(freshUrl);
});

afterAll(async () => {
  await withClient(urlOf('postgres'), async (admin) => {
    for (const database of Object.values(names)) await admin.query(`DROP DATABASE IF EXISTS "${database}" WITH (FORCE)`);
  });
});

describe('a new database', () => {
  it('gets every function of src/storage/sql, one file each, and records the baseline alone', async () => {
    expect(SQL_FILES.length).toBeGreaterThan(10);
    expect(await migrationHistory(freshUrl)).toEqual(['0014-baseline']);
    expect(Object.keys(await appliedSqlFiles(freshUrl))).toEqual(SQL_FILES);
    expect(freshSchema).toContain('CREATE FUNCTION public.insert_issued_coupons(requests jsonb)');
    expect(freshSchema).toContain('CREATE TRIGGER tg_coupons_enforce_limits BEFORE INSERT ON public.coupons');
  });

  it('has the schema the migrations 0001-0014 made (the fixture captured from them), but for what changed since', async () => {
    const oldUrl = await oldDatabase(names.old);
    const theirs = schemaObjects(schemaOf(oldUrl));
    // The one table they did not have: the checksums of src/storage/sql.
    const ours = schemaObjects(schemaOf(freshUrl, '--exclude-table=public.schema_sql_files'));
    expect(theirs.get('checkout_event_states(jsonb); Type: FUNCTION')).toContain(
      'CREATE FUNCTION public.checkout_event_states(events jsonb)',
    );
    // Each object changed since the squash is in both, and does differ (else it leaves the list).
    for (const name of CHANGED_SINCE_SQUASH) {
      expect({ name, ours: ours.has(name), theirs: theirs.has(name) }).toEqual({ name, ours: true, theirs: true });
      expect({ name, same: ours.get(name) === theirs.get(name) }).toEqual({ name, same: false });
    }
    const rest = (objects: Map<string, string>) => [...objects].filter(([name]) => !CHANGED_SINCE_SQUASH.includes(name));
    expect(rest(ours)).toEqual(rest(theirs));
  });

  it('applies nothing when migrated again', async () => {
    expect(await runMigrations(freshUrl)).toEqual([]);
    expect(schemaOf(freshUrl)).toEqual(freshSchema);
  });
});

describe('a database that ran the migrations 0001-0014 one by one', () => {
  it('records the baseline without running it, applies the src/storage/sql files, and ends with the schema of a new database', async () => {
    const oldUrl = await oldDatabase(names.old);
    await withClient(oldUrl, async (c) => {
      // Rows written before the upgrade, through the old functions.
      await c.query(POLICY);
      expect((await c.query(ISSUE, [issueRequest(1)])).rows).toEqual([{ outcome: 'inserted' }]);
    });
    expect(await migrationHistory(oldUrl)).toEqual(SQUASHED_MIGRATIONS);

    const logged: string[] = [];
    // The baseline is not among the applied (its CREATE TABLEs would fail on the tables there).
    expect(await runMigrations(oldUrl, (msg) => logged.push(msg))).toEqual(SQL_FILES.map((file) => `sql/${file}`));
    expect(logged).toContain(
      'migration 0014-baseline recorded as applied: the database ran 0001-coupon-policies to 0014-inbox-without-order-index',
    );
    expect(await migrationHistory(oldUrl)).toEqual(['0014-baseline']);
    expect(await appliedSqlFiles(oldUrl)).toEqual(await appliedSqlFiles(freshUrl));
    expect(schemaOf(oldUrl)).toEqual(freshSchema);

    // Its rows are kept, and the functions from the files work on them.
    await withClient(oldUrl, async (c) => {
      expect((await c.query(ISSUE, [issueRequest(1)])).rows).toEqual([{ outcome: 'duplicate-request' }]);
      expect((await c.query(ISSUE, [issueRequest(2)])).rows).toEqual([{ outcome: 'inserted' }]);
      const counts = await c.query("SELECT sum(issued)::int AS issued FROM policy_counters WHERE policy_id = 'p1'");
      expect(counts.rows).toEqual([{ issued: 2 }]);
    });
    expect(await runMigrations(oldUrl)).toEqual([]);
  });

  it('is refused when it ran only some of them', async () => {
    const partialUrl = await recreate(names.partial);
    await withClient(partialUrl, async (c) => {
      await c.query('CREATE TABLE schema_migrations (name varchar(255) PRIMARY KEY)');
      await c.query('INSERT INTO schema_migrations SELECT unnest($1::text[])', [SQUASHED_MIGRATIONS.slice(0, 10)]);
    });
    await expect(runMigrations(partialUrl)).rejects.toThrow(
      'the database ran some of the migrations squashed into 0014-baseline but not 0011-policy-counters, 0012-code-delivery, 0013-event-inbox, 0014-inbox-without-order-index',
    );
    expect(await migrationHistory(partialUrl)).toEqual(SQUASHED_MIGRATIONS.slice(0, 10));
  });
});

describe('the src/storage/sql files', () => {
  let dir: string;

  beforeAll(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'coupon-sql-'));
    cpSync(SQL_DIR, dir, { recursive: true });
  });

  afterAll(async () => {
    rmSync(dir, { recursive: true, force: true });
    // The database as the real files make it, for whoever comes next.
    await runMigrations(freshUrl);
  });

  it('applies a file again when, and only when, its text changed', async () => {
    const file = path.join(dir, 'coupons_guard_transition.sql');
    writeFileSync(file, readFileSync(file, 'utf8').replace("'a coupon cannot go from % to %'", "'no coupon goes from % to %'"));
    const before = await appliedSqlFiles(freshUrl);

    expect(await runMigrations(freshUrl, undefined, dir)).toEqual(['sql/coupons_guard_transition.sql']);
    expect(await functionText(freshUrl, 'coupons_guard_transition')).toContain("'no coupon goes from % to %'");
    const after = await appliedSqlFiles(freshUrl);
    expect(after['coupons_guard_transition.sql']).not.toEqual(before['coupons_guard_transition.sql']);
    expect({ ...after, 'coupons_guard_transition.sql': '' }).toEqual({ ...before, 'coupons_guard_transition.sql': '' });
    expect(await runMigrations(freshUrl, undefined, dir)).toEqual([]);

    // Back to the real file: applied again, and the schema is as before.
    expect(await runMigrations(freshUrl)).toEqual(['sql/coupons_guard_transition.sql']);
    expect(schemaOf(freshUrl)).toEqual(freshSchema);
  });

  it('applies none of a set with a failing file, and forgets a file that is gone', async () => {
    const broken = path.join(dir, 'coupons_guard_update.sql');
    const text = readFileSync(broken, 'utf8');
    const edited = readFileSync(path.join(SQL_DIR, 'coupons_guard_transition.sql'), 'utf8').replace(
      "'a coupon cannot go from % to %'",
      "'no coupon goes from % to %'",
    );
    writeFileSync(path.join(dir, 'coupons_guard_transition.sql'), edited);
    writeFileSync(broken, text.replace('RETURN NEW;', 'RETURN NEW'));
    const before = await appliedSqlFiles(freshUrl);
    await expect(runMigrations(freshUrl, undefined, dir)).rejects.toThrow(/syntax error/);
    expect(await appliedSqlFiles(freshUrl)).toEqual(before);
    expect(schemaOf(freshUrl)).toEqual(freshSchema);

    writeFileSync(broken, text);
    rmSync(path.join(dir, 'reserve_coupons.sql'));
    expect(await runMigrations(freshUrl, undefined, dir)).toEqual(['sql/coupons_guard_transition.sql']);
    expect(Object.keys(await appliedSqlFiles(freshUrl))).toEqual(SQL_FILES.filter((file) => file !== 'reserve_coupons.sql'));
    // Gone from the files, not from the database (dropping a function takes a versioned migration).
    expect(await functionText(freshUrl, 'reserve_coupons')).toContain('reserve_coupons');
  });
});
