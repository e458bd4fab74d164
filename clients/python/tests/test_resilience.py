"""Edges of the subscriber and the HTTP client, against the real signalcast process where
the server can produce the case: watchlist steps made while disconnected or while a
resume waits for its read-back, the position the caller has taken, token refreshes that
are refused or return the same token, a snapshot whose SUBSCRIBE was lost, a dead path
noticed at the idle timeout. Where only a broken peer can produce the case (a handshake
that echoes the token, an answer trickled a byte at a time), a few lines of asyncio
stand in for it, as the refuser of test_subscriber.py does; a URL that cannot be parsed
needs no peer at all."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time

import pytest
from conftest import run
from harness import Proxy, Recorder, Server, new_signal, producer, token, until

from signalcast import (
    Backoff,
    Disconnected,
    Filter,
    Position,
    Producer,
    Refused,
    Resumed,
    SignalUpdate,
    Subscribed,
    Subscriber,
    SystemEvent,
    Welcome,
)
from signalcast.subscriber import scrub

CHANNEL = "signals_enterprise"


async def publish(server: Server, *symbols: str) -> None:
    p = producer(server)
    results = await p.publish([new_signal(s) for s in symbols])
    assert all(r.status == "accepted" for r in results), results


# --- 1. watchlist steps while disconnected ---------------------------------------------


def test_watchlist_steps_made_while_disconnected_apply_to_the_watchlist_not_to_nothing(server) -> None:
    async def scenario() -> None:
        proxy = await Proxy(server.http_port).start()
        # A second between the cut and the reconnect: the steps are made in it.
        sub = Subscriber(f"ws://127.0.0.1:{proxy.port}/ws", token=token("u-enterprise-1"), backoff=Backoff(initial=1.0, jitter=0))
        await sub.start()
        rec = Recorder(sub)
        await sub.subscribe(CHANNEL, filter=Filter(symbols=("RSA", "RSB")))
        await until("SUBSCRIBED", 10, lambda: rec.of(Subscribed))
        assert proxy.cut() > 0
        await until("disconnected", 10, lambda: rec.of(Disconnected))
        assert sub.state == "reconnecting"
        await sub.set_filter(CHANNEL, Filter(add_symbols=("RSC",)))
        await sub.set_filter(CHANNEL, Filter(remove_symbols=("RSA",)))
        with pytest.raises(ValueError):  # would empty the watchlist: the server refuses it
            await sub.set_filter(CHANNEL, Filter(remove_symbols=("RSB", "RSC")))
        await until("resubscribed", 10, lambda: len(rec.of(Subscribed)) == 2)
        # The whole watchlist went with the resume: RSB and RSC, not RSC alone, not all.
        assert rec.of(Subscribed)[1].filter == Filter(symbols=("RSB", "RSC"))
        await publish(server, "RSA", "RSB", "RSC", "RSD")
        got = lambda: [e.signal.symbol for e in rec.of(SignalUpdate)]  # noqa: E731
        await until("RSB and RSC", 10, lambda: len(got()) >= 2)
        await asyncio.sleep(0.3)
        assert got() == ["RSB", "RSC"]
        # A step while subscribed is still sent as a step, on top of what the server has.
        await sub.set_filter(CHANNEL, Filter(add_symbols=("RSD",)))
        await until("the step confirmed", 10, lambda: len(rec.of(Subscribed)) == 3)
        assert rec.of(Subscribed)[2].filter == Filter(symbols=("RSB", "RSC", "RSD"))
        await rec.close()
        await proxy.close()

    run(scenario())


# --- 2. a filter change while a resume waits for its read-back ------------------------


def test_a_filter_change_while_a_resume_reads_back_keeps_the_resume() -> None:
    # A ring of 16: a resume from further back waits for the store's read-back.
    server = Server(env={"SIGNALCAST_ENGINE__RING_CAPACITY": "16"})

    async def scenario() -> None:
        async with Subscriber(server.ws, token=token("u-enterprise-1")) as first:
            await first.subscribe(CHANNEL)
            subscribed = None
            while not isinstance(subscribed, Subscribed):
                subscribed = await first.next_event(10)
            since = first.position(CHANNEL)
            assert since == Position(subscribed.epoch, subscribed.head)
        # 5,000 missed, the ring holds 16: a read-back long enough that the filter change
        # reaches the server while it is under way.
        await publish(server, *(["RBX", "RBY"] * 2500))
        head = since.seq + 5000
        async with Subscriber(server.ws, token=token("u-enterprise-1")) as sub:
            rec = Recorder(sub)
            await until("welcome", 10, lambda: rec.of(Welcome))
            await sub.subscribe(CHANNEL, since=since)
            # At once: the SUBSCRIBE with since is under way, its SUBSCRIBED not back.
            await sub.set_filter(CHANNEL, Filter(symbols=("RBX",)))
            await until("the resume and the swap", 15, lambda: len(rec.of(Subscribed)) == 2)
            assert [r.recovered for r in rec.of(Resumed)] == [True]
            assert rec.seqs(CHANNEL) == list(range(since.seq + 1, head + 1)), "the gap, whole, before the swap"
            assert rec.of(Subscribed)[1].filter == Filter(symbols=("RBX",))
            await publish(server, "RBY", "RBX")
            await until("RBX live", 10, lambda: rec.seqs(CHANNEL)[-1:] == [head + 2])
            assert rec.of(SignalUpdate)[-1].signal.symbol == "RBX"
            await rec.close()

    try:
        run(scenario())
    finally:
        server.stop()


# --- 3. the position the caller has taken ---------------------------------------------


def test_position_is_the_last_event_taken_and_a_reconnect_does_not_queue_twice(server) -> None:
    async def scenario() -> None:
        proxy = await Proxy(server.http_port).start()
        sub = Subscriber(f"ws://127.0.0.1:{proxy.port}/ws", token=lambda: token("u-enterprise-1"), backoff=Backoff(initial=0.05))
        await sub.start()
        await sub.subscribe(CHANNEL, filter=Filter(symbols=("PSA",)))
        subscribed = None
        while not isinstance(subscribed, Subscribed):
            subscribed = await sub.next_event(10)
        assert sub.position(CHANNEL) == Position(subscribed.epoch, subscribed.head)
        await publish(server, *["PSA"] * 5)
        assert sub._queue is not None
        await until("five queued", 10, lambda: sub._queue.qsize() >= 5)
        # Queued, not taken: the position is still the head SUBSCRIBED gave.
        assert sub.position(CHANNEL) == Position(subscribed.epoch, subscribed.head)
        taken = [await sub.next_event(5) for _ in range(2)]
        assert all(isinstance(e, SignalUpdate) for e in taken)
        assert sub.position(CHANNEL) == Position(subscribed.epoch, taken[1].seq)
        # Cut with three still queued: the resume goes on after the last queued one.
        assert proxy.cut() > 0
        rest = []
        while not any(isinstance(e, Resumed) for e in rest):
            rest.append(await sub.next_event(10))
        await publish(server, "PSA")
        while len([e for e in rest if isinstance(e, SignalUpdate)]) < 4:
            rest.append(await sub.next_event(10))
        seqs = [e.seq for e in taken + rest if isinstance(e, SignalUpdate)]
        assert len(seqs) == 6 and seqs == sorted(set(seqs)), seqs
        assert sub.position(CHANNEL) == Position(subscribed.epoch, seqs[-1])
        await sub.close()
        await proxy.close()

    run(scenario())


# --- 4. token refresh -----------------------------------------------------------------


def test_a_callable_that_returns_the_same_token_is_not_asked_in_a_loop(server) -> None:
    cached = token("u-premium-1", 65)  # within the 90 s margin from the start
    calls = 0

    def get_token() -> str:
        nonlocal calls
        calls += 1
        return cached

    async def scenario() -> None:
        async with Subscriber(server.ws, token=get_token) as sub:
            rec = Recorder(sub)
            await until("welcome", 10, lambda: rec.of(Welcome))
            await asyncio.sleep(3)
            assert calls == 1, f"asked {calls} times in 3 s"
            await asyncio.sleep(5)  # the planned refresh and the server's warning
            assert 2 <= calls <= 3, calls
            assert rec.of(Disconnected) == []

    run(scenario())


def test_a_refused_refresh_is_tried_again(server) -> None:
    calls = 0

    async def get_token() -> str:
        nonlocal calls
        calls += 1
        if calls == 2:
            return "not-a-token"  # refused: ERROR forbidden
        return await asyncio.to_thread(token, "u-premium-1", 65 if calls == 1 else 3600)

    async def scenario() -> None:
        async with Subscriber(server.ws, token=get_token) as sub:
            rec = Recorder(sub)
            await until(
                "token_refreshed", 25, lambda: any(e.event == "token_refreshed" for e in rec.of(SystemEvent))
            )
            assert any("REFRESH" in r.message for r in rec.of(Refused)), rec.of(Refused)
            assert calls >= 3
            assert rec.of(Disconnected) == [] and sub.reconnects == 0

    run(scenario())


# --- 5. a snapshot whose SUBSCRIBE was lost -------------------------------------------


def test_a_snapshot_is_asked_again_when_the_connection_drops_before_subscribed(server) -> None:
    async def scenario() -> None:
        await publish(server, "SNA", "SNB", "SNA")
        # The first connection's SUBSCRIBE never reaches the server.
        proxy = await Proxy(server.http_port, swallow_requests=1).start()
        sub = Subscriber(f"ws://127.0.0.1:{proxy.port}/ws", token=token("u-enterprise-1"), backoff=Backoff(initial=0.05))
        await sub.start()
        rec = Recorder(sub)
        await until("welcome", 10, lambda: rec.of(Welcome))
        await sub.subscribe(CHANNEL, filter=Filter(symbols=("SNA",)), snapshot=5)
        await asyncio.sleep(0.5)
        assert rec.of(Subscribed) == []
        assert proxy.cut() > 0
        await until("SUBSCRIBED on the second connection", 10, lambda: rec.of(Subscribed))
        await until("the snapshot", 10, lambda: len(rec.of(SignalUpdate)) >= 2)
        assert [(e.signal.symbol, e.snapshot) for e in rec.of(SignalUpdate)] == [("SNA", True), ("SNA", True)]
        await rec.close()
        await proxy.close()

    run(scenario())


# --- 7. tokens kept out of logs and errors; the subprotocol checked -------------------


def test_scrub_takes_tokens_out_of_texts() -> None:
    jwt = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ1LTEifQ.c2lnbmF0dXJl-_x"
    text = f"invalid Sec-WebSocket-Protocol header: multiple values: signalcast.v1, signalcast.token.{jwt}"
    assert jwt not in scrub(text) and "signalcast.v1" in scrub(text)
    assert jwt not in scrub(f"Authorization: Bearer {jwt}")
    assert scrub("HTTP 401") == "HTTP 401"


async def _handshake_peer(subprotocol: str) -> asyncio.AbstractServer:
    """Answers the WebSocket upgrade with ``Sec-WebSocket-Protocol: <subprotocol>``, then
    holds the connection: a proxy that echoes what it was offered."""

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        head = (await r.readuntil(b"\r\n\r\n")).decode("latin1")
        key = next(line.split(":", 1)[1].strip() for line in head.split("\r\n") if line.lower().startswith("sec-websocket-key:"))
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        w.write(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: {subprotocol}\r\n\r\n"
            ).encode()
        )
        await w.drain()
        await r.read(1)  # the client's first frame (its close): hang up
        w.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


@pytest.mark.parametrize("echo", ["both", "token"])
def test_a_handshake_that_echoes_the_token_is_refused_and_the_token_never_logged(echo, caplog) -> None:
    jwt = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ1LTEifQ.c2lnbmF0dXJl"
    answer = {"both": f"signalcast.v1, signalcast.token.{jwt}", "token": f"signalcast.token.{jwt}"}[echo]

    async def scenario() -> None:
        peer = await _handshake_peer(answer)
        port = peer.sockets[0].getsockname()[1]
        sub = Subscriber(f"ws://127.0.0.1:{port}/ws", token=jwt, backoff=Backoff(initial=0.05))
        await sub.start()
        rec = Recorder(sub)
        await until("two refusals", 10, lambda: len(rec.of(Disconnected)) >= 2)
        await rec.close()
        peer.close()
        gone = rec.of(Disconnected)
        assert all(d.reconnecting and d.error is not None for d in gone)
        assert rec.of(Welcome) == []
        for d in gone:
            assert jwt not in d.reason and jwt not in str(d.error) and jwt not in repr(d.error), d

    with caplog.at_level(logging.INFO, logger="signalcast"):
        run(scenario())
    assert jwt not in caplog.text


# --- 8. a bad URL ends the subscriber; a malformed message is skipped -----------------


@pytest.mark.parametrize("url", ["ws://user@/ws", "ws://127.0.0.1:99999/ws"])
def test_a_url_that_cannot_be_connected_to_ends_the_subscriber(url) -> None:
    async def scenario() -> None:
        async with Subscriber(url, token="t", backoff=Backoff(initial=0.01)) as sub:
            events = [e async for e in sub]  # ends by itself, raises nothing
        assert len(events) == 1, events
        [gone] = events
        assert isinstance(gone, Disconnected) and not gone.reconnecting and gone.error is not None
        assert sub.state == "closed"

    run(scenario())


def test_a_message_of_an_unexpected_shape_is_skipped_not_the_subscriber(server) -> None:
    async def scenario() -> None:
        async with Subscriber(server.ws, token=token("u-enterprise-1")) as sub:
            rec = Recorder(sub)
            await until("welcome", 10, lambda: rec.of(Welcome))
            # What a broken server could send: a filter that is not an object.
            await sub._handle(sub._ws, '{"type":"SUBSCRIBED","channel":"signals_enterprise","filter":"RSA"}')  # type: ignore[arg-type]
            await sub._handle(sub._ws, '{"type":"SYSTEM_MESSAGE","data":[1]}')  # type: ignore[arg-type]
            await sub.subscribe(CHANNEL)
            await until("SUBSCRIBED", 10, lambda: rec.of(Subscribed))
            assert sub.state == "open"

    run(scenario())


# --- 9. dead paths and slow answers ---------------------------------------------------


def test_a_dead_path_is_noticed_at_the_idle_timeout_not_at_the_next_ping(server) -> None:
    async def scenario() -> None:
        proxy = await Proxy(server.http_port).start()
        sub = Subscriber(f"ws://127.0.0.1:{proxy.port}/ws", token=token("u-basic-1"), ping_interval=2.0, idle_timeout=2.5, backoff=Backoff(initial=5))
        await sub.start()
        rec = Recorder(sub)
        await until("welcome", 10, lambda: rec.of(Welcome))
        proxy.frozen = True
        frozen_at = time.monotonic()
        await until("taken for dead", 10, lambda: sub._idle)
        took = time.monotonic() - frozen_at
        # Nothing received since the welcome: dead 2.5 s after it (checked at each PING,
        # 2 s apart, it was 4 s).
        assert 2.0 <= took <= 3.3, took
        await rec.close()
        await proxy.close()

    run(scenario())


def test_the_http_timeout_bounds_the_whole_request_not_each_read() -> None:
    async def trickle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n")
        try:
            for _ in range(40):  # a byte every 0.2 s: each read well within 1 s
                await asyncio.sleep(0.2)
                w.write(b" ")
                await w.drain()
        except ConnectionError:
            pass

    async def scenario() -> None:
        peer = await asyncio.start_server(trickle, "127.0.0.1", 0)
        port = peer.sockets[0].getsockname()[1]
        p = Producer(f"http://127.0.0.1:{port}", "model-alpha", "key", retries=0, timeout=1.0)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await p.publish([new_signal("TIMEOUT")])
        assert time.monotonic() - started < 2.5
        peer.close()

    run(scenario())
