"""A .tflite model as a C header for TFLite Micro, like `xxd -i` but aligned.

TFLite Micro reads the flatbuffer in place from flash; its tables hold 4-, 8- and
16-byte fields, so the array must be 16-byte aligned or some MCUs fault on load.
"""

from __future__ import annotations

import re

_BYTES_PER_LINE = 12
_C_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def to_c_header(tflite_bytes: bytes, name: str) -> str:
    """C source declaring `alignas(16) const unsigned char name[]` and `name_len`.

    Includes <stdalign.h> under C11 so `alignas` works in C as well as C++.
    """
    if not _C_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a C identifier")
    if len(tflite_bytes) < 8 or tflite_bytes[4:8] != b"TFL3":
        raise ValueError("not a .tflite flatbuffer (no TFL3 identifier at byte 4)")
    guard = f"FEDGE_{name.upper()}_H"
    lines = [
        f"/* {name}: a TFLite flatbuffer of {len(tflite_bytes)} bytes, written by fedge export."
        " */",
        f"#ifndef {guard}",
        f"#define {guard}",
        "",
        "#if !defined(__cplusplus)",
        "#include <stdalign.h>",
        "#endif",
        "",
        f"alignas(16) const unsigned char {name}[] = {{",
    ]
    for begin in range(0, len(tflite_bytes), _BYTES_PER_LINE):
        chunk = tflite_bytes[begin : begin + _BYTES_PER_LINE]
        lines.append("  " + ", ".join(f"0x{b:02x}" for b in chunk) + ",")
    lines += [
        "};",
        f"const unsigned int {name}_len = {len(tflite_bytes)};",
        "",
        f"#endif /* {guard} */",
        "",
    ]
    return "\n".join(lines)
