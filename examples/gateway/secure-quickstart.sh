#!/usr/bin/env bash
# A secure gateway and one enrolled device, step by step, all on this machine.
#   examples/gateway/secure-quickstart.sh [FOLDER] [PORT]
# On a real gateway, run steps 1-4 on the gateway and steps 5-6 on the device (copy the
# CA certificate, the device's broker password and the aggregator's public key to it).
# tests/integration/test_guides.py runs this script, so every command here works.
set -euo pipefail
FEDGE=${FEDGE:-fedge}
PYTHON=${PYTHON:-python3}   # the Python that has fedge installed
S=${1:-$(mktemp -d /tmp/fedge-secure-XXXX)}
PORT=${2:-8883}
mkdir -p "$S"
chmod 755 "$S"   # mosquitto started as root reads its files as the `mosquitto` user

# 1. The aggregator's config: security on, and how it logs in to the broker.
cat > "$S/aggregator.toml" <<TOML
federation = "plant-7"
port = $PORT
rounds = 2
db_path = "$S/aggregator.sqlite3"
[model]
sizes = [64, 16, 10]
[sync]
target_updates = 1
[security]
enabled = true
key_file = "$S/aggregator.key"
[broker_auth]
ca_file = "$S/broker/ca.crt"
username = "aggregator"
password_file = "$S/broker/credentials/aggregator.txt"
TOML

# 2. mosquitto with TLS, a password per device and an ACL per device.
$FEDGE aggregator broker-config --config "$S/aggregator.toml" --out "$S/broker" \
    --devices pi-kitchen --port "$PORT"
mosquitto -c "$S/broker/mosquitto.conf" >"$S/mosquitto.log" 2>&1 &
BROKER=$!
trap 'kill $BROKER 2>/dev/null || true' EXIT
sleep 0.5

# 3. The aggregator's signing key; devices pin its public half.
$FEDGE keys create --path "$S/aggregator.key"

# 4. On the device: its own key. At the gateway: enrol its public half.
$FEDGE keys create --path "$S/pi-kitchen.key"
$FEDGE aggregator enroll --config "$S/aggregator.toml" --device pi-kitchen \
    --key "$($FEDGE keys export --path "$S/pi-kitchen.key")"

# 5. The device's config: its key, the pinned aggregator key, its broker login.
cat > "$S/device.toml" <<TOML
device_id = "pi-kitchen"
federation = "plant-7"
port = $PORT
state_dir = "$S/state"
[model]
sizes = [64, 16, 10]
[data]
path = "$S/data.npz"
[eligibility]
enabled = false   # this demo machine is not idle; leave it on for real devices
[security]
key_file = "$S/pi-kitchen.key"
aggregator_key = "$($FEDGE keys export --path "$S/aggregator.key")"
[broker_auth]
ca_file = "$S/broker/ca.crt"
username = "pi-kitchen"
password_file = "$S/broker/credentials/pi-kitchen.txt"
TOML
# The device's own data: an .npz with x (samples, features) and y (labels).
"$PYTHON" - "$S/data.npz" <<'PY'
import sys, numpy as np
from sklearn.datasets import load_digits
d = load_digits()
np.savez(sys.argv[1], x=(d.data[:300] / 16).astype("float32"), y=d.target[:300])
PY

# 6. Run both; the device leaves when the aggregator says the federation is done.
$FEDGE aggregator serve --exit-when-done --config "$S/aggregator.toml" &
AGGREGATOR=$!
$FEDGE device --config "$S/device.toml"
wait $AGGREGATOR

# Later: who contributed to which model version (ids, counts, digests; no data).
$FEDGE aggregator audit --config "$S/aggregator.toml"
# And to take a device out: refuse its updates, then its broker login (SIGHUP reloads).
#   fedge aggregator revoke --config aggregator.toml --device pi-kitchen
echo "done: $S"
