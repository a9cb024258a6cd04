# Shared by scripts/up and scripts/test: a virtualenv in .venv synced to a lock file.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3

sync_venv() {  # $1 = lock file
  if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
  if [ ! -x .venv/bin/uv ]; then .venv/bin/python -m pip install -q "uv==0.13.9"; fi
  .venv/bin/uv pip sync -q -p .venv/bin/python "$1"
  .venv/bin/uv pip install -q -p .venv/bin/python --no-deps -e .
}
