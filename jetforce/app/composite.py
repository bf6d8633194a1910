"""Virtual hosting: one application per hostname."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..wire import normalize_hostname
from .base import EnvironDict, Request, SendStatus, Status

Application = Any


class CompositeApplication:
    """
    Dispatcher of each request to the application registered for its URL's host.

    application_map maps hostnames (any case, Unicode or punycode) to
    applications; the key None names the default for every other host. The
    chosen application gets HOSTNAME set to the request's host, so its
    routes treat that host as their own. A host with no application and no
    default is answered 53.
    """

    def __init__(self, application_map: Mapping[str | None, Application]) -> None:
        self.application_map: dict[str | None, Application] = {}
        for hostname, app in application_map.items():
            key = None if hostname is None else normalize_hostname(hostname)
            self.application_map[key] = app

    def __call__(self, environ: EnvironDict, send_status: SendStatus) -> Iterable[Any]:
        try:
            request = Request(environ)
        except ValueError as error:
            send_status(Status.BAD_REQUEST, f"Invalid URL: {error}"[:200])
            return []

        app = self.application_map.get(request.hostname)
        if app is None:
            app = self.application_map.get(None)
        if app is None:
            send_status(Status.PROXY_REQUEST_REFUSED, "Proxy request refused")
            return []

        environ = {**environ, "HOSTNAME": request.hostname}
        return app(environ, send_status)
