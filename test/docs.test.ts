// The docs say what the code does: every error the catalogue can answer is in docs/API.md's table
// with its status, and every setting the config reads is in the README's configuration table.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { configSchema } from '../src/core/config';
import { errorCatalogue } from '../src/core/errors';

const read = (file: string) => readFileSync(path.join(__dirname, '..', file), 'utf8');

/** The rows of a markdown table whose first cell is a code span: `NAME` -> the other cells. */
function codeRows(markdown: string): Map<string, string[]> {
  const rows = new Map<string, string[]>();
  for (const line of markdown.split('\n')) {
    const cells = /^\|\s*`([A-Z][A-Z0-9_]*)`\s*\|(.*)\|\s*$/.exec(line);
    if (cells)
      rows.set(
        cells[1]!,
        cells[2]!.split('|').map((c) => c.trim()),
      );
  }
  return rows;
}

describe('the docs', () => {
  it('list every error code of the catalogue in docs/API.md, with its status, and none it lacks', () => {
    const section = read('docs/API.md').split('## Error codes')[1]?.split('\n## ')[0] ?? '';
    const rows = codeRows(section);
    const documented = Object.fromEntries([...rows].map(([code, [status]]) => [code, Number(status)]));
    const catalogue = Object.fromEntries(Object.entries(errorCatalogue).map(([code, { status }]) => [code, status]));
    expect(documented).toEqual(catalogue);
  });

  it("list every setting the config reads in the README's configuration tables", () => {
    const section = read('README.md').split('\n## Configuration')[1]?.split('\n## ')[0] ?? '';
    // A row may name several settings in its first cell: `A`, `B`.
    const named = new Set(
      section
        .split('\n')
        .filter((line) => line.startsWith('|'))
        .flatMap((line) => [...(line.split('|')[1] ?? '').matchAll(/`([A-Z][A-Z0-9_]*)`/g)].map((m) => m[1]!)),
    );
    expect(Object.keys(configSchema.shape).filter((name) => !named.has(name))).toEqual([]);
  });
});
