"""
Log rendering: the access log line and diagnostics from twisted.logger events.

The server and its protocols log through twisted.logger with named fields.
LogRenderer turns each event into one line (plus the traceback of a
failure) and hands it to a sink. GeminiServer points the sink at its
overridable log_message() hook, so applications written for Jetforce 1.0.0
that override the hook still receive every message.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from twisted.logger import ILogObserver, LogEvent, LogLevel, formatEvent
from zope.interface import implementer

_ACCESS_TIME_FORMAT = "%d/%b/%Y:%H:%M:%S %z"
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


def format_access_line(
    remote_addr: str,
    url: str,
    status: int | None,
    meta: str,
    bytes_sent: int,
    when: float | None = None,
) -> str:
    """
    Format one access log line, in the style of the common log format.

    `<addr> [<dd/Mon/YYYY:HH:MM:SS +zzzz>] "<url>" <status> "<meta>" <bytes sent>`,
    where bytes sent counts the header and the body. Quotes and backslashes
    in the URL and meta are escaped so that the line splits unambiguously.
    A response that never got a header logs the status as "-".
    """
    timestamp = time.strftime(_ACCESS_TIME_FORMAT, time.localtime(when))
    status_text = "-" if status is None else str(status)
    return f'{remote_addr} [{timestamp}] "{_escape(url)}" {status_text} "{_escape(meta)}" {bytes_sent}'


def format_address(host: str, port: int) -> str:
    """Format host and port for messages, with an IPv6 host in brackets; an empty host is 0.0.0.0."""
    host = host or "0.0.0.0"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _escape(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    # Control characters cannot reach a header or a valid URL, but a
    # rejected request line may carry them; they must not split the log line.
    return _CONTROL_CHARACTERS.sub(lambda match: f"\\x{ord(match.group()):02x}", escaped)


@implementer(ILogObserver)
class LogRenderer:
    """twisted.logger observer that renders events at or above a level into lines."""

    def __init__(self, sink: Callable[[str], None], level: LogLevel = LogLevel.info) -> None:
        self.sink = sink
        self.level = level

    def __call__(self, event: LogEvent) -> None:
        level = event.get("log_level", LogLevel.info)
        if level < self.level:
            return

        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text = f"{text}\n{failure.getTraceback().rstrip()}"
        self.sink(f"[{level.name}] {text}")
