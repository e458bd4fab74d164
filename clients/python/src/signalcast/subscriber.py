"""The subscriber: one WebSocket to a signalcast gateway, kept alive (PING), re-opened
with backoff when it drops, and every channel resumed from the last seq it queued,
so that a reconnect costs nothing, or says so with a ``Resumed`` event whose
``recovered`` is false.

    async with Subscriber("ws://127.0.0.1:8080/ws", token=get_token) as sub:
        await sub.subscribe("signals_premium", filter=Filter(symbols=("TCS",)))
        async for event in sub:
            ...

Events are handed over through a bounded queue (``max_queue``, default 1,000) read with
``async for`` or ``next_event``. When it is full the subscriber stops reading the socket
until the caller takes an event (it never drops one): the gateway buffers what follows,
up to 1 MiB, then closes the connection as a slow consumer (4008). The subscriber
reconnects and resumes from the last event it queued; the gateway queues the whole gap
(its replay does not count against the 1 MiB), so the caller gets every signal once.
Should resumes keep being cut before they are answered (see ``_give_up_replays``), it
goes on live and says so with ``Resumed(recovered=False)``. A slow caller is never
handed a signal twice, and never loses one without being told. ``position(channel)``
is the last seq the caller has taken from the queue: what to save for a later session.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple, Union, cast
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidProxy, InvalidStatus, InvalidURI, WebSocketException
from websockets.typing import Subprotocol

from . import _messages as m
from ._backoff import Backoff
from ._messages import Event, Filter, Position
from ._token import TokenSource, resolve
from .api import Api
from .errors import SignalcastError

log = logging.getLogger("signalcast.subscriber")

#: The subprotocol the gateway speaks; it answers with this one in the handshake.
PROTOCOL = "signalcast.v1"
#: The token travels as a second offered subprotocol, ``signalcast.token.<JWT>``: in a
#: header (``Sec-WebSocket-Protocol``), not in the URL, whose query proxies and access
#: logs record. The gateway never echoes it.
TOKEN_PROTOCOL_PREFIX = "signalcast.token."
# RFC 7230 token characters: what a subprotocol may hold (a JWT always fits).
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")

#: Reconnects: 250 ms doubling to 30 s, up to half of each delay taken off at random.
RECONNECT_BACKOFF = Backoff()
#: The shortest wait before a token refresh, however soon the token expires: a token
#: callable that hands back a cached token, or tokens that live less than the refresh
#: margin, must not make the subscriber ask in a loop.
MIN_REFRESH_DELAY = 5.0
#: A REFRESH with no answer (``token_refreshed`` or ERROR) within this many seconds is
#: taken for lost: the next warning or timer may try again.
REFRESH_TIMEOUT = 10.0

# A token in a text (an exception's message lists the offered subprotocols): the
# subprotocol entry, and anything shaped like a JWT (base64url header.payload.signature).
_SECRETS = re.compile(
    re.escape(TOKEN_PROTOCOL_PREFIX) + r"\S+|eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*|(?i:bearer)\s+\S+"
)


def scrub(text: str) -> str:
    """``text`` without tokens: ``signalcast.token.<JWT>``, a JWT, ``Bearer <token>``
    replaced by ``<redacted>``. Applied to every reason and error logged or emitted."""
    return _SECRETS.sub("<redacted>", text)


def _scrubbed(error: Optional[BaseException]) -> Optional[BaseException]:
    """The error itself when its text holds no token, else a ``SignalcastError`` of the
    scrubbed text (of the same type name), without the original attached."""
    if error is None:
        return None
    text = str(error)
    clean = scrub(text)
    if clean == text:
        return error
    return SignalcastError(f"{type(error).__name__}: {clean}")

_END = object()  # queued when the subscriber has finished, to wake a waiting reader


@dataclass
class _Channel:
    """What the subscriber keeps of one subscription, across connections."""

    #: The last seq queued for the caller and its epoch (signal channels): where a
    #: reconnect resumes from, so that nothing queued is delivered twice.
    position: Optional[Position] = None
    #: The last seq the caller took from the queue (``next_event``): ``position()``.
    consumed: Optional[Position] = None
    #: The whole filter wanted, never a step: sent with every SUBSCRIBE of the channel,
    #: reconnects included. Steps (``add_symbols``) are applied to it here, as the
    #: server applies them, and it becomes the server's normalized echo once the
    #: server has answered every change sent.
    filter: Optional[Filter] = None
    #: The filter the server last confirmed, restored when a change is refused.
    confirmed_filter: Optional[Filter] = None
    #: The server holds this subscription on the current connection.
    confirmed: bool = False
    #: SUBSCRIBEs of the channel sent on this connection and not answered yet.
    pending: int = 0
    #: A filter change made before SUBSCRIBED: sent (whole) once SUBSCRIBED arrives.
    deferred: bool = False
    #: Asked for until the server answers SUBSCRIBED: a reconnect before that asks
    #: again; after it, a reconnect resumes instead.
    snapshot: Optional[int] = None
    #: ``prices_general``: the rate asked for.
    max_frequency: Optional[int] = None
    #: The position whose replay the server could not send (see ``_give_up_replays``),
    #: reported in a ``Resumed(recovered=False)`` once subscribed live.
    abandoned: Optional[Position] = None


class Subscriber:
    """A resilient WebSocket subscription to a signalcast gateway.

    ``token`` is a string or a callable (sync or async) that returns a current token;
    the callable is asked on every (re)connect and ``refresh_margin`` seconds before the
    token expires (and when the server warns it expires), and its answer is sent as
    ``REFRESH`` on the open connection, so the connection outlives the token.
    """

    def __init__(
        self,
        url: str,
        token: TokenSource,
        *,
        ping_interval: float = 30.0,
        idle_timeout: Optional[float] = None,
        backoff: Backoff = RECONNECT_BACKOFF,
        refresh_margin: float = 90.0,
        max_queue: int = 1000,
        fatal_close_codes: Iterable[int] = (m.CLOSE_SUSPENDED,),
        open_timeout: float = 10.0,
    ) -> None:
        if urlsplit(url).scheme not in ("ws", "wss"):
            raise ValueError(f"not a ws(s) URL: {url}")
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self.url = url
        self._token = token
        #: PING every this many seconds (the server closes 4004 after 60 s of silence).
        self._ping_interval = ping_interval
        #: With nothing received for this long, the connection is taken for dead.
        self._idle_timeout = idle_timeout if idle_timeout is not None else ping_interval * 2.5
        self._backoff = backoff
        self._refresh_margin = refresh_margin
        self._max_queue = max_queue
        self._fatal = frozenset(fatal_close_codes)
        self._open_timeout = open_timeout

        self._channels: Dict[str, _Channel] = {}
        #: Channels resubscribed with ``since`` on this connection, not yet answered.
        self._resuming: Dict[str, Position] = {}
        #: Connections in a row closed 4008 (slow consumer) before a resume was answered.
        self._stalled_resumes = 0
        # Made in start(): asyncio objects belong to the running loop.
        self._queue: Optional[asyncio.Queue[Any]] = None
        self._runner: Optional[asyncio.Task[None]] = None
        self._ws: Optional[ClientConnection] = None
        self._tasks: Set[asyncio.Task[None]] = set()  # heartbeat and refresh, per connection
        self._state = "idle"
        self._finished = False
        self._attempt = 0
        self._opened = 0
        self._last_received = 0.0
        self._idle = False
        self._token_expires_at = 0
        self._refreshing = False
        self._refresh_generation = 0
        self._last_refresh = float("-inf")  # loop time of the last REFRESH asked for
        self._refresh_timer: Optional[asyncio.Task[None]] = None

    # --- lifecycle ------------------------------------------------------------------

    @property
    def state(self) -> str:
        """``idle``, ``connecting``, ``open``, ``reconnecting`` or ``closed``."""
        return self._state

    @property
    def reconnects(self) -> int:
        """Connections opened after the first."""
        return max(0, self._opened - 1)

    def position(self, channel: str) -> Optional[Position]:
        """The last seq on a signal channel that the caller has taken (``next_event`` or
        ``async for``), and its epoch: save it to resume in a later session with
        ``subscribe(channel, since=position)``. Events still waiting in the queue are not
        counted (a reconnect, within this session, resumes after the last one queued)."""
        state = self._channels.get(channel)
        return state.consumed if state else None

    def api(self) -> Api:
        """The HTTP API (history, live, scoreboard) of the same gateway, same token."""
        return Api(self.url, self._token)

    async def start(self) -> None:
        """Opens the connection, and keeps it open until ``close``."""
        if self._runner is not None:
            raise RuntimeError("the subscriber was started already")
        self._queue = asyncio.Queue(self._max_queue)
        self._runner = asyncio.create_task(self._run(), name="signalcast-subscriber")

    async def close(self) -> None:
        """Closes for good: no reconnect. Events already queued can still be read."""
        self._state = "closed"
        runner = self._runner
        if runner is not None and not runner.done():
            runner.cancel()
            await asyncio.wait({runner})
        self._finish()

    async def __aenter__(self) -> Subscriber:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __aiter__(self) -> Subscriber:
        return self

    async def __anext__(self) -> Event:
        event = await self.next_event()
        if event is None:
            raise StopAsyncIteration
        return event

    async def next_event(self, timeout: Optional[float] = None) -> Optional[Event]:
        """The next event; ``None`` once the subscriber is closed and every queued event
        has been read. Raises ``asyncio.TimeoutError`` after ``timeout`` seconds."""
        if self._queue is None:
            raise RuntimeError("start the subscriber first")
        if not (self._finished and self._queue.empty()):
            item = await asyncio.wait_for(self._queue.get(), timeout)
            if item is not _END:
                event, position = cast(Tuple[Event, Optional[Position]], item)
                if position is not None:
                    state = self._channels.get(getattr(event, "channel", ""))
                    if state is not None:
                        state.consumed = position
                return event
        self._raise_failure()
        return None

    def _raise_failure(self) -> None:
        """A subscriber that stopped on a fault of its own says so, not just "done"."""
        runner = self._runner
        if runner is not None and runner.done() and not runner.cancelled():
            error = runner.exception()
            if error is not None:
                raise error

    def _finish(self) -> None:
        self._state = "closed"
        if self._finished:
            return
        self._finished = True
        # An empty queue may have a reader waiting: wake it. A non-empty one is read
        # to its end first, and then next_event sees _finished.
        if self._queue is not None and self._queue.empty():
            self._queue.put_nowait(_END)

    # --- subscriptions --------------------------------------------------------------

    async def subscribe(
        self,
        channel: str,
        *,
        since: Optional[Position] = None,
        filter: Optional[Filter] = None,
        snapshot: Optional[int] = None,
        max_frequency: Optional[int] = None,
    ) -> None:
        """Subscribes to ``channel`` (now if connected, else on connect), and again on
        every reconnect, resuming from the last seq delivered.

        ``since``: resume a signal channel from a saved position. ``filter``: a
        watchlist and more (signal channels; symbols only on ``prices_general``).
        ``snapshot``: the last N matching messages first, marked ``snapshot`` (not with
        ``since``). ``max_frequency``: ``prices_general`` updates per second per symbol.
        """
        if channel in self._channels:
            raise ValueError(f"already subscribed to {channel}: use set_filter to change it")
        if since is not None and snapshot is not None:
            raise ValueError("snapshot and since do not go together")
        full = filter.applied_to(None) if filter is not None else None
        state = _Channel(position=since, consumed=since, filter=full, snapshot=snapshot, max_frequency=max_frequency)
        self._channels[channel] = state
        if self._ws is not None:
            await self._send_subscribe(self._ws, channel, state)

    async def set_filter(self, channel: str, filter: Optional[Filter]) -> None:
        """Changes the filter of a subscribed channel where the subscription stands: no
        gap, no repeat. ``Filter(add_symbols=…, remove_symbols=…)`` changes the current
        watchlist in steps; ``None`` lets everything through. Kept across reconnects.

        Steps are applied here too, to the filter in force (raises ``ValueError`` for a
        step that would empty the watchlist, as the server refuses it): a step goes on
        the wire only while the server holds the subscription; disconnected, the whole
        filter goes with the next SUBSCRIBE; subscribed but not yet answered (a resume
        waiting for its replay), the whole filter is sent once ``Subscribed`` arrives, so
        that the resume is never replaced by a subscription from the head."""
        state = self._channels.get(channel)
        if state is None:
            raise ValueError(f"not subscribed to {channel}")
        step = filter is not None and filter.is_step
        full = filter.applied_to(state.filter) if filter is not None else None
        state.filter = full
        if self._ws is None:
            return  # the next connection's SUBSCRIBE carries it
        if not state.confirmed:
            state.deferred = True  # a filter-only SUBSCRIBE now would replace the resume
            return
        # Only the filter: no since, no snapshot.
        wire = filter if step else full
        state.pending += 1
        await self._send({"type": "SUBSCRIBE", "channel": channel, "filter": wire.to_json() if wire else {}})

    async def watch_prices(self, symbols: Iterable[str], max_frequency: Optional[int] = None) -> None:
        """Prices of a watchlist (``"GOLD"`` on any exchange, ``"MCX:GOLD"`` on one): the
        latest price of each first, then their updates, at most ``max_frequency`` a
        second per symbol (the tier's rate when absent)."""
        await self.subscribe(m.PRICES_CHANNEL, filter=Filter(symbols=tuple(symbols)), max_frequency=max_frequency)

    async def set_max_frequency(self, max_frequency: int) -> None:
        """Changes the rate of ``prices_general`` on the fly (the watchlist stays)."""
        state = self._channels.get(m.PRICES_CHANNEL)
        if state is None:
            raise ValueError(f"not subscribed to {m.PRICES_CHANNEL}")
        state.max_frequency = max_frequency
        if self._ws is not None and state.confirmed:
            state.pending += 1
            await self._send({"type": "SUBSCRIBE", "channel": m.PRICES_CHANNEL, "max_frequency": max_frequency})
        elif self._ws is not None:
            state.deferred = True  # sent once the SUBSCRIBE under way is answered
        # Disconnected: the next connection's SUBSCRIBE carries it.

    async def unsubscribe(self, channel: str) -> None:
        """Stops a subscription (answered by an ``Unsubscribed`` event)."""
        if self._channels.pop(channel, None) is not None:
            await self._send({"type": "UNSUBSCRIBE", "channel": channel})

    # --- the connection -------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while self._state != "closed":
                code, reason, error = await self._connect_once()
                if self._state == "closed":
                    return
                self._give_up_replays(code)
                fatal = code in self._fatal or self._hopeless(error)
                # An exception's text can hold the offered subprotocols, the token's among
                # them (InvalidHeader): never logged nor handed over as it is.
                reason, error = scrub(reason), _scrubbed(error)
                delay = 0.0 if fatal else self._backoff.delay(self._attempt)
                self._attempt += 1
                log.info("disconnected (%s %s); %s", code, reason, "giving up" if fatal else f"retry in {delay:.2f} s")
                await self._emit(m.Disconnected(code, reason, reconnecting=not fatal, delay=delay, error=error))
                if fatal:
                    return
                self._state = "reconnecting"
                await asyncio.sleep(delay)
        finally:
            self._finish()

    def _give_up_replays(self, code: int) -> None:
        """A safety net: should a resume be closed 4008 before it is answered twice in a
        row (live messages outrunning a client that cannot take them; the replay itself
        is never counted against the gateway's 1 MiB, but gateways before that change
        closed any gap over about a thousand signals on every attempt), the channels
        still waiting for their replay are subscribed live from the head and reported
        ``Resumed(recovered=False)`` with the position they had, so that the caller reads
        the gap from history instead of reconnecting forever."""
        if code != m.CLOSE_SLOW_CONSUMER or not self._resuming:
            self._stalled_resumes = 0
            return
        self._stalled_resumes += 1
        if self._stalled_resumes < 2:
            return
        self._stalled_resumes = 0
        for channel, position in self._resuming.items():
            state = self._channels.get(channel)
            if state is not None:
                log.warning("%s: the replay from seq %d is too large to resume; live from the head", channel, position.seq)
                state.abandoned, state.position = position, None

    def _hopeless(self, error: Optional[BaseException]) -> bool:
        """A handshake refused 401 with a fixed token: the same token will be refused
        again. (A token callable is asked again: it may have a fresh one.) A URL (or a
        proxy setting) that cannot be connected to at all: trying again changes
        nothing."""
        if isinstance(error, (InvalidURI, InvalidProxy, _BadUrl)):
            return True
        return (
            isinstance(self._token, str)
            and isinstance(error, InvalidStatus)
            and error.response.status_code == 401
        )

    async def _connect_once(self) -> Tuple[int, str, Optional[BaseException]]:
        """One connection, from the handshake to its close: the close code, the reason,
        and the error when it could not be opened."""
        self._state = "connecting" if self._opened == 0 else "reconnecting"
        try:
            token = await resolve(self._token)
        except Exception as e:  # the caller's callable: reported, and asked again later
            return m.CLOSE_ABNORMAL, f"the token callable failed: {e!r}", e
        subprotocols, headers = _credentials(token)
        try:
            ws = await connect(
                self.url,
                subprotocols=subprotocols,
                additional_headers=headers,
                open_timeout=self._open_timeout,
                # The protocol's own PING (below) keeps the connection alive; the
                # server counts WebSocket pings against the client's message rate.
                ping_interval=None,
                close_timeout=2,
            )
        except (OSError, asyncio.TimeoutError, WebSocketException) as e:
            # Refused (401, 429, 503 draining), unreachable, too slow, a bad answer: try
            # again; a bad URI or proxy (InvalidURI, InvalidProxy): see _hopeless.
            return m.CLOSE_ABNORMAL, str(e) or type(e).__name__, e
        except ValueError as e:
            # What the URL parser raises for a port out of range, a broken IPv6 host.
            bad = _BadUrl(f"cannot connect to {self.url}: {e}")
            return m.CLOSE_ABNORMAL, str(bad), bad
        if ws.subprotocol != PROTOCOL:
            # Offered signalcast.v1 (and the token's entry): an answer of anything else,
            # none or the token's entry echoed, is not a signalcast gateway speaking.
            await ws.close()
            error = SignalcastError(
                f"the server answered subprotocol {scrub(repr(ws.subprotocol))}, not {PROTOCOL!r}"
            )
            return m.CLOSE_ABNORMAL, str(error), error
        try:
            await self._serve(ws)
        finally:
            self._ws = None
            for task in self._tasks:
                task.cancel()
            self._tasks.clear()
            self._refreshing = False
            self._refresh_timer = None
            await ws.close()
        if self._idle:
            return m.CLOSE_ABNORMAL, "no message within the idle timeout", None
        # From the sans-I/O protocol object: websockets 13.0 has no close_code on the
        # connection itself.
        return ws.protocol.close_code or m.CLOSE_ABNORMAL, ws.protocol.close_reason or "", None

    async def _serve(self, ws: ClientConnection) -> None:
        loop = asyncio.get_running_loop()
        self._ws = ws
        self._idle = False
        self._last_received = loop.time()
        self._resuming.clear()
        self._spawn(self._heartbeat(ws))
        try:
            for channel, state in list(self._channels.items()):
                await self._send_subscribe(ws, channel, state)
            async for raw in ws:
                self._last_received = loop.time()
                await self._handle(ws, raw)
        except ConnectionClosed:
            pass  # the close code tells why; _run reconnects

    async def _heartbeat(self, ws: ClientConnection) -> None:
        """PING every ``ping_interval``; the connection is taken for dead as soon as
        nothing has been received for ``idle_timeout`` (checked at that moment, not at
        the next PING), unless the reader is only waiting for the caller."""
        loop = asyncio.get_running_loop()
        next_ping = loop.time() + self._ping_interval
        while True:
            now = loop.time()
            deadline = self._last_received + self._idle_timeout
            if deadline <= now:
                # A full queue means the reader is waiting for the caller, not the server.
                deadline = now + min(1.0, self._ping_interval)
            await asyncio.sleep(max(0.0, min(next_ping, deadline) - now))
            now = loop.time()
            quiet = now - self._last_received
            if quiet >= self._idle_timeout and self._queue is not None and not self._queue.full():
                log.warning("nothing received for %.0f s: reconnecting", quiet)
                self._idle = True
                await ws.close(m.CLOSE_NORMAL, "idle")
                return
            if now >= next_ping:
                next_ping = now + self._ping_interval
                await self._send({"type": "PING"}, ws)

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        """Runs a task that lives no longer than the current connection."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _send_subscribe(self, ws: ClientConnection, channel: str, state: _Channel) -> None:
        state.confirmed = False  # the server holds nothing of it on this connection yet
        state.pending, state.deferred = 1, False  # this SUBSCRIBE carries everything
        msg: Dict[str, Any] = {"type": "SUBSCRIBE", "channel": channel}
        if state.position is not None:
            msg["since"] = state.position.seq
            msg["epoch"] = state.position.epoch
            self._resuming[channel] = state.position
        elif state.snapshot is not None:
            msg["snapshot"] = state.snapshot  # cleared once SUBSCRIBED: see _subscribed
        if state.filter is not None:
            msg["filter"] = state.filter.to_json()
        if state.max_frequency is not None:
            msg["max_frequency"] = state.max_frequency
        await self._send(msg, ws)

    async def _send(self, msg: Dict[str, Any], ws: Optional[ClientConnection] = None) -> None:
        """Sends on the open connection; without one, nothing: every SUBSCRIBE is sent
        again from the channels' state on the next connection."""
        ws = ws or self._ws
        if ws is None:
            return
        try:
            await ws.send(json.dumps(msg, separators=(",", ":")))
        except ConnectionClosed:
            pass  # the reader sees the close and reconnects

    # --- messages -------------------------------------------------------------------

    async def _emit(self, event: Event, position: Optional[Position] = None) -> None:
        """Queues ``event``; ``position``: the channel's place once the caller takes it."""
        assert self._queue is not None
        await self._queue.put((event, position))  # waits while full: see the module doc
        self._last_received = asyncio.get_running_loop().time()

    async def _handle(self, ws: ClientConnection, raw: Union[str, bytes]) -> None:
        try:
            msg = json.loads(raw)
            kind = msg["type"]
        except Exception:
            log.warning("not a protocol message, ignored: %.200r", raw)
            return
        try:
            if kind == "SIGNAL_UPDATE":
                await self._signal(m.signal_update(msg))
            elif kind == "PRICE_UPDATE":
                if m.PRICES_CHANNEL in self._channels:
                    await self._emit(m.price_update(msg))
            elif kind == "USER_UPDATE":
                if msg["channel"] in self._channels:
                    await self._emit(m.user_update(msg))
            elif kind == "NOTIFICATION":
                if msg["channel"] in self._channels:
                    await self._emit(m.notification(msg))
            elif kind == "SUBSCRIBED":
                await self._subscribed(m.subscribed(msg))
            elif kind == "UNSUBSCRIBED":
                if msg.get("reason") == "entitlement":
                    self._channels.pop(msg["channel"], None)
                await self._emit(m.Unsubscribed(msg["channel"], msg.get("reason", "")))
            elif kind == "ERROR":
                await self._error(m.Refused(msg["code"], msg.get("message", ""), msg.get("channel")))
            elif kind == "SYSTEM_MESSAGE":
                await self._system(ws, msg["data"])
            # PONG, and types a newer server may add: nothing to do.
        except (ConnectionClosed, asyncio.CancelledError):
            raise
        except Exception as e:
            # A message of an unexpected shape: the contract (docs/asyncapi.yaml) says
            # it cannot happen; if it does, one message is skipped, never the connection
            # nor the subscriber.
            log.warning("malformed %.40r message (%r), ignored: %.200r", kind, e, raw)

    async def _signal(self, event: m.SignalUpdate) -> None:
        state = self._channels.get(event.channel)
        if state is None:
            return
        if event.snapshot:
            # Snapshots are older than the head SUBSCRIBED gave: delivered, the
            # position stays.
            await self._emit(event)
            return
        p = state.position
        if p is not None and event.seq <= p.seq:
            return  # queued already (a replay overlapping what was seen)
        position = Position(p.epoch if p else "", event.seq)
        await self._emit(event, position)
        # Only once queued: a connection cut while the queue was full resumes from the
        # last event the caller will get, not from one it never will.
        state.position = position

    async def _subscribed(self, event: m.Subscribed) -> None:
        state = self._channels.get(event.channel)
        asked = self._resuming.pop(event.channel, None)
        position: Optional[Position] = None
        resend = False
        if state is not None:
            state.confirmed = True
            state.snapshot = None  # answered: a reconnect from now on resumes instead
            state.confirmed_filter = event.filter
            state.pending = max(0, state.pending - 1)
            if state.deferred:
                # Changed while the SUBSCRIBE was under way: the change goes out now,
                # whole, where the subscription stands.
                state.deferred, resend = False, True
            elif state.pending == 0:
                state.filter = event.filter  # the server's normalized filter, whole
            if event.epoch is not None and event.head is not None and event.recovered is not True:
                # A fresh subscription, or a resume the server could not honour: live
                # from the head. (recovered: the replay continues from the position asked.)
                position = Position(event.epoch, event.head)
        await self._emit(event, position)
        if state is not None and event.epoch is not None and event.head is not None:
            if asked is not None:
                # A resume answered without ``recovered`` (an older server, or one that
                # took it for a new subscription) recovered nothing it says so.
                await self._emit(m.Resumed(event.channel, event.recovered is True, asked, event.epoch, event.head))
                state.abandoned = None
            elif state.abandoned is not None:
                await self._emit(m.Resumed(event.channel, False, state.abandoned, event.epoch, event.head))
                state.abandoned = None
            if position is not None:
                state.position = position
        if resend and state is not None and self._ws is not None:
            msg: Dict[str, Any] = {"type": "SUBSCRIBE", "channel": event.channel}
            msg["filter"] = state.filter.to_json() if state.filter is not None else {}
            if state.max_frequency is not None:
                msg["max_frequency"] = state.max_frequency
            state.pending += 1
            await self._send(msg)

    async def _error(self, event: m.Refused) -> None:
        channel = event.channel or ""
        state = self._channels.get(channel)
        if state is not None:
            state.pending = max(0, state.pending - 1)
        if state is not None and state.confirmed:
            # A change refused: the subscription stands as it was, and so does its
            # filter (unless more changes are still to be answered).
            if state.pending == 0 and not state.deferred:
                state.filter = state.confirmed_filter
        elif state is not None and event.code in ("forbidden", "unknown_channel"):
            # Resubscribing on every reconnect would only be refused again.
            del self._channels[channel]
        elif event.channel is None and self._refreshing and "REFRESH" in event.message:
            # The REFRESH was refused: another may be tried (see _refresh_refused).
            self._refresh_refused()
        await self._emit(event)

    async def _system(self, ws: ClientConnection, data: Dict[str, Any]) -> None:
        event = data.get("event")
        if event == "welcome":
            welcome = m.welcome(data)
            self._attempt = 0
            self._opened += 1
            self._state = "open"
            self._expires(ws, welcome.token_expires_at, first=True)
            await self._emit(welcome)
            return
        if event == "token_refreshed":
            self._refreshing = False
            self._refresh_generation += 1  # its timeout is moot
            self._expires(ws, data["token_expires_at"])
        elif event == "token_expiring" and data.get("token_expires_at", 0) >= self._token_expires_at:
            # The server's warning (60 s before) about the token in force: refresh now,
            # unless a refresh is under way already.
            self._spawn(self._refresh(ws))
        await self._emit(m.SystemEvent(str(event), data))

    # --- token refresh --------------------------------------------------------------

    def _expires(self, ws: ClientConnection, at: int, first: bool = False) -> None:
        """Notes the token's expiry and plans its refresh ``refresh_margin`` before (at
        least ``MIN_REFRESH_DELAY`` from now). After a refresh, only when the expiry
        moved forward: a callable that handed back the same token (cached) is asked
        again on the server's ``token_expiring`` warning, not in a loop."""
        previous = self._token_expires_at
        self._token_expires_at = at
        if isinstance(self._token, str):
            return  # nothing fresher to offer; the server closes 4001 at expiry
        if not first and at <= previous:
            log.info("the token callable gave a token that expires no later; refresh not planned again")
            return
        if self._refresh_timer is not None:
            self._refresh_timer.cancel()  # planned for a token that is no longer in force
        delay = max(MIN_REFRESH_DELAY, at - time.time() - self._refresh_margin)
        self._refresh_timer = self._spawn(self._refresh(ws, after=delay))

    def _refresh_refused(self) -> None:
        """A REFRESH refused (or unanswered): another is tried ``MIN_REFRESH_DELAY``
        later, while the token in force has that long to live."""
        self._refreshing = False
        self._refresh_generation += 1
        ws = self._ws
        if ws is not None and self._token_expires_at - time.time() > MIN_REFRESH_DELAY:
            if self._refresh_timer is not None:
                self._refresh_timer.cancel()
            self._refresh_timer = self._spawn(self._refresh(ws, after=MIN_REFRESH_DELAY))

    async def _refresh(self, ws: ClientConnection, after: float = 0.0) -> None:
        if after:
            await asyncio.sleep(after)
        # However it is prompted (the timer, the server's warning, a retry), at most one
        # REFRESH every MIN_REFRESH_DELAY.
        loop = asyncio.get_running_loop()
        wait = self._last_refresh + MIN_REFRESH_DELAY - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        if self._refreshing or isinstance(self._token, str):
            return
        self._refreshing = True
        self._last_refresh = loop.time()
        self._refresh_generation += 1
        generation = self._refresh_generation
        try:
            token = await resolve(self._token)
        except Exception as e:  # the caller's callable: the reconnect will ask again
            self._refreshing = False
            log.warning("the token callable failed, token not refreshed: %s", scrub(repr(e)))
            return
        await self._send({"type": "REFRESH", "token": token}, ws)
        self._spawn(self._refresh_timeout(generation))

    async def _refresh_timeout(self, generation: int) -> None:
        await asyncio.sleep(REFRESH_TIMEOUT)
        if self._refreshing and self._refresh_generation == generation:
            log.warning("no answer to REFRESH within %.0f s", REFRESH_TIMEOUT)
            self._refresh_refused()


class _BadUrl(SignalcastError, ValueError):
    """The subscriber's URL cannot be connected to (its port or host cannot be parsed)."""


def _credentials(token: str) -> Tuple[List[Subprotocol], Optional[Dict[str, str]]]:
    """How the token goes in the handshake: in the subprotocols when it fits (a JWT
    does), else in ``Authorization``, which a non-browser client can set. Never in the
    URL."""
    if _TOKEN_CHARS.fullmatch(token):
        return [Subprotocol(PROTOCOL), Subprotocol(TOKEN_PROTOCOL_PREFIX + token)], None
    return [Subprotocol(PROTOCOL)], {"Authorization": f"Bearer {token}"}
