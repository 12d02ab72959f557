"""Reading redis-py answers. The platform's clients do not decode responses (the pattern sets hold raw vectors),
and redis-py's annotations say each value may be bytes or str: these read either the same way."""

from __future__ import annotations

from typing import Any


def as_text(value: Any) -> str:
    """A response value as text: bytes decoded as UTF-8, None as ""."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode()
    return "" if value is None else str(value)


def as_bytes(value: Any) -> bytes:
    """A response value as bytes (str encoded as UTF-8), for binary payloads such as vectors."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return b"" if value is None else str(value).encode()


def text_fields(raw: Any) -> dict[str, str]:
    """A hash or stream entry's fields as text."""
    return {as_text(k): as_text(v) for k, v in (raw or {}).items()}
