#!/usr/bin/env bash
# Set up, make sure PostgreSQL is running, then lint and run the whole test suite.
# `--fast`: the unit tier only (no Ray, subprocess, server, browser or PostgreSQL; under a
# minute), without the set-up once .venv exists (run ./scripts/setup.sh after a pull).
# Other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
fast=false
if [ "${1:-}" = "--fast" ]; then
  fast=true
  shift
  set -- -m unit "$@"
fi
if ! $fast || [ ! -x .venv/bin/python ]; then
  ./scripts/setup.sh
fi
. .venv/bin/activate
if ! $fast && command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  fi
fi
ruff check .
python -m pytest -q -p no:cacheprovider "$@"
