"""One HTTP request with the standard library, run off the event loop.

``http.client`` is blocking, so each request runs in ``asyncio.to_thread``: the event
loop (and the subscriber's socket) stays free while it waits. Why not an async HTTP
library: the client makes few, small requests (history pages, ingest batches, the
scoreboard), for which a thread each costs nothing that matters, and every dependency
added is one more thing for users to pin and audit. Each request opens its own
connection, so no connection is ever shared between threads.

``timeout`` bounds the whole request (connect, send, the answer to its last byte), not
each socket operation: ``http.client``'s own timeout is per operation, so a server that
trickles its answer a byte at a time could otherwise hold a request for ever. At the
deadline the request's socket is shut down, which ends its thread too.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
from dataclasses import dataclass
from typing import Any, Mapping, Optional
from urllib.parse import urlsplit, urlunsplit

from .errors import HttpError


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes


class _Handle:
    """The connection of a request in flight, for the event loop to cut at the deadline."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.conn: Optional[http.client.HTTPConnection] = None
        self.cut = False

    def set(self, conn: http.client.HTTPConnection) -> None:
        with self.lock:
            self.conn = conn
            if self.cut:
                raise TimeoutError("the request's deadline passed")

    def abort(self) -> None:
        with self.lock:
            self.cut = True
            sock = self.conn.sock if self.conn is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked on it
            except OSError:
                pass


def _request_sync(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: Optional[bytes],
    timeout: float,
    handle: Optional[_Handle] = None,
) -> Response:
    parts = urlsplit(url)
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(parts.netloc, timeout=timeout)
    elif parts.scheme == "http":
        conn = http.client.HTTPConnection(parts.netloc, timeout=timeout)
    else:
        raise ValueError(f"not an http(s) URL: {url}")
    if handle is not None:
        handle.set(conn)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    try:
        conn.request(method, target, body=body, headers=dict(headers))
        resp = conn.getresponse()
        data = resp.read()
        # Header names lowercased: HTTP says they are case-insensitive.
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


async def request(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: Optional[bytes] = None,
    timeout: float = 30.0,
) -> Response:
    """Sends one request, answered within ``timeout`` seconds in all (not per socket
    operation). Raises ``OSError`` (refused, reset, timed out: ``TimeoutError``) or
    ``http.client.HTTPException`` (a malformed or missing answer) when no answer came."""
    handle = _Handle()
    thread = asyncio.ensure_future(asyncio.to_thread(_request_sync, method, url, headers, body, timeout, handle))
    try:
        return await asyncio.wait_for(asyncio.shield(thread), timeout)
    except asyncio.TimeoutError:
        handle.abort()
        # The thread ends now that its socket is shut; its outcome is not wanted.
        thread.add_done_callback(lambda t: t.cancelled() or t.exception())
        raise TimeoutError(f"{method} {urlsplit(url).path}: no whole answer within {timeout} s") from None
    except asyncio.CancelledError:
        handle.abort()
        thread.add_done_callback(lambda t: t.cancelled() or t.exception())
        raise


def _retry_after(headers: Mapping[str, str]) -> Optional[float]:
    value = headers.get("retry-after", "").strip()
    return float(value) if value.isdigit() else None


def error_of(resp: Response) -> HttpError:
    """The refusal a non-2xx answer stands for: the API's ``{error, message}``, or
    ``http_<status>`` when the body is not the API's (a proxy's error page, say)."""
    text = resp.body.decode("utf-8", errors="replace")
    retry = _retry_after(resp.headers)
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return HttpError(resp.status, body["error"], str(body.get("message", "")), retry)
    return HttpError(resp.status, f"http_{resp.status}", text[:200] or f"HTTP {resp.status}", retry)


def json_body(resp: Response) -> Any:
    """The parsed JSON of a 2xx answer; otherwise raises ``error_of(resp)``."""
    if not 200 <= resp.status < 300:
        raise error_of(resp)
    try:
        return json.loads(resp.body)
    except ValueError:
        raise HttpError(resp.status, "bad_response", "the answer is not JSON") from None


def http_base(url: str) -> str:
    """The HTTP(S) base of a gateway from its WebSocket (or HTTP) URL: the scheme made
    http(s), a last path segment ``ws`` taken off, the query and fragment dropped
    (``wss://host/prefix/ws?x`` -> ``https://host/prefix``)."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https", "http": "http", "https": "https"}.get(parts.scheme)
    if scheme is None:
        raise ValueError(f"not a ws(s) or http(s) URL: {url}")
    path = parts.path.rstrip("/")
    if path.endswith("/ws") or path == "ws":
        path = path[: -len("ws")].rstrip("/")
    return urlunsplit((scheme, parts.netloc, path, "", ""))

