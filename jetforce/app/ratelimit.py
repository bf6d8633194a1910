"""
Per-client rate limiting in fixed windows.

A rate "N/[P]u" allows N requests per P units (s, m, h or d; P defaults to
1) for each key, which is the client address unless get_key() is
overridden. The window of a key starts with its first request. A request
over the limit gets 44 with the seconds left in the window as meta, which
Gemini clients read as the time to wait.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from functools import wraps
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from .base import Request, Response

UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
RATE_PATTERN = re.compile(r"(?P<number>\d+)/(?P<multiplier>\d*)(?P<unit>[smhd])")


class RateLimiter:
    """
    Counter of requests per key that returns a 44 response over the limit.

    Pass it to JetforceApplication(rate_limiter=...) to check every request
    before routing, or wrap single route handlers with apply(). clock is any
    IReactorTime (a task.Clock in tests); time.monotonic is used without it.
    Raises ValueError for a malformed rate or a zero count or period.
    """

    def __init__(self, rate: str, clock: IReactorTime | None = None) -> None:
        match = RATE_PATTERN.fullmatch(rate.strip())
        if match is None:
            raise ValueError(f"invalid rate {rate!r}: expected N/[P]u with u one of s, m, h, d, such as 60/5m")

        self.rate = rate
        self.number = int(match["number"])
        multiplier = int(match["multiplier"] or 1)
        if self.number < 1 or multiplier < 1:
            raise ValueError(f"invalid rate {rate!r}: the count and the period must be at least 1")
        self.period = multiplier * UNIT_SECONDS[match["unit"]]

        self._seconds: Callable[[], float] = clock.seconds if clock is not None else time.monotonic
        # key -> (start of its window, requests counted in it)
        self._windows: dict[str, tuple[float, int]] = {}
        self._next_sweep = self._seconds() + self.period

    def get_key(self, request: Request) -> str | None:
        """Return the key that requests are counted under; None exempts a request."""
        return request.environ.get("REMOTE_ADDR")

    def check(self, request: Request) -> Response | None:
        """Count request and return a 44 Response if its key is over the limit, else None."""
        key = self.get_key(request)
        if key is None:
            return None

        now = self._seconds()
        self._sweep(now)

        start, count = self._windows.get(key, (now, 0))
        if now - start >= self.period:
            start, count = now, 0
        count += 1
        self._windows[key] = (start, count)
        if count <= self.number:
            return None

        from .base import Response, Status

        wait = max(1, math.ceil(start + self.period - now))
        return Response(Status.SLOW_DOWN, str(wait))

    def apply(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap a route handler so that the limit is checked before it runs."""

        @wraps(handler)
        def limited_handler(request: Request, **kwargs: Any) -> Any:
            response = self.check(request)
            if response is not None:
                return response
            return handler(request, **kwargs)

        return limited_handler

    def reset(self) -> None:
        """Forget every key's count."""
        self._windows.clear()

    def _sweep(self, now: float) -> None:
        # Dropping ended windows once per period keeps memory proportional
        # to the clients seen in the last period, not since start-up.
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.period
        ended = [key for key, (start, _) in self._windows.items() if now - start >= self.period]
        for key in ended:
            del self._windows[key]
