"""History, live and the scoreboard through ``Api``, and outcome events on the socket,
against a real signalcast process."""

from __future__ import annotations

import asyncio
import random
import string
from decimal import Decimal

import pytest

from conftest import run
from harness import SOURCE_ID, Proxy, Recorder, new_signal, producer, token, until

from signalcast import Api, Filter, HttpError, NewTick, SignalClosed, Subscribed, Subscriber, http_base


def unique(prefix: str) -> str:
    return prefix + "".join(random.choices(string.ascii_uppercase, k=6))


def test_the_http_base_comes_from_the_websocket_url() -> None:
    assert http_base("ws://127.0.0.1:8080/ws") == "http://127.0.0.1:8080"
    assert http_base("wss://signals.example.com/ws") == "https://signals.example.com"
    assert http_base("wss://example.com/signalcast/ws/?x=1#f") == "https://example.com/signalcast"
    assert http_base("https://example.com") == "https://example.com"
    with pytest.raises(ValueError):
        http_base("ftp://example.com/ws")


def test_history_pages_newest_first_cover_each_signal_once(server) -> None:
    async def scenario() -> None:
        symbol = unique("PG")
        signals = [new_signal(symbol) for _ in range(12)]
        # One request each, so that each is routed after the one before.
        for s in signals:
            assert (await producer(server).publish_one(s)).status == "accepted"
        api = Api(server.http, lambda: token("u-premium-1"))
        seen, sizes = [], []
        async for page in api.history_pages(symbol=symbol, limit=5):
            seen += [i.id for i in page.items]
            sizes.append(len(page.items))
        assert seen == [s.id for s in reversed(signals)], "newest first, each once"
        assert sizes == [5, 5, 2]
        first = await api.history(symbol=symbol, limit=1)
        assert first.items[0].channels["signals_premium"] >= 12
        assert "signals_enterprise" not in first.items[0].channels, "only channels the caller may read"

        # The open ones, newest first, include them.
        live, cursor = [], None
        while True:
            page = await api.live(limit=200, cursor=cursor)
            live += [i.id for i in page.items if i.symbol == symbol]
            if page.next is None:
                break
            cursor = page.next
        assert live == seen
        # Or just this symbol's: live takes history's filters.
        page = await api.live(symbol=symbol, limit=200)
        assert [i.id for i in page.items] == seen

    run(scenario())


def test_refusals_are_typed_errors_with_status_code_and_retry_after(server) -> None:
    async def scenario() -> None:
        with pytest.raises(HttpError) as e:
            await Api(server.http, "not-a-token").history()
        assert (e.value.status, e.value.code) == (401, "unauthorized")
        with pytest.raises(HttpError) as e:
            await Api(server.http, token("u-basic-1")).history(limit=100_000)
        assert (e.value.status, e.value.code) == (400, "bad_request") and e.value.message
        # The free tier's 30 requests a minute, then 429 with Retry-After.
        api = Api(server.http, token("u-free-1"))
        with pytest.raises(HttpError) as e:
            for _ in range(40):
                await api.live(limit=1)
        assert (e.value.status, e.value.code) == (429, "rate_limited")
        assert e.value.retry_after is not None and e.value.retry_after >= 1

    run(scenario())


def test_an_outcome_arrives_as_an_event_and_counts_in_history_and_the_scoreboard(server) -> None:
    async def scenario() -> None:
        symbol = unique("OC")
        async with Subscriber(server.ws, token=token("u-enterprise-1")) as sub:
            rec = Recorder(sub)
            await sub.subscribe("signals_enterprise", filter=Filter(symbols=(symbol,)))
            await until("SUBSCRIBED", 10, lambda: rec.of(Subscribed))
            # README step 5: a sell with no market snapshot; the first tick is its
            # entry, the second passes its target of 240.
            sell = new_signal(
                symbol,
                source_type="analyst",
                signal_type="sell",
                entry_price="250.0000",
                target_price="240.0000",
                stop_loss="255.0000",
                confidence=88.0,
            )
            p = producer(server)
            assert (await p.publish_one(sell)).status == "accepted"
            await p.publish_ticks([NewTick(symbol, "NSE", "249.9", "250.1", "250.0", 100)])
            await p.publish_ticks([NewTick(symbol, "NSE", "239.4", "239.6", "239.5", 100)])
            await until("the close", 10, lambda: rec.of(SignalClosed))
            [closed] = rec.of(SignalClosed)
            assert closed.signal.id == sell.id and closed.signal.status == "target_hit"
            assert closed.outcome.entry_price == Decimal("250.0000")
            assert closed.outcome.exit_price == Decimal("239.5000")
            assert closed.outcome.return_pct == Decimal("4.2000")
            opened = [u for u in rec.events if getattr(u, "seq", None) is not None and not isinstance(u, SignalClosed)]
            assert opened[0].signal.status == "open" and opened[0].seq < closed.seq

        api = Api(server.http, token("u-premium-1"))
        page = await api.history(symbol=symbol, status="target_hit")
        assert [(i.id, i.status, i.outcome.return_pct) for i in page.items] == [(sell.id, "target_hit", Decimal("4.2000"))]
        stats = await api.symbol_stats(symbol, exchange="NSE")
        assert stats.figures.target_hit == 1 and stats.by_type["sell"].figures.target_hit == 1
        # The scoreboard is read from the store at most every 10 s.
        for _ in range(25):
            board = await api.sources()
            row = board.source(SOURCE_ID)
            if row is not None and row.windows.all.target_hit >= 1:
                break
            await asyncio.sleep(1)
        assert row is not None and row.windows.all.target_hit >= 1, row
        assert row.windows.all.hit_rate is not None

    run(scenario())


def test_the_token_goes_in_the_authorization_header_never_in_the_url(server) -> None:
    async def scenario() -> None:
        proxy = await Proxy(server.http_port).start()
        t = token("u-premium-1")
        await Api(f"http://127.0.0.1:{proxy.port}", t).history(symbol="TCS", limit=1)
        await proxy.close()
        [head] = proxy.heads
        request_line, *headers = head.split("\r\n")
        assert request_line == "GET /v1/signals/history?symbol=TCS&limit=1 HTTP/1.1", request_line
        assert f"Authorization: Bearer {t}" in headers

    run(scenario())
