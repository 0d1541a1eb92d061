"""Errors of the serial link: every bad byte sequence becomes one of these.

The decoder raises only `LinkError` subclasses, so a bridge loop can catch one type,
count it, ask the peer to resend and carry on. Each has a short `code` that the shared
test vectors and the C reference use too (fl_status_name in fedge_link.c).
"""

from __future__ import annotations


class LinkError(Exception):
    """Base of every error the link protocol raises for bad input from the peer."""

    code = "link_error"


class BadCobs(LinkError):
    """The bytes between two delimiters are not valid COBS."""

    code = "bad_cobs"


class BadCrc(LinkError):
    """The CRC-16 over header and payload does not match: line noise."""

    code = "bad_crc"


class Truncated(LinkError):
    """Fewer bytes than the header and the declared payload length need."""

    code = "truncated"


class TooLong(LinkError):
    """More bytes than the largest frame, or a declared payload over the maximum."""

    code = "too_long"


class BadLength(LinkError):
    """More bytes than the declared payload length: the header and body disagree."""

    code = "bad_length"


class UnknownVersion(LinkError):
    """A link protocol version this end does not speak; never guessed at."""

    code = "unknown_version"


class UnknownType(LinkError):
    """A message type this end does not know."""

    code = "unknown_type"


class BadPayload(LinkError):
    """A well-framed message whose payload does not fit its type's layout."""

    code = "bad_payload"


ERRORS_BY_CODE: dict[str, type[LinkError]] = {
    cls.code: cls for cls in (BadCobs, BadCrc, Truncated, TooLong, BadLength, UnknownVersion,
                              UnknownType, BadPayload)
}
