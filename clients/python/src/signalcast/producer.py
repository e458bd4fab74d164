"""Publishing signals and ticks over HTTP ingest (``POST /v1/signals``, ``POST
/v1/ticks``; docs/history.md), for producers without the Rust client or Kafka.

Retries do not duplicate, within the server's de-duplication window: a signal's id is
made once, when the ``NewSignal`` is built, and the very same body is sent again on a
retry, so a signal the server had already stored before the answer was lost comes back
``duplicate`` instead of being routed twice. The server remembers the last 65,536 ids
(docs/ARCHITECTURE.md, "de-duplication window"; docs/outcomes.md, "Not yet"): an id sent
again after that many newer signals is routed (and tracked) a second time. The retries
here follow within seconds; a signal kept and sent again much later may not be caught.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

from . import _http
from ._backoff import Backoff
from .errors import HttpError

log = logging.getLogger("signalcast.producer")

PriceLike = Union[Decimal, str, int]

#: Retries: 0.5 s doubling to 10 s (a frozen dataclass, safe as a shared default).
RETRY_BACKOFF = Backoff(initial=0.5, max=10.0)
#: The server's bounds per request (``[http_ingest]``): 1,000 items, 1 MiB.
MAX_ITEMS = 1000
MAX_BYTES = 1 << 20


def now_micros() -> int:
    """The time now in microseconds since the Unix epoch, as the protocol counts."""
    return time.time_ns() // 1000


def _price(p: PriceLike) -> str:
    # Four decimal places, from a Decimal or a string: never through a binary float.
    return f"{Decimal(p):.4f}"


@dataclass(frozen=True)
class NewSignal:
    """A signal to publish (the fields of docs/kafka.md). ``id`` and ``generated_at``
    are fixed when the object is made, so that every retry sends the same signal."""

    source_id: str
    source_type: str
    symbol: str
    exchange: str
    category: str
    signal_type: str
    entry_price: PriceLike
    target_price: PriceLike
    stop_loss: PriceLike
    #: Percent; signals at or below 75.00 are refused (``below_confidence``).
    confidence: float
    #: Microseconds since the Unix epoch, after ``generated_at``.
    expires_at: int
    quantity_recommended: Optional[int] = None
    analysis: Any = None
    generated_at: int = field(default_factory=now_micros)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def to_json(self) -> Dict[str, Any]:
        return {
            "id": self.id,
            "source_id": self.source_id,
            "source_type": self.source_type,
            "symbol": self.symbol,
            "exchange": self.exchange,
            "category": self.category,
            "signal_type": self.signal_type,
            "entry_price": _price(self.entry_price),
            "target_price": _price(self.target_price),
            "stop_loss": _price(self.stop_loss),
            "quantity_recommended": self.quantity_recommended,
            "confidence": self.confidence,
            "generated_at": self.generated_at,
            "expires_at": self.expires_at,
            "analysis": self.analysis,
        }


@dataclass(frozen=True)
class NewTick:
    """A market tick to publish (needs the producer's tick right)."""

    symbol: str
    exchange: str
    bid: PriceLike
    ask: PriceLike
    last: PriceLike
    volume: int = 0
    ts: int = field(default_factory=now_micros)

    def to_json(self) -> Dict[str, Any]:
        return {
            "symbol": self.symbol,
            "exchange": self.exchange,
            "bid": _price(self.bid),
            "ask": _price(self.ask),
            "last": _price(self.last),
            "volume": self.volume,
            "ts": self.ts,
        }


@dataclass(frozen=True)
class IngestResult:
    """The server's answer for one item, in the order sent.

    ``accepted``: routed and stored. ``duplicate``: its id was routed already (after a
    retry: the first attempt got through). ``refused``: with a stable ``error`` code
    (``invalid_signal``, ``below_confidence``, ``expired``, ``foreign_source``, …) and a
    ``message``; sending it again will not help.
    """

    id: Optional[str]
    status: str
    error: Optional[str] = None
    message: Optional[str] = None

    @property
    def ok(self) -> bool:
        """Stored: now or by an earlier attempt."""
        return self.status in ("accepted", "duplicate")


class Producer:
    """A producer's HTTP ingest: ``Producer("http://127.0.0.1:8080", "model-alpha", key)``.

    A request that gets no answer (refused, reset, timed out), a 429 (after its
    ``Retry-After``) or a 502/503/504 is retried up to ``retries`` times with backoff;
    other refusals (401 bad credentials, 403, 413) raise ``HttpError`` at once. Lists
    longer than the server takes in one request are sent in several, in order.

    ``timeout`` bounds each request whole (connect to last byte of the answer), not each
    socket operation. When one request of a long list fails for good, its error is
    raised and the results of the requests before it are not returned (those items are
    stored all the same): publish the same ``NewSignal`` objects again, and the ones
    stored come back ``duplicate`` (within the de-duplication window above).
    """

    def __init__(
        self,
        base_url: str,
        producer_id: str,
        key: str,
        *,
        retries: int = 5,
        backoff: Backoff = RETRY_BACKOFF,
        timeout: float = 30.0,
    ) -> None:
        self.base_url = _http.http_base(base_url)
        credentials = base64.b64encode(f"{producer_id}:{key}".encode()).decode("ascii")
        self._auth = f"Basic {credentials}"
        self._retries = retries
        self._backoff = backoff
        self._timeout = timeout

    async def publish(self, signals: Sequence[NewSignal]) -> List[IngestResult]:
        """Publishes signals; one result per signal, in order, once all are stored."""
        return await self._post_all("/v1/signals", [s.to_json() for s in signals])

    async def publish_one(self, signal: NewSignal) -> IngestResult:
        return (await self.publish([signal]))[0]

    async def publish_ticks(self, ticks: Sequence[NewTick]) -> List[IngestResult]:
        """Publishes ticks (``accepted`` or ``refused`` each). Ticks carry no id: a retry
        after a lost answer may apply a tick twice, which sets the same price again."""
        return await self._post_all("/v1/ticks", [t.to_json() for t in ticks])

    async def _post_all(self, path: str, items: List[Dict[str, Any]]) -> List[IngestResult]:
        results: List[IngestResult] = []
        for batch in _batches([json.dumps(i, separators=(",", ":")).encode() for i in items]):
            results.extend(await self._post(path, batch))
        return results

    async def _post(self, path: str, lines: List[bytes]) -> List[IngestResult]:
        body = b"\n".join(lines)
        headers = {
            "Authorization": self._auth,
            "Content-Type": "application/x-ndjson",
            "Accept": "application/json",
        }
        attempt = 0
        while True:
            failure: Exception
            retry_after: Optional[float] = None
            try:
                resp = await _http.request("POST", self.base_url + path, headers, body, self._timeout)
            except (OSError, http.client.HTTPException) as e:
                # No answer: the items may or may not be stored. Sending the same body
                # again is safe, the ids make it so.
                failure = e
            else:
                if resp.status not in (429, 502, 503, 504):
                    return _results(_http.json_body(resp), len(lines))
                # Refused whole and nothing of it taken (429), or a proxy or the
                # server not ready: worth asking again.
                refusal = _http.error_of(resp)
                failure, retry_after = refusal, refusal.retry_after
            if attempt >= self._retries:
                raise failure
            delay = retry_after if retry_after is not None else self._backoff.delay(attempt)
            log.warning("POST %s failed (%s); retry %d in %.2f s", path, failure, attempt + 1, delay)
            attempt += 1
            await asyncio.sleep(delay)


def _results(body: Any, expected: int) -> List[IngestResult]:
    items = body.get("results") if isinstance(body, dict) else None
    if not isinstance(items, list) or len(items) != expected:
        raise HttpError(200, "bad_response", f"expected {expected} results, got {body!r:.200}")
    return [IngestResult(r.get("id"), r["status"], r.get("error"), r.get("message")) for r in items]


def _batches(lines: List[bytes]) -> Iterator[List[bytes]]:
    """Splits JSON lines into requests within the server's bounds (items and bytes)."""
    batch: List[bytes] = []
    size = 0
    for line in lines:
        if batch and (len(batch) == MAX_ITEMS or size + len(line) + 1 > MAX_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(line)
        size += len(line) + 1
    if batch:
        yield batch
