"""The gateway's HTTP API for clients (docs/gateway-openapi.yaml): past signals
(``GET /v1/signals/history``), the open ones (``GET /v1/signals/live``), the scoreboard
of sources (``GET /v1/sources``) and one symbol's figures (``GET /v1/signals/stats``).

Read with the same token as the socket, sent as ``Authorization: Bearer``, never in the
URL (whose query proxies and access logs record).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, AsyncIterator, Dict, List, Mapping, Optional, Sequence, Union
from urllib.parse import urlencode

from . import _http
from ._messages import Json, Signal
from ._token import TokenSource, resolve
from .errors import HttpError

#: A point in time: a ``datetime`` (naive means UTC), an RFC 3339 string, or integer
#: microseconds since the Unix epoch (as the signals' own ``*_at``/``*_ts`` fields).
TimeParam = Union[datetime, str, int]


@dataclass(frozen=True)
class HistoryPage:
    #: Newest first.
    items: List[Signal]
    #: The cursor of the next (older) page; ``None`` on the last one.
    next: Optional[str]
    #: Today's signals left out because the caller's daily quota is spent.
    withheld: int = 0


def _dec(value: Optional[str]) -> Optional[Decimal]:
    return None if value is None else Decimal(value)


@dataclass(frozen=True)
class Figures:
    """Counts and returns of a set of signals (docs/outcomes.md); rates and returns are
    ``None`` when there is nothing to compute them from."""

    signals: int
    open: int
    target_hit: int
    stop_hit: int
    expired: int
    closed: int
    #: target_hit / (target_hit + stop_hit).
    hit_rate: Optional[Decimal]
    mean_return_pct: Optional[Decimal]
    median_return_pct: Optional[Decimal]

    @classmethod
    def from_json(cls, d: Json) -> Figures:
        return cls(
            signals=d["signals"],
            open=d["open"],
            target_hit=d["target_hit"],
            stop_hit=d["stop_hit"],
            expired=d["expired"],
            closed=d["closed"],
            hit_rate=_dec(d.get("hit_rate")),
            mean_return_pct=_dec(d.get("mean_return_pct")),
            median_return_pct=_dec(d.get("median_return_pct")),
        )


@dataclass(frozen=True)
class Windows:
    """Figures over the signals routed in the last day, the last week, and all time."""

    day: Figures
    week: Figures
    all: Figures

    @classmethod
    def from_json(cls, d: Json) -> Windows:
        return cls(Figures.from_json(d["day"]), Figures.from_json(d["week"]), Figures.from_json(d["all"]))


@dataclass(frozen=True)
class SourceScore:
    source_id: str
    source_type: str
    windows: Windows
    #: The same windows per category that has signals.
    categories: Mapping[str, Windows]


@dataclass(frozen=True)
class Scoreboard:
    generated_at: int
    #: Most signals first.
    sources: List[SourceScore]

    def source(self, source_id: str) -> Optional[SourceScore]:
        return next((s for s in self.sources if s.source_id == source_id), None)


@dataclass(frozen=True)
class TypeFigures:
    figures: Figures
    mean_confidence: Optional[Decimal]


@dataclass(frozen=True)
class SymbolStats:
    symbol: str
    exchange: Optional[str]
    #: Over every signal of the symbol.
    figures: Figures
    mean_confidence: Optional[Decimal]
    #: Per signal type (buy, sell, hold, exit) that has signals.
    by_type: Mapping[str, TypeFigures]


def _time(t: TimeParam) -> str:
    if isinstance(t, datetime):
        if t.tzinfo is None:
            t = t.replace(tzinfo=timezone.utc)
        return t.isoformat()
    return str(t)


def _filters(
    symbol: Optional[str],
    exchange: Optional[str],
    category: Union[str, Sequence[str], None],
    signal_type: Optional[str],
    source: Optional[str],
    status: Optional[str],
    since: Optional[TimeParam],
    until: Optional[TimeParam],
    limit: Optional[int],
    cursor: Optional[str],
) -> Dict[str, Any]:
    """The query parameters of a history or live request (``None``: left out)."""
    return {
        "symbol": symbol,
        "exchange": exchange,
        "category": category if category is None or isinstance(category, str) else ",".join(category),
        "signal_type": signal_type,
        "source": source,
        "status": status,
        "from": None if since is None else _time(since),
        "to": None if until is None else _time(until),
        "limit": limit,
        "cursor": cursor,
    }


class Api:
    """History, live signals and the scoreboard, with a user's token.

    ``base_url`` is the gateway's HTTP base (``https://signals.example.com``); a
    WebSocket URL is accepted too (``wss://host/ws`` -> ``https://host``). ``token`` is a
    string or a callable (sync or async) asked before each request. Every refusal raises
    ``HttpError`` (400 bad parameter, 401, 403 origin, 429 with ``retry_after``, 503 no
    store); a request that got no answer raises ``OSError``.
    """

    def __init__(self, base_url: str, token: TokenSource, *, timeout: float = 30.0) -> None:
        self.base_url = _http.http_base(base_url)
        self._token = token
        self._timeout = timeout

    async def history(
        self,
        *,
        symbol: Optional[str] = None,
        exchange: Optional[str] = None,
        category: Union[str, Sequence[str], None] = None,
        signal_type: Optional[str] = None,
        source: Optional[str] = None,
        status: Optional[str] = None,
        since: Optional[TimeParam] = None,
        until: Optional[TimeParam] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
    ) -> HistoryPage:
        """One page of past signals the token may see, newest first. Pass the page's
        ``next`` as ``cursor`` for the next older page. ``since``/``until`` are the
        server's ``from`` (inclusive) and ``to`` (exclusive) on the routed time."""
        params = _filters(symbol, exchange, category, signal_type, source, status, since, until, limit, cursor)
        return await self._page("/v1/signals/history", params)

    async def history_pages(self, **params: Any) -> AsyncIterator[HistoryPage]:
        """Every page of ``history(**params)``, newest first, following each page's
        ``next`` until the last. Stop early with ``break``. A refusal raises (a 429 as
        well: wait ``retry_after`` seconds, then go on from the last page's ``next``)."""
        cursor = params.pop("cursor", None)
        while True:
            page = await self.history(cursor=cursor, **params)
            yield page
            if page.next is None:
                return
            cursor = page.next

    async def live(
        self,
        *,
        symbol: Optional[str] = None,
        exchange: Optional[str] = None,
        category: Union[str, Sequence[str], None] = None,
        signal_type: Optional[str] = None,
        source: Optional[str] = None,
        since: Optional[TimeParam] = None,
        until: Optional[TimeParam] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
    ) -> HistoryPage:
        """One page of the signals still open and unexpired, newest first, with
        ``history``'s filters but ``status`` (live signals are open)."""
        params = _filters(symbol, exchange, category, signal_type, source, None, since, until, limit, cursor)
        return await self._page("/v1/signals/live", params)

    async def sources(self) -> Scoreboard:
        """The scoreboard of every signal source (docs/outcomes.md)."""
        body = await self._get("/v1/sources", {})
        if not isinstance(body, dict) or not isinstance(body.get("sources"), list):
            raise HttpError(200, "bad_response", "the answer is not a scoreboard")
        return Scoreboard(
            generated_at=body["generated_at"],
            sources=[
                SourceScore(
                    source_id=s["source_id"],
                    source_type=s["source_type"],
                    windows=Windows.from_json(s["windows"]),
                    categories={k: Windows.from_json(v) for k, v in s.get("categories", {}).items()},
                )
                for s in body["sources"]
            ],
        )

    async def symbol_stats(self, symbol: str, exchange: Optional[str] = None) -> SymbolStats:
        """One symbol's figures by status and by signal type."""
        d = await self._get("/v1/signals/stats", {"symbol": symbol, "exchange": exchange})
        return SymbolStats(
            symbol=d["symbol"],
            exchange=d.get("exchange"),
            figures=Figures.from_json(d),
            mean_confidence=_dec(d.get("mean_confidence")),
            by_type={
                k: TypeFigures(Figures.from_json(v), _dec(v.get("mean_confidence")))
                for k, v in d.get("by_type", {}).items()
            },
        )

    async def _page(self, path: str, params: Mapping[str, Any]) -> HistoryPage:
        body = await self._get(path, params)
        if not isinstance(body, dict) or not isinstance(body.get("items"), list):
            raise HttpError(200, "bad_response", "the answer is not a page of signals")
        return HistoryPage(
            items=[Signal.from_json(item) for item in body["items"]],
            next=body.get("next"),
            withheld=body.get("withheld", 0),
        )

    async def _get(self, path: str, params: Mapping[str, Any]) -> Any:
        query = urlencode({k: v for k, v in params.items() if v is not None})
        url = f"{self.base_url}{path}" + (f"?{query}" if query else "")
        token = await resolve(self._token)
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        return _http.json_body(await _http.request("GET", url, headers, timeout=self._timeout))
