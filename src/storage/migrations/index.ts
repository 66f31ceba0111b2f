// How the schema is made and changed (src/storage/migrator.ts runs both steps, `npm run migrate`):
//
// 1. Versioned migrations, the list below, in order, each once (umzug; history in schema_migrations):
//    tables, columns, constraints, indexes, data. A new one is appended here (0015-..., raw SQL
//    through Sequelize, so every constraint has the name we give it); applied ones are never edited.
//    0014-baseline is the schema that 0001-0014 made one by one, squashed: on a database that ran
//    those, the migrator records it as applied without running it.
// 2. Repeatable: every function (and its trigger) of the schema lives in one file of src/storage/sql/,
//    with a header saying what it does, its arguments, what it returns and which constraint names it
//    answers. After the versioned migrations the migrator applies, in file-name order and in one
//    transaction, each file whose text changed since it was last applied (checksums in
//    schema_sql_files; src/storage/sql-files.ts). So:
//    - To change a function, edit its file. The file is the function's one current text: no
//      migration spells a function out.
//    - A file is CREATE OR REPLACE FUNCTION / CREATE OR REPLACE TRIGGER, runnable again and again.
//      It may use any table (plpgsql resolves names when it runs) and the objects of its own file;
//      a trigger comes after its function in the same file. A LANGUAGE sql function needs its
//      tables, which the versioned migrations made before.
//    - What CREATE OR REPLACE cannot do takes a versioned migration as well, which runs before the
//      files: a new return type or argument list (the migration drops the old function, the edited
//      file makes the new one), dropping a function or trigger (the migration drops it, and the file
//      goes). Versioned migrations therefore must not call the functions of src/storage/sql/: on a new
//      database those do not exist yet.
import { baseline } from './0014-baseline';
import type { Migration } from './types';

export const migrations: Migration[] = [baseline];
