#!/usr/bin/env bash
# Create the peers' own environments, idempotently: a virtualenv for the Python peers
# (bench/.venv-peers) and node_modules for graphile-worker (bench/graphile/node_modules).
# Nothing here touches the project's runtime dependencies; only pip and npm registries are used.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
venv="$here/.venv-peers"
cd "$here"  # not the repository root: its operator/ folder would shadow the stdlib module

# Pinned peer versions; a stamp file lets a re-run skip pip when nothing changed.
pins=(
  "procrastinate==3.10.0"
  "pgqueuer[asyncpg]==1.6.0"
  "asyncpg==0.32.0"
  "dramatiq==2.2.1"
  "dramatiq-postgres==1.4.0"
  "psycopg[binary]==3.3.9"
  "psycopg-pool==3.3.3"
)
stamp="$venv/.bench-pins"
want="$(printf '%s\n' "${pins[@]}")"
if [[ ! -x "$venv/bin/python" ]]; then
  "$python" -m venv "$venv"
fi
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q "${pins[@]}"
  printf '%s\n' "$want" >"$stamp"
fi

# graphile-worker, run with the machine's node; package-lock.json pins the whole npm tree.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "setup.sh: node/npm not found, graphile-worker will be skipped (apt-get install nodejs npm)" >&2
else
  gstamp="$here/graphile/node_modules/.bench-stamp"
  if [[ ! -f "$gstamp" || "$here/graphile/package.json" -nt "$gstamp" \
        || "$here/graphile/package-lock.json" -nt "$gstamp" ]]; then
    (cd "$here/graphile" && npm ci --no-audit --no-fund --loglevel=error)
    touch "$gstamp"
  fi
fi
echo "bench peers ready: $venv${gstamp:+, $here/graphile/node_modules}"
