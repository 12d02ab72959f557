"""A caller's deadline, passed down the cascade so that no tier outlives the caller who waits for it.

A deadline is a `time.monotonic()` instant (infinity: the caller set none). A step's share is its own limit
cut to the time the caller has left, less a margin, so that the router's answer (or its refusal) still
reaches the caller before the caller gives up.
"""

from __future__ import annotations

import math
import time

NO_DEADLINE = math.inf
MARGIN_S = 0.05  # kept back from every share, for the answer's way back to the caller


def deadline_after(seconds: float | None, *, now: float | None = None) -> float:
    """The instant `seconds` from now (None, as gRPC says "no deadline": never)."""
    if seconds is None:
        return NO_DEADLINE
    return (time.monotonic() if now is None else now) + seconds


def time_left_s(deadline: float, limit_s: float = math.inf, *, now: float | None = None) -> float:
    """What a step may take: its own `limit_s`, cut to the caller's remaining time less the margin; 0 when
    nothing is left (infinite only when neither the step nor the caller has a limit)."""
    remaining = deadline - (time.monotonic() if now is None else now) - MARGIN_S
    return max(0.0, min(limit_s, remaining))
