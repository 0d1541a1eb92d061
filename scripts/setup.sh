#!/usr/bin/env bash
# Shared set-up for scripts/demo.sh and scripts/test.sh: a venv in .venv with fedge
# installed (editable) plus the extras named in $1, and mosquitto from apt when asked.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="$1"
want_mosquitto="${2:-no}"

if [ "$want_mosquitto" = "yes" ] && ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
  echo "setup: installing mosquitto from apt" >&2
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq mosquitto >/dev/null
  # Debian starts a system mosquitto on port 1883; fedge starts its own on free ports.
fi

python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[$extras]"
