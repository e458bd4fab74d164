"""The messages of the signalcast protocol as typed, immutable dataclasses.

docs/asyncapi.yaml is the contract. Prices are 4-decimal strings on the wire and
``Decimal`` here: never binary floats. Times are integer microseconds since the Unix
epoch, as the server sends them. Fields the server may add later are ignored, so a
newer server does not break an older client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Dict, Mapping, Optional, Tuple, Union

Json = Mapping[str, Any]

PRICES_CHANNEL = "prices_general"


def _price(value: Any) -> Optional[Decimal]:
    return None if value is None else Decimal(value)


# --- signals -----------------------------------------------------------------------


@dataclass(frozen=True)
class MarketSnapshot:
    """The latest tick of the symbol when the signal was routed."""

    bid: Decimal
    ask: Decimal
    last: Decimal
    volume: int
    tick_ts: int
    tick_age_ms: int

    @classmethod
    def from_json(cls, d: Json) -> MarketSnapshot:
        return cls(
            bid=Decimal(d["bid"]),
            ask=Decimal(d["ask"]),
            last=Decimal(d["last"]),
            volume=d["volume"],
            tick_ts=d["tick_ts"],
            tick_age_ms=d["tick_age_ms"],
        )


@dataclass(frozen=True)
class Outcome:
    """How a signal closed. Prices and return are ``None`` where unknown (informational
    signals, or no price ever seen)."""

    entry_price: Optional[Decimal]
    exit_price: Optional[Decimal]
    #: Percent, signed, 4 decimals.
    return_pct: Optional[Decimal]
    closed_at: int

    @classmethod
    def from_json(cls, d: Json) -> Outcome:
        return cls(
            entry_price=_price(d.get("entry_price")),
            exit_price=_price(d.get("exit_price")),
            return_pct=_price(d.get("return_pct")),
            closed_at=d["closed_at"],
        )


@dataclass(frozen=True)
class Signal:
    """A routed signal: the ``data`` of a SIGNAL_UPDATE, or an item of a history page."""

    id: str
    source_id: str
    source_type: str
    symbol: str
    exchange: str
    category: str
    signal_type: str
    entry_price: Decimal
    target_price: Decimal
    stop_loss: Decimal
    quantity_recommended: Optional[int]
    confidence: float
    generated_at: int
    expires_at: int
    market: Optional[MarketSnapshot]
    ingest_ts: int
    routed_ts: int
    sent_ts: Optional[int]
    analysis: Any
    #: ``open`` when routed; a later update of the same id closes it.
    status: str
    #: Present once ``status`` is not ``open``.
    outcome: Optional[Outcome] = None
    #: History and live items only: the seq the signal had on each channel the caller
    #: may read (``{"signals_premium": 388}``); what joins history and a live resume.
    channels: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: Json) -> Signal:
        market = d.get("market")
        outcome = d.get("outcome")
        return cls(
            id=d["id"],
            source_id=d["source_id"],
            source_type=d["source_type"],
            symbol=d["symbol"],
            exchange=d["exchange"],
            category=d["category"],
            signal_type=d["signal_type"],
            entry_price=Decimal(d["entry_price"]),
            target_price=Decimal(d["target_price"]),
            stop_loss=Decimal(d["stop_loss"]),
            quantity_recommended=d.get("quantity_recommended"),
            confidence=d["confidence"],
            generated_at=d["generated_at"],
            expires_at=d["expires_at"],
            market=None if market is None else MarketSnapshot.from_json(market),
            ingest_ts=d["ingest_ts"],
            routed_ts=d["routed_ts"],
            sent_ts=d.get("sent_ts"),
            analysis=d.get("analysis"),
            status=d.get("status", "open"),
            outcome=None if outcome is None else Outcome.from_json(outcome),
            channels=dict(d.get("channels") or {}),
        )

    @property
    def closed(self) -> bool:
        return self.status != "open"


# --- filters -----------------------------------------------------------------------


@dataclass(frozen=True)
class Filter:
    """A subscription's filter (docs/protocol.md, "Filters"); every part optional.

    ``symbols`` is a watchlist (``"TCS"`` on any exchange, ``"NSE:TCS"`` on one);
    ``add_symbols``/``remove_symbols`` alone change the current watchlist in steps.
    On ``prices_general`` only the symbol parts are allowed.
    """

    symbols: Optional[Tuple[str, ...]] = None
    add_symbols: Optional[Tuple[str, ...]] = None
    remove_symbols: Optional[Tuple[str, ...]] = None
    categories: Optional[Tuple[str, ...]] = None
    signal_types: Optional[Tuple[str, ...]] = None
    sources: Optional[Tuple[str, ...]] = None
    #: Percent.
    min_confidence: Optional[float] = None

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for name in ("symbols", "add_symbols", "remove_symbols", "categories", "signal_types", "sources"):
            value = getattr(self, name)
            if value is not None:
                out[name] = list(value)
        if self.min_confidence is not None:
            out["min_confidence"] = self.min_confidence
        return out

    @property
    def is_step(self) -> bool:
        """Only ``add_symbols``/``remove_symbols``: a change of the current watchlist."""
        steps = self.add_symbols is not None or self.remove_symbols is not None
        rest = (self.symbols, self.categories, self.signal_types, self.sources, self.min_confidence)
        if steps and any(v is not None for v in rest):
            raise ValueError("add_symbols/remove_symbols cannot go with other filter parts")
        return steps

    def applied_to(self, current: Optional[Filter]) -> Optional[Filter]:
        """The whole filter this one leaves in force on top of ``current``, as the
        server works it out (gateway-ws/src/protocol/filter.rs, ``Filter::update``): a
        step (``add_symbols``/``remove_symbols``) changes the current watchlist and keeps
        the rest of the current filter (none: the default, every symbol); any other
        filter replaces it. Raises ``ValueError`` where the server would refuse the
        step: one that would empty a watchlist (an empty list means every symbol)."""
        if not self.is_step:
            return self
        base = current if current is not None else Filter()
        had = tuple(base.symbols or ())
        remove = set(self.remove_symbols or ())
        kept = [s for s in had if s not in remove]
        if had and not kept and not self.add_symbols:
            raise ValueError(
                "remove_symbols would empty the watchlist: set_filter(channel, None) for every symbol, or unsubscribe"
            )
        symbols = _sorted_symbols(kept + list(self.add_symbols or ()))
        return Filter(
            symbols=symbols or None,
            categories=base.categories,
            signal_types=base.signal_types,
            sources=base.sources,
            min_confidence=base.min_confidence,
        )

    @classmethod
    def from_json(cls, d: Json) -> Filter:
        def seq(name: str) -> Optional[Tuple[str, ...]]:
            value = d.get(name)
            return None if value is None else tuple(value)

        return cls(
            symbols=seq("symbols"),
            add_symbols=seq("add_symbols"),
            remove_symbols=seq("remove_symbols"),
            categories=seq("categories"),
            signal_types=seq("signal_types"),
            sources=seq("sources"),
            min_confidence=d.get("min_confidence"),
        )


def _sorted_symbols(symbols: "list[str]") -> Tuple[str, ...]:
    """Deduplicated, in the server's order: by symbol, then exchange (any exchange
    first), ``"TCS"`` and ``"NSE:TCS"`` being the symbol TCS."""

    def key(s: str) -> Tuple[str, int, str]:
        exchange, _, symbol = s.rpartition(":")
        return (symbol, 1 if exchange else 0, exchange)

    return tuple(sorted(set(symbols), key=key))


@dataclass(frozen=True)
class Position:
    """A signal channel's place in its stream: what a resume asks for. Save it to resume
    in a later session (``Subscriber.subscribe(channel, since=position)``)."""

    epoch: str
    seq: int


# --- events the subscriber yields --------------------------------------------------


@dataclass(frozen=True)
class SignalUpdate:
    """A signal on a signal channel. A close of a signal arrives as ``SignalClosed``."""

    channel: str
    seq: int
    signal: Signal
    #: Sent for a SUBSCRIBE's snapshot (older than the head), before live messages.
    snapshot: bool = False


@dataclass(frozen=True)
class SignalClosed(SignalUpdate):
    """What became of a signal: the same id again, with its closing ``status``
    (``target_hit``, ``stop_hit``, ``expired``, ``closed``) and an outcome."""

    @property
    def outcome(self) -> Outcome:
        # The server sends an outcome with every close (docs/outcomes.md).
        assert self.signal.outcome is not None
        return self.signal.outcome


@dataclass(frozen=True)
class PriceUpdate:
    """A price of ``prices_general``: the tick, and how many updates of the symbol it
    stands for at the subscriber's rate (1: none merged)."""

    symbol: str
    exchange: str
    bid: Decimal
    ask: Decimal
    last: Decimal
    volume: int
    ts: int
    conflated: int
    channel: str = PRICES_CHANNEL


