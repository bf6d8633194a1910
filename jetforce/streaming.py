"""
Writing an application's response to a transport, with back-pressure.

An application returns an iterable of body chunks: str, bytes, or a Deferred
that fires with one. ResponseStreamer pulls chunks one at a time and writes
them. It is registered with the transport as a streaming producer, so when
the transport's buffer fills, pauseProducing stops the pulling until
resumeProducing. A slow client therefore never makes the server buffer more
than one chunk of a file or a CGI pipe beyond the transport's own buffer.

The header is written together with the first non-empty chunk, so the
application may change its status until then. A faulty header, or a chunk
of the wrong type before that point, gets a server error status instead.
After that point the connection is closed and the fault logged, because a
second header cannot be sent.

Pulling runs synchronously until the transport pauses, a Deferred chunk is
pending, or MAX_BYTES_PER_TURN or MAX_CHUNKS_PER_TURN are reached, then
yields to the reactor so one large response cannot starve the other
connections.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .errors import InvalidResponseHeader, ServerFault
from .wire import format_response_header

if TYPE_CHECKING:
    from twisted.internet.interfaces import IConsumer, IReactorTime

# Bytes and chunks pulled in one reactor turn before other connections get
# a turn. Chunks are counted too, because a body of empty chunks, or of
# Deferreds that have already fired, writes little but can run forever.
MAX_BYTES_PER_TURN = 256 * 1024
MAX_CHUNKS_PER_TURN = 256

# Status sent when an application raises an exception.
APPLICATION_ERROR = 42


class StreamState(enum.Enum):
    PULLING = "pulling"
    WAITING = "waiting for a Deferred chunk"
    FINISHED = "finished"
    STOPPED = "stopped"


@dataclass
class ResponseOutcome:
    """Record of the header and bytes sent, for the access log."""

    status: int | None = None
    meta: str = ""
    bytes_sent: int = 0
    # False when the body was cut short by a fault or a disconnect.
    complete: bool = False


@implementer(IPushProducer)
class ResponseStreamer:
    def __init__(
        self,
        transport: IConsumer,
        clock: IReactorTime,
        log: Logger,
        peer: str,
        url: str,
        on_finished: Callable[[ResponseOutcome], None],
        on_pause: Callable[[], None] | None = None,
        on_resume: Callable[[], None] | None = None,
    ) -> None:
        self._transport = transport
        self._clock = clock
        self._log = log
        self._peer = peer
        self._url = url
        self._on_finished = on_finished
        self._on_pause = on_pause
        self._on_resume = on_resume

        self._status: object = None
        self._meta: object = None
        self._header_sent = False
        self.outcome = ResponseOutcome()

        self._state = StreamState.PULLING
        self._iterator: Iterator[Any] | None = None
        self._paused = False
        self._pulling = False
        self._turn_bytes = 0
        self._turn_chunks = 0
        self._pending: Deferred[Any] | None = None
        self._resume_call: IDelayedCall | None = None

    # The status callable handed to the application.

    def send_status(self, status: int, meta: str) -> None:
        if self._header_sent:
            self._log.warn(
                "{peer} application set status {status} for {url} after the body started; ignored",
                peer=self._peer,
                status=status,
                url=self._url,
            )
            return
        self._status = status
        self._meta = meta

    # Driving the body.

    def start(self, body: Iterable[Any]) -> None:
        """Register with the transport and write the body until done, paused or waiting."""
        self._transport.registerProducer(self, True)

        # A bare str, bytes or Deferred is taken as a body of one chunk;
        # iterating a str or bytes would yield characters or ints instead.
        if isinstance(body, (str, bytes, Deferred)):
            body = [body]
        try:
            self._iterator = iter(body)
        except TypeError:
            fault = ServerFault(f"application returned {type(body).__name__}, expected an iterable of chunks")
            self._fail(Failure(fault))
            return
        self._pull()

    def fail(self, failure: Failure) -> None:
        """Respond to a fault raised before the body existed, such as an exception from the application call."""
        self._transport.registerProducer(self, True)
        self._fail(failure)

    def _pull(self) -> None:
        if self._pulling:
            return
        self._pulling = True
        self._turn_bytes = 0
        self._turn_chunks = 0
        try:
            self._pull_until_blocked()
        finally:
            self._pulling = False

    def _pull_until_blocked(self) -> None:
        while self._state is StreamState.PULLING and not self._paused:
            if self._turn_bytes >= MAX_BYTES_PER_TURN or self._turn_chunks >= MAX_CHUNKS_PER_TURN:
                self._resume_call = self._clock.callLater(0, self._resume_after_turn)
                return

            assert self._iterator is not None
            try:
                chunk = next(self._iterator)
            except StopIteration:
                self._finish()
                return
            except Exception:
                self._fail(Failure())
                return

            if isinstance(chunk, Deferred):
                self._wait_for(chunk)
                continue
            self._write_chunk(chunk)

    def _resume_after_turn(self) -> None:
        self._resume_call = None
        self._pull()

    def _wait_for(self, deferred: Deferred[Any]) -> None:
        self._state = StreamState.WAITING
        self._pending = deferred
        # A Deferred that has already fired runs these callbacks at once,
        # which sets the state back to PULLING and the loop goes on.
        deferred.addCallbacks(self._on_chunk_ready, self._on_chunk_failed)

    def _on_chunk_ready(self, chunk: object) -> None:
        if self._state is not StreamState.WAITING:
            return
        self._pending = None
        self._state = StreamState.PULLING
        self._write_chunk(chunk)
        self._pull()

    def _on_chunk_failed(self, failure: Failure) -> None:
        if self._state is not StreamState.WAITING:
            # The Deferred that stopProducing() cancelled fails here with
            # CancelledError; the response is already abandoned.
            return
        self._pending = None
        self._state = StreamState.PULLING
        self._fail(failure)

    def _write_chunk(self, chunk: object) -> int:
        self._turn_chunks += 1
        # None is what a Deferred used only to wait (a delayed header, say)
        # fires with, so it is an empty chunk rather than a fault.
        if chunk is None:
            return 0
        if isinstance(chunk, str):
            data = chunk.encode("utf-8")
        elif isinstance(chunk, (bytes, bytearray, memoryview)):
            data = bytes(chunk)
        else:
            self._fail(Failure(ServerFault(f"application yielded {type(chunk).__name__}, expected str or bytes")))
            return 0

        if not data:
            return 0
        if not self._header_sent:
            header = self._take_header()
            if header is None:
                return 0
            data = header + data
        self._transport.write(data)
        self.outcome.bytes_sent += len(data)
        self._turn_bytes += len(data)
        return len(data)

    def _take_header(self) -> bytes | None:
        """Format the header for the status set so far, or respond to the fault and return None."""
        if self._status is None:
            self._fail(Failure(InvalidResponseHeader("application sent no status")))
            return None
        try:
            header = format_response_header(self._status, self._meta)
        except InvalidResponseHeader:
            self._fail(Failure())
            return None
        self._header_sent = True
        self.outcome.status = self._status  # type: ignore[assignment]
        self.outcome.meta = self._meta  # type: ignore[assignment]
        return header

    # Ending.

    def _finish(self) -> None:
        if not self._header_sent:
            header = self._take_header()
            if header is None:
                return
            self._transport.write(header)
            self.outcome.bytes_sent += len(header)
        self.outcome.complete = True
        self._end(StreamState.FINISHED)

    def _fail(self, failure: Failure) -> None:
        """Log an application fault, and send a server error status if the header is not out yet."""
        if self._state in (StreamState.FINISHED, StreamState.STOPPED):
            return

        error = failure.value
        if isinstance(error, ServerFault):
            self._log.error(
                "{peer} invalid response from application for {url}: {error}",
                peer=self._peer,
                url=self._url,
                error=error.meta,
            )
            status, meta = error.status, error.public_meta
        else:
            self._log.failure(
                "{peer} application raised an exception for {url}",
                failure,
                peer=self._peer,
                url=self._url,
            )
            status, meta = APPLICATION_ERROR, "Application error"

        if self._header_sent:
            self._log.warn(
                "{peer} response to {url} cut short after {count} bytes",
                peer=self._peer,
                url=self._url,
                count=self.outcome.bytes_sent,
            )
        else:
            header = format_response_header(status, meta)
            self._header_sent = True
            self._transport.write(header)
            self.outcome = ResponseOutcome(status=status, meta=meta, bytes_sent=len(header))
        self._end(StreamState.FINISHED)

    def _end(self, state: StreamState) -> None:
        self._state = state
        self._close_iterator()
        if self._resume_call is not None and self._resume_call.active():
            self._resume_call.cancel()
        self._resume_call = None
        self._transport.unregisterProducer()
        if state is StreamState.FINISHED:
            self._on_finished(self.outcome)

    def _close_iterator(self) -> None:
        # Closing a generator runs its finally blocks and context managers,
        # so an application's open file or subprocess is released at once.
        iterator, self._iterator = self._iterator, None
        if isinstance(iterator, Generator):
            try:
                iterator.close()
            except Exception:
                self._log.failure("{peer} closing the response body of {url} failed", peer=self._peer, url=self._url)

    # IPushProducer, called by the transport.

    def pauseProducing(self) -> None:
        if self._paused:
            return
        self._paused = True
        if self._on_pause is not None:
            self._on_pause()

    def resumeProducing(self) -> None:
        if not self._paused:
            return
        self._paused = False
        if self._on_resume is not None:
            self._on_resume()
        if self._state is StreamState.PULLING:
            self._pull()

    def stopProducing(self) -> None:
        """Abandon the body because the connection is gone, cancelling what it waits on."""
        if self._state in (StreamState.FINISHED, StreamState.STOPPED):
            return
        pending, self._pending = self._pending, None
        self._state = StreamState.STOPPED
        if pending is not None:
            pending.cancel()
        self._close_iterator()
        if self._resume_call is not None and self._resume_call.active():
            self._resume_call.cancel()
        self._resume_call = None
