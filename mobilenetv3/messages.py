"""Values quoted in error messages: a short prefix, never the whole value.

A value in an error message came from a file or a command line, so it can be
of any size: a 2 KB YAML alias bomb expands to gigabytes when printed whole.
Every message that quotes a value goes through `quote`.
"""

from __future__ import annotations

import reprlib

__all__ = ["QUOTE_LIMIT", "quote"]

QUOTE_LIMIT = 80  # characters of a quoted value: enough to recognise it, never a screenful


class _Prefixes(reprlib.Repr):
    """reprlib's bounded repr, but keeping the start of a long string or bytes (reprlib keeps both ends)."""

    def repr_str(self, x: str, level: int) -> str:
        return repr(x[: self.maxstring])

    def repr_bytes(self, x: bytes, level: int) -> str:
        return repr(x[: self.maxstring])

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 1000:  # repr refuses ints past 4300 digits, and the digits say nothing anyway
            return f"<an integer of about {int(x.bit_length() * 0.30103) + 1} digits>"
        return super().repr_int(x, level)


def quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """`repr(value)`, cut to at most `limit` characters ("..." ends a cut one).

    The repr is built with bounded depth and width (`reprlib`), so quoting a
    huge or deeply shared structure costs no more than quoting a small one.

    Args:
        value: anything.
        limit: the longest result, at least 4.
    """
    limit = max(4, limit)
    short = _Prefixes()
    # Deep or wide containers are elided by reprlib itself ("..." for the rest), so the
    # text to cut stays small whatever the value; strings keep their first characters.
    short.maxlevel = 3
    short.maxtuple = short.maxlist = short.maxarray = short.maxdict = short.maxset = short.maxfrozenset = 6
    short.maxdeque = 6
    short.maxstring = short.maxlong = short.maxother = limit + 1
    text = short.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
