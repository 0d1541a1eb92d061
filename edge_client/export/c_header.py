"""A .tflite model as a C header for TFLite Micro, like `xxd -i` but aligned.

TFLite Micro reads the flatbuffer in place from flash; its tables hold 4-, 8- and
16-byte fields, so the array must be 16-byte aligned or some MCUs fault on load.
"""

from __future__ import annotations

import re

_BYTES_PER_LINE = 12
_C_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Keywords of C11 and C++ (the header is included from both): `int[]` does not compile.
_KEYWORDS = frozenset((
    "auto", "break", "case", "char", "const", "continue", "default", "do", "double", "else",
    "enum", "extern", "float", "for", "goto", "if", "inline", "int", "long", "register",
    "restrict", "return", "short", "signed", "sizeof", "static", "struct", "switch", "typedef",
    "union", "unsigned", "void", "volatile", "while", "_Alignas", "_Alignof", "_Atomic", "_Bool",
    "_Complex", "_Generic", "_Imaginary", "_Noreturn", "_Static_assert", "_Thread_local",
    "alignas", "alignof", "and", "and_eq", "asm", "bitand", "bitor", "bool", "catch", "char8_t",
    "char16_t", "char32_t", "class", "compl", "concept", "consteval", "constexpr", "constinit",
    "const_cast", "co_await", "co_return", "co_yield", "decltype", "delete", "dynamic_cast",
    "explicit", "export", "false", "friend", "mutable", "namespace", "new", "noexcept", "not",
    "not_eq", "nullptr", "operator", "or", "or_eq", "private", "protected", "public",
    "reinterpret_cast", "requires", "static_assert", "static_cast", "template", "this",
    "thread_local", "throw", "true", "try", "typeid", "typename", "using", "virtual", "wchar_t",
    "xor", "xor_eq"))


def is_c_name(name: str) -> bool:
    """Usable as the array's name in C and C++: an identifier and not a keyword."""
    return bool(_C_NAME.fullmatch(name)) and name not in _KEYWORDS


def to_c_header(tflite_bytes: bytes, name: str) -> str:
    """C source declaring `alignas(16) const unsigned char name[]` and `name_len`.

    Includes <stdalign.h> under C11 so `alignas` works in C as well as C++.
    """
    if not is_c_name(name):
        raise ValueError(f"{name!r} is not a C identifier (or it is a C/C++ keyword)")
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
