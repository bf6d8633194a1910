"""RateLimiter: rates, windows and the 44 response, on a Clock."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock

from jetforce import RateLimiter, Request, Response, Status
from jetforce.environ import ServerIdentity, build_environ


def request_from(remote_addr: str = "198.51.100.1", url: str = "gemini://localhost/") -> Request:
    return Request(build_environ(url, ServerIdentity("localhost", 1965), remote_addr, None))


@pytest.mark.parametrize(
    "rate, allowed, window_seconds",
    [
        pytest.param("5/s", 5, 1, id="per-second"),
        pytest.param("3/m", 3, 60, id="per-minute"),
        pytest.param("10/5m", 10, 300, id="per-five-minutes"),
        pytest.param("100/2h", 100, 7200, id="per-two-hours"),
        pytest.param("1000/d", 1000, 86400, id="per-day"),
        pytest.param("2/1s", 2, 1, id="explicit-one"),
        pytest.param(" 4/3d ", 4, 3 * 86400, id="surrounding-spaces"),
    ],
)
def test_rate_units_and_window(rate: str, allowed: int, window_seconds: int) -> None:
    clock = Clock()
    limiter = RateLimiter(rate, clock=clock)
    request = request_from()

    for _ in range(allowed):
        assert limiter.check(request) is None

    limited = limiter.check(request)
    assert isinstance(limited, Response)
    assert limited.status == Status.SLOW_DOWN
    assert limited.meta == str(window_seconds)

    # One second before the window ends the client still waits.
    clock.advance(window_seconds - 1)
    limited = limiter.check(request)
    assert limited is not None
    assert limited.meta == "1"

    clock.advance(1)
    assert limiter.check(request) is None


@pytest.mark.parametrize(
    "rate",
    ["", "5", "5/", "/s", "5/x", "five/s", "5/S", "0/s", "5/0m", "-1/s", "5/m/", "5 / m", "1.5/s"],
)
def test_invalid_rate_raises_value_error(rate: str) -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate)


def test_meta_counts_seconds_left_in_window() -> None:
    clock = Clock()
    limiter = RateLimiter("1/5m", clock=clock)
    limiter.check(request_from())

    clock.advance(100.5)
    limited = limiter.check(request_from())

    assert limited is not None
    # Rounded up, so a client that waits this long is never early.
    assert limited.meta == "200"


def test_window_starts_at_each_client_first_request() -> None:
    clock = Clock()
    limiter = RateLimiter("1/m", clock=clock)
    limiter.check(request_from("192.0.2.1"))
    clock.advance(30)
    limiter.check(request_from("192.0.2.2"))

    clock.advance(30)

    assert limiter.check(request_from("192.0.2.1")) is None
    assert limiter.check(request_from("192.0.2.2")) is not None


def test_default_key_is_remote_addr() -> None:
    limiter = RateLimiter("1/m", clock=Clock())
    request = request_from("203.0.113.9")

    assert limiter.get_key(request) == "203.0.113.9"
    assert limiter.check(request) is None
    assert limiter.check(request_from("203.0.113.9")) is not None
    assert limiter.check(request_from("203.0.113.10")) is None


def test_get_key_override_counts_by_other_key() -> None:
    class PerPathLimiter(RateLimiter):
        def get_key(self, request: Request) -> str:
            return request.path

    limiter = PerPathLimiter("1/m", clock=Clock())

    assert limiter.check(request_from("192.0.2.1", "gemini://localhost/a")) is None
    assert limiter.check(request_from("192.0.2.2", "gemini://localhost/a")) is not None
    assert limiter.check(request_from("192.0.2.1", "gemini://localhost/b")) is None


def test_get_key_none_exempts_request() -> None:
    class LocalExemptLimiter(RateLimiter):
        def get_key(self, request: Request) -> str | None:
            address = request.environ["REMOTE_ADDR"]
            return None if address == "127.0.0.1" else address

    limiter = LocalExemptLimiter("1/m", clock=Clock())

    for _ in range(5):
        assert limiter.check(request_from("127.0.0.1")) is None


def test_reset_forgets_counts() -> None:
    limiter = RateLimiter("1/h", clock=Clock())
    limiter.check(request_from())
    assert limiter.check(request_from()) is not None

    limiter.reset()

    assert limiter.check(request_from()) is None


def test_apply_wraps_route_handler() -> None:
    limiter = RateLimiter("2/m", clock=Clock())
    calls: list[dict[str, Any]] = []

    @limiter.apply
    def roll_dice(request: Request, **kwargs: Any) -> Response:
        """Roll a die."""
        calls.append(kwargs)
        return Response(Status.SUCCESS, "text/plain", "4")

    assert roll_dice(request_from(), sides="6").status == Status.SUCCESS
    assert roll_dice(request_from(), sides="20").status == Status.SUCCESS
    limited = roll_dice(request_from(), sides="6")

    assert limited.status == Status.SLOW_DOWN
    assert calls == [{"sides": "6"}, {"sides": "20"}]
    assert roll_dice.__name__ == "roll_dice"
    assert roll_dice.__doc__ == "Roll a die."


def test_ended_windows_are_dropped() -> None:
    clock = Clock()
    limiter = RateLimiter("1/s", clock=clock)
    for number in range(100):
        limiter.check(request_from(f"192.0.2.{number}"))

    clock.advance(2)
    limiter.check(request_from("198.51.100.1"))

    # Memory follows the clients of the current window, not every client seen.
    assert len(limiter._windows) == 1
