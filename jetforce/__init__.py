"""
jetforce: a Gemini protocol server and application framework.

The public names of Jetforce 1.0.0 are importable from here and from the
modules they live in.
"""

from .__version__ import __version__
from .app.base import (
    DeferredResponse,
    JetforceApplication,
    RateLimiter,
    Request,
    Response,
    RoutePattern,
    Status,
)
from .app.composite import CompositeApplication
from .app.static import StaticDirectoryApplication
from .protocol import GeminiProtocol
from .server import GeminiServer

__all__ = [
    "CompositeApplication",
    "DeferredResponse",
    "GeminiProtocol",
    "GeminiServer",
    "JetforceApplication",
    "RateLimiter",
    "Request",
    "Response",
    "RoutePattern",
    "StaticDirectoryApplication",
    "Status",
    "__version__",
]
