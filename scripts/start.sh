#!/usr/bin/env bash
# `npm start`: installs dependencies when they are missing or stale, builds, then hands over
# to scripts/start.ts, which brings up Postgres, Redis and Kafka, migrates and runs the Procfile.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d node_modules ] || { [ -f package-lock.json ] && [ package-lock.json -nt node_modules ]; }; then
  echo "start: installing dependencies..." >&2
  if [ -f package-lock.json ]; then npm ci; else npm install; fi
  # npm install may rewrite the lockfile after node_modules: mark the install as the newer one.
  touch node_modules
fi

echo "start: building..." >&2
npm run build

# exec, and node with tsx's loader rather than `npx tsx` (which adds two more processes):
# a signal that npm forwards to its child then reaches start.ts itself.
exec node --import tsx scripts/start.ts "$@"
