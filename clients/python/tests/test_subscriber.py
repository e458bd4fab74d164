"""The subscriber against a real signalcast process: receive, the token kept out of the
URL, token refresh, heartbeats, backoff, and a resume without loss across a cut
connection."""

from __future__ import annotations

import asyncio
import time

from conftest import run
from harness import Proxy, Recorder, contiguous, produce, token, until

from signalcast import (
    PROTOCOL,
    TOKEN_PROTOCOL_PREFIX,
    Backoff,
    Disconnected,
    Resumed,
    SignalUpdate,
    Subscribed,
    Subscriber,
    SystemEvent,
    Welcome,
)

FAST = Backoff(initial=0.05, max=0.5)


def test_backoff_grows_to_the_cap_and_jitter_only_takes_away() -> None:
    b = Backoff(initial=0.1, max=1.0, multiplier=2, jitter=0.5)
    assert [round(b.delay(a, lambda: 0.0), 3) for a in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert [round(b.delay(a, lambda: 1.0), 3) for a in (0, 3, 9)] == [0.05, 0.4, 0.5]
    assert all(0.2 <= b.delay(2) <= 0.4 for _ in range(100))


def test_subscribe_and_receive_signal_updates(server) -> None:
    async def scenario() -> None:
        async with Subscriber(server.ws, token=token("u-enterprise-1")) as sub:
            rec = Recorder(sub)
            await sub.subscribe("signals_enterprise")
            await until("SUBSCRIBED", 10, lambda: rec.of(Subscribed))
            await produce(server, 40, 0)
            # Everything acknowledged is delivered up to the channel's head.
            head = server.head()
            await until(f"seqs to {head}", 15, lambda: rec.seqs("signals_enterprise")[-1:] == [head])
            seqs = rec.seqs("signals_enterprise")
            assert seqs and contiguous(seqs), seqs
            update = rec.of(SignalUpdate)[0]
            assert update.signal.status == "open"
            assert update.signal.entry_price.as_tuple().exponent == -4, "prices are 4-decimal Decimals"
            welcome = rec.of(Welcome)[0]
            assert (welcome.user, welcome.tier) == ("u-enterprise-1", "enterprise")
            assert sub.position("signals_enterprise").seq == head
        assert sub.state == "closed"

    run(scenario())


def test_the_token_travels_in_the_subprotocol_never_in_the_url(server) -> None:
    async def scenario() -> None:
        proxy = await Proxy(server.http_port).start()
        t = token("u-premium-1")
        async with Subscriber(f"ws://127.0.0.1:{proxy.port}/ws", token=t) as sub:
            rec = Recorder(sub)
            await until("welcome", 10, lambda: rec.of(Welcome))
            assert rec.of(Welcome)[0].user == "u-premium-1", "the gateway read the token from the header"
        await proxy.close()
        assert len(proxy.heads) == 1
        request_line, *headers = proxy.heads[0].split("\r\n")
        assert request_line == "GET /ws HTTP/1.1", request_line
        assert t not in request_line and "token" not in request_line
        protocols = [h.split(":", 1)[1].strip() for h in headers if h.lower().startswith("sec-websocket-protocol:")]
        assert protocols == [f"{PROTOCOL}, {TOKEN_PROTOCOL_PREFIX}{t}"], protocols
        assert t not in sub.url

    run(scenario())


def test_a_token_about_to_expire_is_refreshed_through_the_callable_on_the_same_connection(server) -> None:
    calls = 0

    async def get_token() -> str:  # async callables work as well as plain ones
        nonlocal calls
        calls += 1
        # 65 s of life: within the refresh margin at once (and the server's 60 s warning).
        return await asyncio.to_thread(token, "u-premium-1", 65 if calls == 1 else 3600)

    async def scenario() -> None:
        async with Subscriber(server.ws, token=get_token) as sub:
            rec = Recorder(sub)
            await until(
                "token_refreshed", 15, lambda: any(e.event == "token_refreshed" for e in rec.of(SystemEvent))
            )
            refreshed = next(e for e in rec.of(SystemEvent) if e.event == "token_refreshed")
            assert refreshed.data["token_expires_at"] > time.time() + 3000
            await asyncio.sleep(0.5)
            assert calls == 2
            assert rec.of(Disconnected) == [] and sub.reconnects == 0

    run(scenario())


def test_heartbeats_keep_the_connection_open(server) -> None:
    async def scenario() -> None:
        async with Subscriber(server.ws, token=token("u-basic-1"), ping_interval=0.1, idle_timeout=5) as sub:
            rec = Recorder(sub)
            await until("welcome", 10, lambda: rec.of(Welcome))
            await asyncio.sleep(1.0)  # ten PINGs, each answered
            assert sub.state == "open" and rec.of(Disconnected) == []

    run(scenario())


def test_a_gateway_that_is_down_is_retried_with_growing_delays() -> None:
    async def scenario() -> None:
        attempts = []

        async def hang_up(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            attempts.append(time.monotonic())
            w.transport.abort()

        refuser = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        port = refuser.sockets[0].getsockname()[1]
        sub = Subscriber(f"ws://127.0.0.1:{port}/ws", token="t", backoff=Backoff(initial=0.05, jitter=0))
        await sub.start()
        rec = Recorder(sub)
        await asyncio.sleep(1.7)
        await rec.close()
        refuser.close()
        # 0, 50, 150, 350, 750, 1550 ms: about six attempts in 1.7 s, not dozens.
        assert 4 <= len(attempts) <= 7, attempts
        gaps = [b - a for a, b in zip(attempts, attempts[1:])]
        assert all(b > a for a, b in zip(gaps, gaps[1:])), gaps
        assert all(d.reconnecting and d.error is not None for d in rec.of(Disconnected))

    run(scenario())


def test_a_cut_connection_reconnects_and_resumes_every_seq_exactly_once(server) -> None:
    async def scenario() -> None:
        proxy = await Proxy(server.http_port).start()
        sub = Subscriber(f"ws://127.0.0.1:{proxy.port}/ws", token=lambda: token("u-enterprise-1"), backoff=FAST)
        await sub.start()
        rec = Recorder(sub)
        await sub.subscribe("signals_enterprise")
        await until("SUBSCRIBED", 10, lambda: rec.of(Subscribed))
        start = rec.of(Subscribed)[0].head
        producing = asyncio.create_task(produce(server, 300, 150))
        await until("some signals", 20, lambda: len(rec.seqs("signals_enterprise")) >= 30)
        assert proxy.cut() > 0
        await producing
        head = server.head()
        await until(f"seqs to {head}", 20, lambda: rec.seqs("signals_enterprise")[-1:] == [head])
        resumes = rec.of(Resumed)
        assert [r.recovered for r in resumes] == [True], resumes
        assert sub.reconnects == 1
        seqs = rec.seqs("signals_enterprise")
        assert seqs == list(range(start + 1, head + 1)), "no gap, no repeat"
        await rec.close()
        await proxy.close()

    run(scenario())


def test_a_fixed_token_refused_401_ends_the_subscriber_instead_of_retrying(server) -> None:
    async def scenario() -> None:
        async with Subscriber(server.ws, token="not-a-token", backoff=FAST) as sub:
            events = [event async for event in sub]  # ends by itself
        assert len(events) == 1, events
        [gone] = events
        assert isinstance(gone, Disconnected) and not gone.reconnecting
        assert "401" in str(gone.error)
        assert sub.state == "closed"

    run(scenario())
