#!/bin/bash
# Install this fedge device bundle with no network: Debian packages from debs/ (if the
# bundle has them), a venv with the wheels from wheels/, the app, device.toml, the device
# key, and the fedge-device systemd unit. Run as root from the unpacked bundle:
#
#   sudo ./install.sh              # enable the unit (and start it if systemd is running)
#   sudo ./install.sh --no-enable  # install only
#
# Also works in a chroot of a device image (no systemd running): the unit is enabled
# for the next boot. Paths come from bundle.env, written by `fedge bundle`.
set -euo pipefail

die() { echo "install.sh: $*" >&2; exit 1; }

enable=1
for arg in "$@"; do
    case "$arg" in
        --no-enable) enable=0 ;;
        *) die "unknown option $arg (use --no-enable or nothing)" ;;
    esac
done

here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
[ "$(id -u)" = 0 ] || die "run as root (sudo ./install.sh)"
# shellcheck source=/dev/null
. ./bundle.env

damaged="$(sha256sum --check --quiet --strict SHA256SUMS 2>/dev/null)" \
    || die "files in $here do not match SHA256SUMS (${damaged//$'\n'/, }): copy the bundle again"

machine="$(dpkg --print-architecture 2>/dev/null || uname -m)"
[ "$machine" = "$ARCH" ] || die "this bundle is for $ARCH, this system is $machine"

if compgen -G "debs/*.deb" >/dev/null; then
    echo "installing $(find debs -name '*.deb' | wc -l) Debian packages from debs/"
    dpkg --install --skip-same-version debs/*.deb >/dev/null \
        || die "dpkg could not install debs/*.deb (see above)"
fi
missing=""
for package in $DEBIAN_PACKAGES; do
    status="$(dpkg-query -W -f='${db:Status-Abbrev}' "$package" 2>/dev/null || true)"
    [ "${status:0:2}" = "ii" ] || missing="$missing $package"
done
[ -z "$missing" ] || die "missing Debian packages:$missing (apt install them, or build the bundle with --debs)"

command -v python3 >/dev/null || die "python3 is not installed"
have="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[ "$have" = "$PYTHON_VERSION" ] || die "this bundle's wheels are for Python $PYTHON_VERSION, python3 here is $have"

echo "creating the venv $VENV"
rm -rf "$VENV"
# --without-pip: Debian's python3 has venv but not ensurepip unless python3-venv is
# installed; pip comes from the bundle's own wheel instead.
python3 -m venv --without-pip $SYSTEM_SITE "$VENV"
pip_wheel="$(find wheels -name 'pip-*.whl' | head -n 1)"
[ -n "$pip_wheel" ] || die "no pip wheel in wheels/"
PIP_CONFIG_FILE=/dev/null "$VENV/bin/python" "$pip_wheel/pip" install --quiet --no-index \
    --find-links wheels --no-cache-dir --disable-pip-version-check pip "$FEDGE" \
    || die "pip could not install fedge from wheels/ (see above)"
"$VENV/bin/python" -m pip check --disable-pip-version-check >/dev/null \
    || die "pip check found broken requirements: run $VENV/bin/pip check"

getent passwd fedge >/dev/null \
    || useradd --system --home-dir "$STATE_DIR" --shell /usr/sbin/nologin fedge
install -d -m 0700 -o fedge -g fedge "$STATE_DIR"

echo "installing the app in $APP_DIR and the config in $CONFIG"
# Readable by the fedge group only: the app may hold the broker's password file.
cp -r app "$APP_DIR"
chown -R root:fedge "$APP_DIR"
chmod -R u=rwX,g=rX,o= "$APP_DIR"
install -D -m 0640 -o root -g fedge device.toml "$CONFIG"

if [ -n "$KEY_DEST" ]; then
    if [ -e "$KEY_DEST" ] && ! cmp -s device.key "$KEY_DEST"; then
        die "$KEY_DEST holds another key: move it away to install this bundle's key"
    fi
    install -d -m 0700 -o fedge -g fedge "$(dirname "$KEY_DEST")"
    install -m 0600 -o fedge -g fedge device.key "$KEY_DEST"
    echo "device key in $KEY_DEST"
fi

install -m 0644 fedge-device.service /etc/systemd/system/fedge-device.service
if [ "$enable" = 1 ]; then
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        systemctl enable --now fedge-device.service
        echo "fedge-device started: journalctl -u fedge-device -f"
    else  # a chroot or an image: what `systemctl enable` does, for the next boot
        mkdir -p /etc/systemd/system/multi-user.target.wants
        ln -sf /etc/systemd/system/fedge-device.service \
            /etc/systemd/system/multi-user.target.wants/fedge-device.service
        echo "fedge-device enabled: it starts at the next boot"
    fi
fi
echo "installed $DEVICE_ID: $VENV/bin/fedge device --config $CONFIG"
