"""The public names of Jetforce 1.0.0 import from the package and from their modules."""

from __future__ import annotations

import importlib
import inspect

import pytest

import jetforce

PACKAGE_NAMES = [
    "CompositeApplication",
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

MODULE_NAMES = [
    ("jetforce.server", "GeminiServer"),
    ("jetforce.protocol", "GeminiProtocol"),
    ("jetforce.app.base", "DeferredResponse"),
    ("jetforce.app.base", "JetforceApplication"),
    ("jetforce.app.base", "RateLimiter"),
    ("jetforce.app.base", "Request"),
    ("jetforce.app.base", "Response"),
    ("jetforce.app.base", "RoutePattern"),
    ("jetforce.app.base", "Status"),
    ("jetforce.app.static", "StaticDirectoryApplication"),
    ("jetforce.app.composite", "CompositeApplication"),
    # Applications import these from the module of the class they extend.
    ("jetforce.app.static", "JetforceApplication"),
    ("jetforce.app.static", "Request"),
    ("jetforce.app.static", "Response"),
    ("jetforce.app.static", "RoutePattern"),
    ("jetforce.app.static", "Status"),
]


@pytest.mark.parametrize("name", PACKAGE_NAMES)
def test_name_importable_from_package(name: str) -> None:
    assert getattr(jetforce, name) is not None
    assert name in jetforce.__all__


@pytest.mark.parametrize("module_name, name", MODULE_NAMES)
def test_name_importable_from_module(module_name: str, name: str) -> None:
    module = importlib.import_module(module_name)
    value = getattr(module, name)

    # The same object under every path, so isinstance checks agree.
    assert value is getattr(jetforce, name, value)
    assert value is getattr(importlib.import_module("jetforce.app.base"), name, value)


def test_deferred_response_importable_from_package() -> None:
    from jetforce import DeferredResponse
    from jetforce.app.base import DeferredResponse as BaseDeferredResponse

    assert DeferredResponse is BaseDeferredResponse


def test_version_is_a_string() -> None:
    assert isinstance(jetforce.__version__, str)
    assert jetforce.__version__.count(".") >= 2


@pytest.mark.parametrize(
    "callable_name, expected_parameters",
    [
        (
            "GeminiServer",
            [
                "app", "reactor", "host", "port", "hostname", "certfile", "keyfile", "cafile", "capath",
                "proxy_protocol", "use_tls", "allow_transient_certs",
            ],
        ),
        ("JetforceApplication", ["rate_limiter"]),
        (
            "StaticDirectoryApplication",
            ["root_directory", "index_file", "cgi_directory", "default_lang", "rate_limiter"],
        ),
        ("CompositeApplication", ["application_map"]),
        ("RateLimiter", ["rate"]),
        ("Request", ["environ"]),
        ("Response", ["status", "meta", "body"]),
        ("DeferredResponse", ["send_status", "body"]),
        (
            "RoutePattern",
            ["path", "scheme", "hostname", "strict_hostname", "strict_port", "strict_trailing_slash"],
        ),
    ],
)
def test_positional_parameters_keep_their_order(callable_name: str, expected_parameters: list[str]) -> None:
    # Applications pass these positionally, so the order is part of the API.
    parameters = [
        parameter.name
        for parameter in inspect.signature(getattr(jetforce, callable_name)).parameters.values()
        if parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    ]
    assert parameters[: len(expected_parameters)] == expected_parameters


@pytest.mark.parametrize(
    "class_name, method_names",
    [
        ("GeminiServer", ["initialize", "run", "log_access", "log_message", "on_bind_interface", "buildProtocol"]),
        ("JetforceApplication", ["route", "default_callback", "__call__"]),
        ("RateLimiter", ["check", "apply", "get_key", "reset"]),
        ("RoutePattern", ["match"]),
        (
            "StaticDirectoryApplication",
            [
                "serve_static_file", "run_cgi_script", "load_file", "list_directory", "guess_mimetype",
                "add_extra_parameters", "route", "default_callback",
            ],
        ),
    ],
)
def test_public_methods_exist(class_name: str, method_names: list[str]) -> None:
    cls = getattr(jetforce, class_name)
    for method_name in method_names:
        assert callable(getattr(cls, method_name, None)), method_name


def test_server_protocol_class_is_gemini_protocol() -> None:
    assert jetforce.GeminiServer.protocol_class is jetforce.GeminiProtocol


def test_application_request_class_is_request() -> None:
    assert jetforce.JetforceApplication.request_class is jetforce.Request
