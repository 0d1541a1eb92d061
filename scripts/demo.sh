#!/usr/bin/env bash
# One command, fresh machine: set up and run a federation on this machine.
#   scripts/demo.sh                         # 5 devices, 10 sync rounds
#   scripts/demo.sh --mode async --json     # any `fedge demo` flags pass through
# mosquitto is used when installed; otherwise the embedded Python broker (amqtt).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh demo no
exec .venv/bin/fedge demo "$@"
