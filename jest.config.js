// Unit tests sit beside the code (src/storage/*.test.ts); integration tests that need Postgres, Redis and
// Kafka live under test/. The global setup starts whatever of those is not already running.
/** @type {import('jest').Config} */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/src', '<rootDir>/scripts', '<rootDir>/test'],
  testMatch: ['**/*.test.ts'],
  // Type checking is `npm run typecheck`; the transform only strips types, which keeps runs fast.
  transform: { '^.+\\.ts$': ['ts-jest', { tsconfig: 'tsconfig.json' }] },
  globalSetup: '<rootDir>/test/support/global-setup.ts',
  globalTeardown: '<rootDir>/test/support/global-teardown.ts',
  testTimeout: 120_000,
  // The concurrency tests load the machine on their own; two files at a time is enough on 2 cores.
  maxWorkers: 2,
  verbose: true,
};
