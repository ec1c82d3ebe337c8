#!/usr/bin/env bash
# Create or refresh the course's local environment. Idempotent: a re-run with
# nothing changed checks a stamp and returns in about a second.
#
#   scripts/setup.sh            # .venv/ in the repository (override: COURSE_VENV=/path)
#
# It installs the exact versions of requirements/lock.txt (torch==2.14.1 and
# torchvision==0.29.1 among them) and then this repository in editable mode.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${COURSE_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}
STAMP="$VENV/.course-setup-stamp"

if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
  echo "setup: error: need Python >= 3.10 as '$PY' (set PYTHON=/path/to/python3)" >&2
  exit 1
fi

# What the environment must match: the lock, the project metadata and where this checkout lives.
want=$( { cat "$ROOT/requirements/lock.txt" "$ROOT/pyproject.toml" "$ROOT/setup.py"; echo "$ROOT"; } | sha256sum | cut -c1-16)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] \
   && "$VENV/bin/python" -c 'import course_lib' 2>/dev/null; then
  echo "setup: environment up to date ($VENV)"
  exit 0
fi

start=$(date +%s)
echo "setup: preparing $VENV (first run takes a few minutes) ..."
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
rm -f "$STAMP"
# (this machine's pip config names local index folders that may not exist: hide that noise)
# --no-compile: pip would byte-compile all ~17,700 .py files of the environment (about 36 s of one
# core, measured); Python compiles the ~30 % that the course imports on first use and caches them.
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-compile -r "$ROOT/requirements/lock.txt" \
  2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-compile --no-deps --no-build-isolation -e "$ROOT"

# Debian's Chromium for the studio's end-to-end test (Playwright drives it; we never run
# 'playwright install'). Only when missing, only as root with apt-get; a failure is a warning
# (the test then skips). COURSE_NO_CHROMIUM=1 skips this step.
if [ ! -x /usr/bin/chromium ] && [ "${COURSE_NO_CHROMIUM:-0}" != 1 ] && [ "$(id -u)" = 0 ] \
   && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing chromium with apt-get (for the studio's browser test) ..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; } \
    || echo "setup: warning: could not install chromium; the studio's browser test will be skipped" >&2
fi
echo "$want" > "$STAMP"
echo "setup: done in $(( $(date +%s) - start )) s ($VENV)"
