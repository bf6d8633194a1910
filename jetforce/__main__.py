"""
The jetforce command: a static file and CGI server for one directory.

Every option of Jetforce 1.0.0 keeps its name and default. A bad value ends
the program with one line on stderr and exit status 2 (usage) or 1
(start-up failure), never a traceback.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path
from typing import NoReturn

from twisted.internet.error import CannotListenError
from twisted.logger import globalLogBeginner

from .__version__ import __version__
from .app.base import RateLimiter
from .app.cgi import DEFAULT_CGI_TIMEOUT
from .app.static import StaticDirectoryApplication
from .certificates import ensure_self_signed_certificate
from .logs import format_address
from .protocol import REQUEST_TIMEOUT, WRITE_TIMEOUT
from .server import DEFAULT_BACKLOG, DEFAULT_MAX_CONNECTIONS, SHUTDOWN_TIMEOUT, GeminiServer
from .tls import CertificateMode, GeminiTLSOptions, ServerCredentials, TLSConfigurationError
from .workers import WorkerSupervisor, open_listening_sockets

PROGRAM = "jetforce"

DESCRIPTION = """\
A Gemini server with a static file and CGI application. It serves --dir
over TLS and, with --allow-transient-certs, accepts the self-signed client
certificates that Gemini clients make to identify their users.
"""


class UsageError(Exception):
    """A command-line value that cannot be used."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line on stderr instead of usage plus message."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog=PROGRAM, description=DESCRIPTION)
    parser.add_argument("-V", "--version", action="version", version=f"{PROGRAM} {__version__}")

    server = parser.add_argument_group("server configuration")
    server.add_argument(
        "--host",
        default="127.0.0.1",
        help='address to listen on; "" listens on every IPv4 and IPv6 address (default: 127.0.0.1)',
    )
    server.add_argument("--port", type=int, default=1965, help="TCP port to listen on (default: 1965)")
    server.add_argument(
        "--hostname",
        default="localhost",
        help="hostname that URLs must name; also the name in the self-signed certificate (default: localhost)",
    )
    server.add_argument(
        "--tls-certfile",
        metavar="FILE",
        help="server certificate in PEM, followed by any intermediates "
        "(default: a self-signed certificate for --hostname, made once and kept)",
    )
    server.add_argument("--tls-keyfile", metavar="FILE", help="private key in PEM for --tls-certfile")
    server.add_argument(
        "--tls-cafile",
        metavar="FILE",
        help="CA certificates in PEM that client certificates are verified against",
    )
    server.add_argument(
        "--tls-capath",
        metavar="DIR",
        help="directory of hashed CA certificates that client certificates are verified against",
    )
    server.add_argument(
        "--allow-transient-certs",
        action="store_true",
        help="request client certificates and accept those that do not verify (self-signed, unknown "
        "issuer, expired); the verdict goes to applications as TLS_CLIENT_AUTHORISED",
    )
    server.add_argument(
        "--no-tls",
        dest="use_tls",
        action="store_false",
        help="serve plain TCP, for use behind a TLS-terminating proxy",
    )
    server.add_argument(
        "--proxy-protocol",
        action="store_true",
        help="read a HAProxy PROXY protocol header (v1 or v2) before each connection",
    )
    server.add_argument(
        "--request-timeout",
        type=_positive_seconds,
        default=REQUEST_TIMEOUT,
        metavar="SECONDS",
        help=f"close connections that send no complete request line this long after accept "
        f"(default: {REQUEST_TIMEOUT:g})",
    )
    server.add_argument(
        "--write-timeout",
        type=_positive_seconds,
        default=WRITE_TIMEOUT,
        metavar="SECONDS",
        help=f"abort connections whose client reads nothing of a pending response for this long "
        f"(default: {WRITE_TIMEOUT:g})",
    )
    server.add_argument(
        "--max-connections",
        type=_positive_int,
        default=DEFAULT_MAX_CONNECTIONS,
        metavar="COUNT",
        help=f"open connections at which the server stops accepting new ones until some close; "
        f"lowered to fit the open file limit (default: {DEFAULT_MAX_CONNECTIONS})",
    )
    server.add_argument(
        "--backlog",
        type=_positive_int,
        default=DEFAULT_BACKLOG,
        metavar="COUNT",
        help=f"connections the kernel queues before they are accepted (default: {DEFAULT_BACKLOG})",
    )
    server.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="COUNT",
        help="server processes sharing the listening port, to use more than one CPU core (default: 1)",
    )
    server.add_argument(
        "--shutdown-timeout",
        type=_positive_seconds,
        default=SHUTDOWN_TIMEOUT,
        metavar="SECONDS",
        help=f"on SIGTERM or SIGINT, time that responses in flight get to finish before they are cut "
        f"(default: {SHUTDOWN_TIMEOUT:g}); a second signal exits at once",
    )

    static = parser.add_argument_group("static file configuration")
    static.add_argument("--dir", default=".", metavar="DIR", help="root directory to serve (default: the current directory)")
    static.add_argument(
        "--cgi-dir",
        default="cgi-bin",
        metavar="DIR",
        help="directory below --dir whose executable files run as CGI scripts (default: cgi-bin)",
    )
    static.add_argument(
        "--cgi-timeout",
        type=_positive_seconds,
        default=DEFAULT_CGI_TIMEOUT,
        metavar="SECONDS",
        help=f"seconds a CGI script has to write its header line before it is ended and 42 is "
        f"answered (default: {DEFAULT_CGI_TIMEOUT:g})",
    )
    static.add_argument(
        "--index-file",
        default="index.gmi",
        metavar="FILE",
        help="file served for a directory request (default: index.gmi)",
    )
    static.add_argument(
        "--default-lang",
        metavar="LANG",
        help='language added to text/gemini responses as "; lang=LANG", such as en or fr-CA',
    )
    static.add_argument(
        "--rate-limit",
        metavar="RATE",
        help="requests allowed per client address, as N/[P]u with u one of s, m, h, d, "
        "such as 60/5m; further requests are answered 44",
    )
    return parser


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"seconds must be greater than 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def check_arguments(args: argparse.Namespace) -> None:
    """Raise UsageError for an option value that cannot be used."""
    root = Path(args.dir)
    if not root.is_dir():
        raise UsageError(f"root directory {args.dir} does not exist or is not a directory (--dir)")
    if args.tls_keyfile and not args.tls_certfile:
        raise UsageError("--tls-keyfile needs --tls-certfile")
    for option, path in (
        ("--tls-certfile", args.tls_certfile),
        ("--tls-keyfile", args.tls_keyfile),
        ("--tls-cafile", args.tls_cafile),
    ):
        if path and not Path(path).is_file():
            raise UsageError(f"{option} {path} does not exist or is not a file")
    if args.tls_capath and not Path(args.tls_capath).is_dir():
        raise UsageError(f"--tls-capath {args.tls_capath} does not exist or is not a directory")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be from 0 to 65535, got {args.port}")
    if args.rate_limit:
        try:
            RateLimiter(args.rate_limit)
        except ValueError as error:
            raise UsageError(f"--rate-limit: {error}") from None


