"""Log lines that carry what a peer chose: escaped, bounded and rate-limited.

A node name offered on the peer port, an AMQP user name or a reason text comes from
whoever opened the socket, before (or without) authentication. Logged raw, a newline
in it forges a whole log line and 64 KB of it per attempt floods the disk. Every such
string goes through `peer_text`, which escapes what is not printable (so a newline
shows as `\\n`) and truncates to a bound that names how much was cut.

Refusals repeat: a password-guessing client or a node with the wrong cookie retries
in a loop. `RefusalLog` logs the first refusal of a kind at once, then at most one
line per interval for that kind, and that line says how many were suppressed since
the last one. It lives here, in the lowest layer both `cluster/` and `broker/`
import, because both log refusals of peers they cannot trust.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any, Callable

# Long enough for any real node, user or vhost name (RabbitMQ caps node names at 255).
PEER_TEXT_LIMIT = 256
# A whole reason text (a close's reply text, which may quote names and values in turn).
PEER_REASON_LIMIT = 1024

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def peer_text(value: object, limit: int = PEER_TEXT_LIMIT) -> str:
    """`value` as one printable line of at most about `limit` characters."""
    if isinstance(value, bytes | bytearray | memoryview):
        # Undecodable bytes become lone surrogates, escaped below as the byte they were.
        text = bytes(value).decode("utf-8", "surrogateescape")
    else:
        text = str(value)
    cut = len(text) - limit
    if cut > 0:
        text = text[:limit]
    out = []
    for ch in text:
        escaped = _ESCAPES.get(ch)
        if escaped is not None:
            out.append(escaped)
        elif ch.isprintable():
            out.append(ch)
        else:
            code = ord(ch)
            if 0xDC80 <= code <= 0xDCFF:
                code -= 0xDC00
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    if cut > 0:
        out.append(f"...({cut} more characters)")
    return "".join(out)


class RefusalLog:
    """Rate-limited warnings, one budget per kind of refusal.

    `warning(kind, fmt, *args)` logs when `kind` has not logged within `interval`
    seconds; otherwise it counts the line as suppressed, and the next line logged for
    that kind ends with how many were. Kinds are bounded (`max_kinds`, oldest
    forgotten first) so that a peer choosing kinds cannot grow the table."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0, max_kinds: int = 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._interval = interval
        self._max_kinds = max_kinds
        self._clock = clock
        # kind -> [time of the last line logged, lines suppressed since]
        self._kinds: OrderedDict[str, list[float]] = OrderedDict()

    def warning(self, kind: str, fmt: str, *args: Any) -> bool:
        """Logs at WARNING unless rate-limited; returns whether a line was written."""
        return self.log(logging.WARNING, kind, fmt, *args)

    def log(self, level: int, kind: str, fmt: str, *args: Any) -> bool:
        now = self._clock()
        entry = self._kinds.get(kind)
        if entry is not None and now - entry[0] < self._interval:
            entry[1] += 1
            return False
        suppressed = int(entry[1]) if entry is not None else 0
        if entry is None:
            entry = [now, 0]
            self._kinds[kind] = entry
            while len(self._kinds) > self._max_kinds:
                self._kinds.popitem(last=False)
        else:
            entry[0], entry[1] = now, 0
            self._kinds.move_to_end(kind)
        if suppressed:
            fmt = fmt + " (%d more like it suppressed since the last one)"
            args = (*args, suppressed)
        self._logger.log(level, fmt, *args)
        return True

    def suppressed(self, kind: str) -> int:
        entry = self._kinds.get(kind)
        return int(entry[1]) if entry is not None else 0
