"""Status: the Gemini status codes under their Jetforce 1.0.0 names."""

from __future__ import annotations

import pytest

from jetforce import Status

EXPECTED_STATUSES = {
    "INPUT": 10,
    "SENSITIVE_INPUT": 11,
    "SUCCESS": 20,
    "REDIRECT_TEMPORARY": 30,
    "REDIRECT_PERMANENT": 31,
    "TEMPORARY_FAILURE": 40,
    "SERVER_UNAVAILABLE": 41,
    "CGI_ERROR": 42,
    "PROXY_ERROR": 43,
    "SLOW_DOWN": 44,
    "PERMANENT_FAILURE": 50,
    "NOT_FOUND": 51,
    "GONE": 52,
    "PROXY_REQUEST_REFUSED": 53,
    "BAD_REQUEST": 59,
    "CLIENT_CERTIFICATE_REQUIRED": 60,
    "CERTIFICATE_NOT_AUTHORISED": 61,
    "CERTIFICATE_NOT_VALID": 62,
}


@pytest.mark.parametrize("name, value", EXPECTED_STATUSES.items())
def test_status_value(name: str, value: int) -> None:
    status = getattr(Status, name)
    assert status == value
    assert isinstance(status, int)
    assert Status(value) is status


def test_status_has_no_other_names() -> None:
    assert {status.name: status.value for status in Status} == EXPECTED_STATUSES


@pytest.mark.parametrize("status", list(Status))
def test_status_formats_as_two_digits(status: Status) -> None:
    # Applications build meta lines and log lines with f-strings and %d.
    assert f"{status}" == str(status.value)
    assert "%d" % status == str(status.value)
