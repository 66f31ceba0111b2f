// The compiled service the Procfile runs: its commands, and a build when dist/ is older than the sources.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { procfileCommands } from '../../scripts/infra/app-process';

const ROOT = resolve(__dirname, '../..');
const SOURCES = ['src', 'scripts'];

/** `name: command` lines of the Procfile. */
export const procfile = procfileCommands;

function newestMtime(dir: string, accept: (file: string) => boolean): number {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) newest = Math.max(newest, newestMtime(path, accept));
    else if (accept(entry.name)) newest = Math.max(newest, statSync(path).mtimeMs);
  }
  return newest;
}

/** Runs `npm run build` when a script of the Procfile is missing or older than a source file. */
export function buildIfStale(commands: string[]): void {
  const scripts = commands.flatMap((c) => c.split(/\s+/).filter((arg) => arg.endsWith('.js'))).map((s) => join(ROOT, s));
  const sources = Math.max(
    ...SOURCES.map((d) =>
      newestMtime(join(ROOT, d), (f) => (f.endsWith('.ts') && !f.endsWith('.test.ts')) || f.endsWith('.lua') || f.endsWith('.sql')),
    ),
    ...['package.json', 'tsconfig.json', 'tsconfig.build.json'].map((f) => statSync(join(ROOT, f)).mtimeMs),
  );
  const fresh = scripts.every((s) => existsSync(s) && statSync(s).mtimeMs >= sources);
  if (fresh) return;
  const build = spawnSync('npm', ['run', 'build'], { cwd: ROOT, encoding: 'utf8', timeout: 240_000 });
  if (build.status !== 0)
    throw new Error(`npm run build failed (${build.status ?? build.signal}):\n${`${build.stdout}${build.stderr}`.slice(-4000)}`);
}