@dataclass(frozen=True)
class UserUpdate:
    """The user's entitlements changed (``user_<id>`` channel)."""

    channel: str
    tier: str
    categories: Tuple[str, ...]
    real_time: bool
    #: ``None``: unlimited.
    max_signals_per_day: Optional[int]


@dataclass(frozen=True)
class Notification:
    """A notice on ``user_<id>``, e.g. ``quota_exhausted``."""

    channel: str
    event: str
    message: str


@dataclass(frozen=True)
class Welcome:
    """The connection is open and authenticated."""

    user: str
    tier: str
    real_time: bool
    #: Unix seconds.
    token_expires_at: int
    heartbeat_interval_s: int
    server: str


@dataclass(frozen=True)
class Subscribed:
    """The server holds the subscription. ``epoch``/``head`` on signal channels only."""

    channel: str
    epoch: Optional[str] = None
    head: Optional[int] = None
    #: Present when the SUBSCRIBE was a resume (carried ``since``).
    recovered: Optional[bool] = None
    #: The subscription's filter, normalized by the server.
    filter: Optional[Filter] = None
    #: ``prices_general``: the rate in force, updates per second per symbol.
    max_frequency: Optional[int] = None


@dataclass(frozen=True)
class Resumed:
    """A signal channel was resubscribed after a reconnect (or from a saved position).

    ``recovered=True``: everything missed follows, in order, nothing twice.
    ``recovered=False``: some was lost (a server that lost its store, a position older
    than the server keeps); only live messages follow from ``head``. Read what was
    missed with ``Api.history`` down to ``since.seq``.
    """

    channel: str
    recovered: bool
    #: What the client asked from.
    since: Position
    #: The channel as the server has it now.
    epoch: str
    head: int


