// Lint: the recommended rules, and the layers of the house. From the top:
//
//   processes      src/web, src/worker, src/bridge  each may import any layer below, never another process
//   use cases      src/usecases                     what a process asks for: issue, reserve, apply a payment...
//   observability  src/observability                the service's own metrics, counters and alerts
//   storage        src/storage                      Postgres models, SQL functions, migrations; Redis state, caches
//   queues         src/queues                       job and result contracts, queue names, connections
//   domain         src/domain                       pure rules: no I/O
//   core           src/core                         config, logging, errors, clients, keys, concurrency
//
// A layer imports only the layers under it; src/ never imports scripts/ or test/.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

const LAYERS = ['core', 'domain', 'queues', 'storage', 'observability', 'usecases'];
const PROCESSES = ['web', 'worker', 'bridge'];

/** Matches a relative import that reaches into one of `folders` (of src/, or scripts/ and test/). */
const into = (folders, message) => ({ regex: `^(\\.\\./)+(${folders.join('|')})(/|$)`, message });

const forbid = (dir, folders, why) => ({
  files: [`src/${dir}/**/*.ts`],
  rules: {
    'no-restricted-imports': [
      'error',
      { patterns: [into(folders, why), into(['scripts', 'test'], 'src/ never imports scripts/ or test/.')] },
    ],
  },
});

const above = (layer) => [...LAYERS.slice(LAYERS.indexOf(layer) + 1), ...PROCESSES];

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', '.data/**', 'coverage/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' }],
    },
  },
  // Tests and benches read free-form JSON answers (HTTP bodies, job views) as `any`.
  { files: ['test/**/*.ts', 'scripts/**/*.ts'], rules: { '@typescript-eslint/no-explicit-any': 'off' } },
  {
    files: ['**/*.js', '**/*.mjs'],
    languageOptions: { globals: { module: 'writable', require: 'readonly', __dirname: 'readonly', process: 'readonly' } },
  },
  ...LAYERS.map((layer) =>
    forbid(layer, above(layer), `src/${layer} sits below ${above(layer).join(', ')}: it must not import them (eslint.config.mjs).`),
  ),
  ...PROCESSES.map((p) =>
    forbid(
      p,
      PROCESSES.filter((q) => q !== p),
      `${p} is a process of its own: what it shares with another process belongs in a layer below both (eslint.config.mjs).`,
    ),
  ),
);
