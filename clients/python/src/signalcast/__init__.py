"""signalcast: the Python client of the signalcast trading-signal server.

- ``Subscriber``: signals, outcomes and prices over WebSocket, with reconnect, resume,
  token refresh, filters, watchlists and snapshots, as typed events.
- ``Producer``: publish signals and ticks over HTTP ingest; retries de-duplicated by
  signal id within the server's window (its last 65,536 ids).
- ``Api``: history, the live list and the scoreboard over HTTP.
"""

from ._backoff import Backoff
from ._http import http_base
from ._messages import (
    CLOSE_ABNORMAL,
    CLOSE_GOING_AWAY,
    CLOSE_HEARTBEAT_TIMEOUT,
    CLOSE_NORMAL,
    CLOSE_SLOW_CONSUMER,
    CLOSE_SUSPENDED,
    CLOSE_TOKEN_EXPIRED,
    Disconnected,
    Event,
    Filter,
    MarketSnapshot,
    Notification,
    Outcome,
    Position,
    PriceUpdate,
    Refused,
    Resumed,
    Signal,
    SignalClosed,
    SignalUpdate,
    Subscribed,
    SystemEvent,
    Unsubscribed,
    UserUpdate,
    Welcome,
)
from ._token import TokenSource
from .api import Api, Figures, HistoryPage, Scoreboard, SourceScore, SymbolStats, TypeFigures, Windows
from .errors import HttpError, SignalcastError
from .producer import IngestResult, NewSignal, NewTick, Producer, now_micros
from .subscriber import PROTOCOL, TOKEN_PROTOCOL_PREFIX, Subscriber

__version__ = "0.1.0"

__all__ = [
    "Api",
    "Backoff",
    "CLOSE_ABNORMAL",
    "CLOSE_GOING_AWAY",
    "CLOSE_HEARTBEAT_TIMEOUT",
    "CLOSE_NORMAL",
    "CLOSE_SLOW_CONSUMER",
    "CLOSE_SUSPENDED",
    "CLOSE_TOKEN_EXPIRED",
    "Disconnected",
    "Event",
    "Figures",
    "Filter",
    "HistoryPage",
    "HttpError",
    "IngestResult",
    "MarketSnapshot",
    "NewSignal",
    "NewTick",
    "Notification",
    "Outcome",
    "PROTOCOL",
    "Position",
    "PriceUpdate",
    "Producer",
    "Refused",
    "Resumed",
    "Scoreboard",
    "Signal",
    "SignalClosed",
    "SignalUpdate",
    "SignalcastError",
    "SourceScore",
    "Subscribed",
    "Subscriber",
    "SymbolStats",
    "SystemEvent",
    "TOKEN_PROTOCOL_PREFIX",
    "TokenSource",
    "TypeFigures",
    "Unsubscribed",
    "UserUpdate",
    "Welcome",
    "Windows",
    "http_base",
    "now_micros",
]
