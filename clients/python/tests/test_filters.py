"""Filters, watchlists and snapshots through the subscriber against a real signalcast
process: a watchlist with a snapshot first, then its symbols only; the filter swapped in
place and grown in steps, nothing repeated; prices of a watchlist at a chosen rate."""

from __future__ import annotations

import asyncio

from conftest import run
from harness import Recorder, new_signal, producer, token, until

from signalcast import Filter, NewTick, PriceUpdate, SignalUpdate, Subscribed, Subscriber


def test_a_watchlist_with_a_snapshot_then_its_symbols_only_swapped_and_grown_in_place(server) -> None:
    async def scenario() -> None:
        p = producer(server)

        async def publish(*symbols: str) -> None:
            for symbol in symbols:  # one request each: routed in this order
                assert (await p.publish_one(new_signal(symbol))).status == "accepted"

        # Before the subscriber: WLTCS, WLINFY, WLTCS.
        await publish("WLTCS", "WLINFY", "WLTCS")
        async with Subscriber(server.ws, token=token("u-enterprise-1")) as sub:
            rec = Recorder(sub)
            await sub.subscribe("signals_enterprise", filter=Filter(symbols=("WLTCS",)), snapshot=5)

            def got():
                return [(e.signal.symbol, e.snapshot) for e in rec.of(SignalUpdate)]

            await until("the snapshot", 10, lambda: len(got()) == 2)
            assert got() == [("WLTCS", True), ("WLTCS", True)]
            assert rec.of(Subscribed)[0].filter == Filter(symbols=("WLTCS",)), "the server's normalized echo"

            await publish("WLINFY", "WLTCS")
            await until("a live WLTCS", 10, lambda: len(got()) == 3)
            assert got()[2] == ("WLTCS", False)

            # Swapped where the subscription stands: WLINFY from now on, nothing replayed.
            await sub.set_filter("signals_enterprise", Filter(symbols=("WLINFY",)))
            await until("the swap confirmed", 10, lambda: len(rec.of(Subscribed)) == 2)
            await publish("WLTCS", "WLINFY")
            await until("a live WLINFY", 10, lambda: len(got()) == 4)
            assert got()[3] == ("WLINFY", False)

            # Grown in a step: the watchlist is now both.
            await sub.set_filter("signals_enterprise", Filter(add_symbols=("WLTCS",)))
            await until("the step confirmed", 10, lambda: len(rec.of(Subscribed)) == 3)
            assert sorted(rec.of(Subscribed)[2].filter.symbols or ()) == ["WLINFY", "WLTCS"]
            await publish("WLTCS", "WLOTHER", "WLINFY")
            await until("both", 10, lambda: len(got()) == 6)
            assert [s for s, _ in got()[4:]] == ["WLTCS", "WLINFY"]

            live = [e.seq for e in rec.of(SignalUpdate) if not e.snapshot]
            assert live == sorted(set(live)), "increasing seqs, no repeat"

    run(scenario())


def test_prices_of_a_watchlist_latest_first_then_only_theirs_at_the_rate_asked(server) -> None:
    async def scenario() -> None:
        p = producer(server)
        await p.publish_ticks(
            [
                NewTick("PXGOLD", "MCX", "72000", "72000", "72000", 1),
                NewTick("PXSILVER", "MCX", "90000", "90000", "90000", 1),
                NewTick("PXCOPPER", "MCX", "800", "800", "800", 1),
            ]
        )
        async with Subscriber(server.ws, token=token("u-enterprise-1")) as sub:
            rec = Recorder(sub)
            await sub.watch_prices(["PXGOLD", "MCX:PXSILVER"], max_frequency=7)
            await until("the latest of both", 10, lambda: len(rec.of(PriceUpdate)) == 2)
            assert rec.of(Subscribed)[0].max_frequency == 5, "7 a second is taken down to 5"
            assert sorted(p.symbol for p in rec.of(PriceUpdate)) == ["PXGOLD", "PXSILVER"]
            await p.publish_ticks(
                [NewTick("PXCOPPER", "MCX", "801", "801", "801", 1), NewTick("PXGOLD", "MCX", "72001", "72001", "72001", 1)]
            )
            await until("PXGOLD's update", 10, lambda: len(rec.of(PriceUpdate)) == 3)
            third = rec.of(PriceUpdate)[2]
            assert (third.symbol, str(third.last), third.conflated) == ("PXGOLD", "72001.0000", 1)
            await sub.set_max_frequency(1)
            await until("the new rate", 10, lambda: rec.of(Subscribed)[-1].max_frequency == 1)
            await asyncio.sleep(0.3)
            assert all(p.symbol != "PXCOPPER" for p in rec.of(PriceUpdate)), "never a symbol off the watchlist"

    run(scenario())
