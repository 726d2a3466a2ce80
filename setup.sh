#!/usr/bin/env bash
# Set up graft on a fresh machine and run the pipeline on the embedded offline demo data.
#   bash setup.sh                  find Python 3.10, make .venv, install, then `graft run`
#   bash setup.sh --install-only   the same without the run (CI uses this)
set -euo pipefail
cd "$(dirname "$0")"

find_python() {
  for cand in "${GRAFT_PYTHON:-}" python3.10 "$HOME"/.pyenv/versions/3.10*/bin/python \
              /root/.pyenv/versions/3.10*/bin/python /usr/bin/python3.10 /usr/local/bin/python3.10; do
    [ -n "$cand" ] || continue
    if command -v "$cand" >/dev/null 2>&1 && \
       "$cand" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 10) else 1)' 2>/dev/null; then
      command -v "$cand"; return 0
    fi
  done
  return 1
}

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import tfx, pipeline.cli' 2>/dev/null; then
  PY=$(find_python) || { echo "error: Python 3.10 not found (TFX 1.16 needs Python < 3.11); set GRAFT_PYTHON=/path/to/python3.10" >&2; exit 2; }
  echo "setup: using $PY"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  # A download cut off mid-file (seen in CI: TensorFlow's 590 MB wheel stopped at 275 MB six
  # times in a row, resuming from the same byte) fails pip; a new attempt starts the file afresh.
  retry() {
    local n
    for n in 1 2 3; do
      "$@" && return 0
      echo "setup: attempt $n of 3 failed: $*" >&2
      [ "$n" -lt 3 ] && sleep $((n * 10))
    done
    return 1
  }
  retry .venv/bin/python -m pip install --quiet --upgrade pip
  start=$(date +%s)
  retry .venv/bin/python -m pip install --quiet --resume-retries 10 -c constraints.txt -e '.[lite12,tflite-metadata]'
  echo "setup: installed in $(( $(date +%s) - start )) s"
fi

if [ "${1:-}" != "--install-only" ]; then
  exec .venv/bin/graft run
fi