def build_server(args: argparse.Namespace, sockets: list[socket.socket] | None = None) -> GeminiServer:
    """Build the server from checked option values."""
    rate_limiter = RateLimiter(args.rate_limit) if args.rate_limit else None
    app = StaticDirectoryApplication(
        root_directory=Path(args.dir),
        index_file=args.index_file,
        cgi_directory=args.cgi_dir,
        default_lang=args.default_lang,
        rate_limiter=rate_limiter,
        cgi_timeout=args.cgi_timeout,
    )
    return GeminiServer(
        app,
        host=args.host,
        port=args.port,
        hostname=args.hostname,
        certfile=args.tls_certfile,
        keyfile=args.tls_keyfile,
        cafile=args.tls_cafile,
        capath=args.tls_capath,
        proxy_protocol=args.proxy_protocol,
        use_tls=args.use_tls,
        allow_transient_certs=args.allow_transient_certs,
        request_timeout=args.request_timeout,
        write_timeout=args.write_timeout,
        backlog=args.backlog,
        max_connections=args.max_connections,
        shutdown_timeout=args.shutdown_timeout,
        sockets=sockets,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    try:
        check_arguments(args)
    except UsageError as error:
        return _fail(str(error), status=2)

    # Without a beginning, Twisted's global log keeps the last 65536 events
    # in memory for a future observer. The server renders the events it
    # needs through its own observer, so the buffer is not needed.
    globalLogBeginner.beginLoggingTo([], discardBuffer=True, redirectStandardIO=False)

    if args.workers > 1:
        return run_workers(args)
    return serve(args)


def serve(args: argparse.Namespace, sockets: list[socket.socket] | None = None) -> int:
    """Build, start and run one server process until it stops; return its exit status."""
    server = build_server(args, sockets)
    # Start-up lines are held back until the server listens, so that a
    # start that fails prints its one error line and nothing else.
    held_lines: list[str] = []
    # The instance attribute shadows the method until the del below. mypy
    # compares the assigned callable with the unbound method, self included.
    server.log_message = held_lines.append  # type: ignore[assignment]
    try:
        cgi = f"CGI scripts in {args.cgi_dir}" if args.cgi_dir.strip("/") else "CGI off"
        server.log.info("Serving {root}, {cgi}", root=str(server.app.root), cgi=cgi)
        server.initialize()
    except TLSConfigurationError as error:
        return _fail(f"TLS configuration failed: {error}")
    except CannotListenError as error:
        reason = error.socketError.strerror if isinstance(error.socketError, OSError) else error.socketError
        return _fail(f"cannot listen on {format_address(error.interface, error.port)}: {reason}")
    except (OSError, ValueError) as error:
        return _fail(f"start-up failed: {error}")

    del server.log_message
    for line in held_lines:
        server.log_message(line)
    server.run_reactor()
    server.log.info("Stopped")
    return 0


def run_workers(args: argparse.Namespace) -> int:
    """Open the sockets and check the TLS files once, then fork the workers that serve."""
    try:
        sockets = open_listening_sockets(args.host, args.port, args.backlog)
        if args.use_tls:
            _check_tls_files(args)
    except TLSConfigurationError as error:
        return _fail(f"TLS configuration failed: {error}")
    except OSError as error:
        return _fail(error.strerror or str(error))

    supervisor = WorkerSupervisor(args.workers, lambda number: serve(args, sockets))
    return supervisor.run()


def _check_tls_files(args: argparse.Namespace) -> None:
    # The self-signed certificate is made here, before forking, so that the
    # workers load one file instead of racing to write it.
    if not args.tls_certfile:
        certfile, keyfile, _ = ensure_self_signed_certificate(args.hostname)
        args.tls_certfile, args.tls_keyfile = str(certfile), str(keyfile)
    credentials = ServerCredentials(
        args.tls_certfile, args.tls_keyfile or args.tls_certfile, args.tls_cafile, args.tls_capath
    )
    mode = CertificateMode.select(args.allow_transient_certs, credentials.has_ca)
    GeminiTLSOptions(credentials, mode)


def _fail(message: str, status: int = 1) -> int:
    sys.stderr.write(f"{PROGRAM}: error: {message}\n")
    return status



if __name__ == "__main__":
    sys.exit(main())
