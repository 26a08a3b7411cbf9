#!/usr/bin/env bash
# The one entry point (`make bench`): set up the peers' environments, then run the suite with the
# project's venv. Extra arguments go to bench/run.py (e.g. --runs 3 --scale 0.01 --systems ...).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
"$here/setup.sh"
python="${BENCH_PYTHON:-$root/.venv/bin/python}"
exec "$python" "$here/run.py" "$@"
