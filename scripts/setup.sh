#!/usr/bin/env bash
# Shared set-up for scripts/demo.sh and scripts/test.sh: a venv in .venv with fedge
# installed (editable) plus the extras named in $1, and mosquitto, chromium and
# PostgreSQL from apt when asked (tests start their own servers on free loopback ports).
set -euo pipefail
cd "$(dirname "$0")/.."

extras="$1"
want_system_packages="${2:-no}"   # "yes": mosquitto, chromium, postgresql from apt (tests)

missing=()
if [ "$want_system_packages" = "yes" ]; then
  command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
  [ -x /usr/bin/chromium ] || missing+=(chromium)   # the dashboard's browser test
  command -v gcc >/dev/null || missing+=(gcc libc6-dev)  # the firmware bridge's C code
  command -v g++ >/dev/null || missing+=(g++)  # the Arduino sketch, built for the host
  # The store's PostgreSQL backend: tests/pg_server.py runs initdb and postgres itself.
  ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]} from apt" >&2
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
  # Debian starts a system mosquitto on port 1883 (and a cluster on 5432 for postgresql);
  # fedge's tests start their own on free ports.
fi

python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[$extras]"
