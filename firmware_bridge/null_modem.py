"""Two pseudo-terminals joined back to back: a serial cable for trying the bridge
without hardware, and the wire the tests corrupt on purpose.

    python -m firmware_bridge.null_modem
    # prints two ports; then, in two shells:
    #   firmware_bridge/firmware/mcu_sim /dev/pts/7 --samples samples.txt --shape 4
    #   fedge bridge --port /dev/pts/6 --data-dir /tmp/mcu

A relay thread copies bytes between the two pty masters one whole frame (up to each
0x00) at a time, handing each frame to `tamper[direction]`, which returns what the wire
delivers instead (nothing, a corrupted copy, two copies). POSIX only.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import threading
import tty
from collections.abc import Callable

from firmware_bridge.link import Frame, FrameReader, LinkError

Tamper = Callable[[bytes], list[bytes]]  # one whole frame in, what the wire delivers


def frame_of(wire: bytes) -> Frame | None:
    """The frame in one delimited piece of wire bytes, None if it does not decode."""
    reader = FrameReader()
    reader.feed(wire)
    try:
        return reader.next_frame()
    except LinkError:
        return None


class NullModem:
    """`bridge_port` and `mcu_port` are tty paths; bytes written to one come out of the
    other. `frames[direction]` records each frame that passed ("to_mcu", "to_bridge")."""

    def __init__(self, record: bool = True) -> None:
        self._fds: list[int] = []
        self.bridge_master, bridge_slave = self._pty()
        self.mcu_master, mcu_slave = self._pty()
        self.bridge_port = os.ttyname(bridge_slave)
        self.mcu_port = os.ttyname(mcu_slave)
        self.record = record
        self.tamper: dict[str, Tamper] = {"to_mcu": _unchanged, "to_bridge": _unchanged}
        self.frames: dict[str, list[Frame | None]] = {"to_mcu": [], "to_bridge": []}
        self._buffers = {"to_mcu": bytearray(), "to_bridge": bytearray()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._relay, name="null-modem", daemon=True)
        self._thread.start()

    def _pty(self) -> tuple[int, int]:
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line editing: a serial line
        os.set_blocking(master, False)
        self._fds += [master, slave]  # the slave stays open here, so the master never EIOs
        return master, slave

    def _relay(self) -> None:
        routes = {self.bridge_master: ("to_mcu", self.mcu_master),
                  self.mcu_master: ("to_bridge", self.bridge_master)}
        while not self._stop.is_set():
            ready, _, _ = select.select(list(routes), [], [], 0.05)
            for fd in ready:
                direction, dst = routes[fd]
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    continue
                self._pass(direction, data, dst)

    def _pass(self, direction: str, data: bytes, dst: int) -> None:
        buffer = self._buffers[direction]
        buffer += data
        while (end := buffer.find(b"\x00")) >= 0:
            wire = bytes(buffer[:end + 1])
            del buffer[:end + 1]
            if self.record:
                self.frames[direction].append(frame_of(wire))
            for piece in self.tamper[direction](wire):
                # nobody reading: the bytes are lost, as on a real line
                with contextlib.suppress(OSError):
                    os.write(dst, piece)

    def count(self, direction: str, msg_type: int) -> int:
        """Frames of one type that passed in one direction (before tampering)."""
        return sum(1 for f in list(self.frames[direction]) if f is not None
                   and f.type == msg_type)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()


def _unchanged(wire: bytes) -> list[bytes]:
    return [wire]


def main() -> int:
    modem = NullModem(record=False)
    print(f"bridge side: {modem.bridge_port}\nMCU side:    {modem.mcu_port}\n"
          "relaying until Ctrl-C", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        modem.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
