#!/usr/bin/env bash
# Shared set-up for scripts/demo.sh and scripts/test.sh: a venv in .venv with fedge
# installed (editable) plus the extras named in $1, and mosquitto from apt when asked.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="$1"
want_system_packages="${2:-no}"   # "yes": mosquitto and chromium from apt, for the tests

missing=()
if [ "$want_system_packages" = "yes" ]; then
  command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
  [ -x /usr/bin/chromium ] || missing+=(chromium)   # the dashboard's browser test
  command -v gcc >/dev/null || missing+=(gcc libc6-dev)  # the firmware bridge's C code
  command -v g++ >/dev/null || missing+=(g++)  # the Arduino sketch, built for the host
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]} from apt" >&2
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
  # Debian starts a system mosquitto on port 1883; fedge starts its own on free ports.
fi

python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[$extras]"
