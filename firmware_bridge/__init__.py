"""Microcontrollers join the federation through a Linux device over a serial link.

- `firmware_bridge.link`: the link protocol (COBS frames, CRC-16, messages, a sans-IO
  reliable endpoint), pure Python without numpy.
- `firmware_bridge.bridge`: the host side on pyserial; `dataset` keeps the MCU's samples,
  `model_push` sends it models, `federation.ModelRelay` ties it to an EdgeClient.
- `firmware_bridge/firmware/`: the C99 reference of the MCU end and host test programs.
- `firmware_bridge/vectors/`: test vectors both implementations read.

See docs/firmware-bridge.md. May import edge_client; never aggregator.
"""