@dataclass(frozen=True)
class Unsubscribed:
    channel: str
    #: ``client`` (asked for) or ``entitlement`` (the user lost the right to it).
    reason: str


@dataclass(frozen=True)
class Refused:
    """An ERROR: a request the server refused; the connection stays open."""

    code: str
    message: str
    channel: Optional[str] = None


@dataclass(frozen=True)
class SystemEvent:
    """A SYSTEM_MESSAGE other than the welcome: ``token_expiring``, ``token_refreshed``,
    ``drain``, ``suspended``, ``entitlements_changed``. ``data`` is the whole message."""

    event: str
    data: Mapping[str, Any]


@dataclass(frozen=True)
class Disconnected:
    """The connection closed or could not be opened. ``reconnecting`` says whether the
    subscriber will try again (after ``delay`` seconds)."""

    code: int
    reason: str
    reconnecting: bool
    delay: float = 0.0
    #: Why the connection could not be opened (refused handshake, network, token callable).
    error: Optional[BaseException] = None


# Close codes the server uses (docs/protocol.md, "Close codes").
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_ABNORMAL = 1006  # no close frame: the connection was cut
CLOSE_TRY_AGAIN_LATER = 1013  # every hub shard was full: reconnect after a backoff
CLOSE_TOKEN_EXPIRED = 4001
CLOSE_SUSPENDED = 4003
CLOSE_HEARTBEAT_TIMEOUT = 4004
CLOSE_SLOW_CONSUMER = 4008


def signal_update(msg: Json) -> SignalUpdate:
    signal = Signal.from_json(msg["data"])
    cls = SignalClosed if signal.closed else SignalUpdate
    return cls(channel=msg["channel"], seq=msg["seq"], signal=signal, snapshot=bool(msg.get("snapshot")))


def price_update(msg: Json) -> PriceUpdate:
    d = msg["data"]
    return PriceUpdate(
        symbol=d["symbol"],
        exchange=d["exchange"],
        bid=Decimal(d["bid"]),
        ask=Decimal(d["ask"]),
        last=Decimal(d["last"]),
        volume=d["volume"],
        ts=d["ts"],
        conflated=d.get("conflated", 1),
        channel=msg.get("channel", PRICES_CHANNEL),
    )


def user_update(msg: Json) -> UserUpdate:
    d = msg["data"]
    return UserUpdate(
        channel=msg["channel"],
        tier=d["tier"],
        categories=tuple(d.get("categories", ())),
        real_time=d["real_time"],
        max_signals_per_day=d.get("max_signals_per_day"),
    )


def notification(msg: Json) -> Notification:
    d = msg["data"]
    return Notification(channel=msg["channel"], event=d["event"], message=d.get("message", ""))


def welcome(d: Json) -> Welcome:
    return Welcome(
        user=d["user"],
        tier=d["tier"],
        real_time=d["real_time"],
        token_expires_at=d["token_expires_at"],
        heartbeat_interval_s=d["heartbeat_interval_s"],
        server=d.get("server", ""),
    )


def subscribed(msg: Json) -> Subscribed:
    f = msg.get("filter")
    return Subscribed(
        channel=msg["channel"],
        epoch=msg.get("epoch"),
        head=msg.get("seq"),
        recovered=msg.get("recovered"),
        filter=None if f is None else Filter.from_json(f),
        max_frequency=msg.get("max_frequency"),
    )


#: Everything ``async for event in subscriber`` can yield (``SignalClosed`` is a
#: ``SignalUpdate``).
Event = Union[
    SignalUpdate,
    PriceUpdate,
    UserUpdate,
    Notification,
    Welcome,
    Subscribed,
    Resumed,
    Unsubscribed,
    Refused,
    SystemEvent,
    Disconnected,
]
