"""Is the device online over a network that costs nothing per byte?

Reads the default route from /proc/net/route (IPv6 from /proc/net/ipv6_route when there
is no IPv4 default), then judges its interface by name, by sysfs (modem drivers, DEVTYPE),
by the config, and optionally by NetworkManager through a hook.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from fnmatch import fnmatchcase

from edge_client.eligibility.probe import ProbeResult, read_text

METERED_PREFIXES = ("wwan", "ppp", "wwp", "usb")
# USB modems and phone tethering: Qualcomm QMI, MBIM, CDC Ethernet/NCM, RNDIS, iPhone.
MODEM_DRIVERS = ("qmi_wwan", "cdc_mbim", "cdc_ether", "rndis_host", "huawei_cdc_ncm",
                 "sierra_net", "ipheth")
RTF_UP, RTF_REJECT = 0x0001, 0x0200

NmHook = Callable[[str], bool | None]


class NetworkProbe:
    """A default route, over an unmetered interface unless `allow_metered`.

    Any one source saying "metered" wins: the name, sysfs, `metered_interfaces` (exact
    names or shell patterns such as "tun*"), or `nm_metered`. The hook's answer is cached
    per interface for `nm_cache_s`, because running nmcli between batches is not cheap.
    """

    name = "network"

    def __init__(self, proc_root: str = "/proc", sys_root: str = "/sys",
                 metered_interfaces: Sequence[str] = (), allow_metered: bool = False,
                 nm_metered: NmHook | None = None, nm_cache_s: float = 60.0) -> None:
        self.proc_root = str(proc_root)
        self.sys_root = str(sys_root)
        self.metered_interfaces = tuple(metered_interfaces)
        self.allow_metered = allow_metered
        self.nm_metered = nm_metered
        self.nm_cache_s = nm_cache_s
        self._nm_cache: dict[str, tuple[float, bool | None]] = {}

    def check(self, now: float) -> ProbeResult:
        iface = default_route_interface(self.proc_root)
        if iface is None:
            return ProbeResult(False, "no network", {"online": False})
        why = self.metered_because(iface, now)
        facts: dict[str, float | str | bool] = {"online": True, "iface": iface,
                                                 "metered": bool(why)}
        if why:
            facts["metered_by"] = why
            if not self.allow_metered:
                return ProbeResult(False, f"metered network ({iface})", facts)
        return ProbeResult(True, facts=facts)

    def metered_because(self, iface: str, now: float) -> str:
        """Which source says `iface` is metered, or "" when none does."""
        if iface.startswith(METERED_PREFIXES):
            return "name"
        if any(fnmatchcase(iface, pattern) for pattern in self.metered_interfaces):
            return "config"
        modem = _sysfs_modem(self.sys_root, iface)
        if modem:
            return modem
        if self.nm_metered is not None and self._ask_nm(iface, now):
            return "NetworkManager"
        return ""

    def _ask_nm(self, iface: str, now: float) -> bool | None:
        cached = self._nm_cache.get(iface)
        if cached is not None and 0 <= now - cached[0] < self.nm_cache_s:
            return cached[1]
        assert self.nm_metered is not None
        answer = self.nm_metered(iface)
        self._nm_cache[iface] = (now, answer)
        return answer


def default_route_interface(proc_root: str) -> str | None:
    """The interface of the lowest-metric IPv4 default route, else the IPv6 one."""
    return _ipv4_default(proc_root) or _ipv6_default(proc_root)


def _ipv4_default(proc_root: str) -> str | None:
    text = read_text(os.path.join(proc_root, "net", "route")) or ""
    best: tuple[int, str] | None = None
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 8 or cols[1] != "00000000" or cols[7] != "00000000":
            continue
        try:
            flags, metric = int(cols[3], 16), int(cols[6])
        except ValueError:
            continue
        if flags & RTF_UP and not flags & RTF_REJECT and (best is None or metric < best[0]):
            best = (metric, cols[0])
    return best[1] if best else None


def _ipv6_default(proc_root: str) -> str | None:
    """::/0 routes, minus the unreachable ones the kernel parks on lo."""
    text = read_text(os.path.join(proc_root, "net", "ipv6_route")) or ""
    best: tuple[int, str] | None = None
    for line in text.splitlines():
        cols = line.split()
        if len(cols) < 10 or cols[0] != "0" * 32 or cols[1] != "00" or cols[9] == "lo":
            continue
        try:
            metric, flags = int(cols[5], 16), int(cols[8], 16)
        except ValueError:
            continue
        if flags & RTF_UP and not flags & RTF_REJECT and (best is None or metric < best[0]):
            best = (metric, cols[9])
    return best[1] if best else None


def _sysfs_modem(sys_root: str, iface: str) -> str:
    """"driver <name>" or "DEVTYPE=wwan" when sysfs shows a cellular modem, else ""."""
    base = os.path.join(sys_root, "class", "net", iface)
    driver_link = os.path.join(base, "device", "driver")
    if os.path.lexists(driver_link):
        driver = os.path.basename(os.path.realpath(driver_link))
        if any(known in driver for known in MODEM_DRIVERS):
            return f"driver {driver}"
    uevent = read_text(os.path.join(base, "uevent")) or ""
    if "DEVTYPE=wwan" in uevent.splitlines():
        return "DEVTYPE=wwan"
    return ""


def nm_metered_via_nmcli(iface: str, timeout_s: float = 2.0, nmcli: str = "nmcli") -> bool | None:
    """Ask NetworkManager whether `iface` is metered; None when it cannot say.

    NetworkManager knows what sysfs cannot, e.g. an Android hotspot over Wi-Fi (DHCP
    option ANDROID_METERED). Missing nmcli, a timeout or an error all give None.
    """
    import subprocess  # only devices that use this hook pay for the import

    try:
        done = subprocess.run([nmcli, "-t", "-f", "GENERAL.METERED", "dev", "show", iface],
                              capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return parse_nmcli_metered(done.stdout)


def parse_nmcli_metered(output: str) -> bool | None:
    """'GENERAL.METERED:yes (guessed)' -> True, 'no' -> False, 'unknown' -> None."""
    for line in output.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "GENERAL.METERED":
            word = value.strip().split(" ")[0].lower()
            return {"yes": True, "no": False}.get(word)
    return None
