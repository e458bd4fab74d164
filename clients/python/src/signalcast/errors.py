"""The errors the package raises."""

from __future__ import annotations

from typing import Optional


class SignalcastError(Exception):
    """Base of every error raised by this package."""


class HttpError(SignalcastError):
    """A request the HTTP API refused: the status and the body's ``{error, message}``.

    ``code`` is the stable code (``bad_request``, ``unauthorized``, ``rate_limited``,
    ``no_store``, …), or ``http_<status>`` when the answer was not the API's JSON (a
    proxy's error page, say). ``retry_after`` is set on 429 (and 503 when the server
    says): the seconds to wait before asking again.
    """

    def __init__(self, status: int, code: str, message: str, retry_after: Optional[float] = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
