"""Server restarts under a live subscriber, each on a process of its own: SIGKILL in
the middle of a stream and a restart on the same data directory loses nothing (resumed
``recovered: True``, seqs contiguous, none twice); a restart on a fresh data directory
is told to the caller (``recovered: False``)."""

from __future__ import annotations

import asyncio
import signal

from conftest import run
from harness import Recorder, Server, contiguous, produce, start_produce, token, until

from signalcast import Backoff, Disconnected, Resumed, Subscribed, Subscriber

FAST = Backoff(initial=0.05, max=0.5)


def test_sigkill_mid_stream_and_restart_on_the_same_data_resumes_with_nothing_missed() -> None:
    async def scenario(server: Server) -> None:
        sub = Subscriber(server.ws, token=lambda: token("u-enterprise-1"), backoff=FAST)
        await sub.start()
        rec = Recorder(sub)
        await sub.subscribe("signals_enterprise")
        await until("SUBSCRIBED", 10, lambda: rec.of(Subscribed))
        producer = await start_produce(server, 1000, 200)
        await until("the stream under way", 20, lambda: len(rec.seqs("signals_enterprise")) >= 20)

        # Killed in the middle of the stream; the store keeps epochs, heads and rings.
        await asyncio.to_thread(server.restart, signal.SIGKILL, True)
        await asyncio.wait_for(producer.wait(), 30)  # its feed went away with the server
        await until("resumed on the new process", 20, lambda: rec.of(Resumed))
        resumed = rec.of(Resumed)[0]
        assert resumed.recovered is True, resumed
        assert resumed.epoch == resumed.since.epoch, "the same epoch"
        delivered_before = [e for e in rec.events[: rec.events.index(resumed)] if hasattr(e, "seq")]
        assert resumed.since.seq == delivered_before[-1].seq, "resumed from the last seq delivered"
        assert rec.of(Disconnected)[0].reconnecting

        await produce(server, 40, 0)
        head = server.head()
        assert head > resumed.since.seq
        await until(f"seqs to {head}", 20, lambda: rec.seqs("signals_enterprise")[-1:] == [head])
        seqs = rec.seqs("signals_enterprise")
        assert contiguous(seqs), "no gap across the restart"
        assert len(seqs) == len(set(seqs)) == head, "every seq once, none twice"
        await rec.close()

    server = Server()
    try:
        run(scenario(server))
    finally:
        server.stop()


def test_a_restart_on_a_fresh_data_dir_is_reported_as_recovered_false() -> None:
    async def scenario(server: Server) -> None:
        sub = Subscriber(server.ws, token=lambda: token("u-enterprise-1"), backoff=FAST)
        await sub.start()
        rec = Recorder(sub)
        await sub.subscribe("signals_enterprise")
        await until("SUBSCRIBED", 10, lambda: rec.of(Subscribed))
        await produce(server, 30, 0)
        head = server.head()
        await until(f"seqs to {head}", 15, lambda: rec.seqs("signals_enterprise")[-1:] == [head])
        before = sub.position("signals_enterprise")

        # A node that lost its signal store (a replaced machine): new epochs.
        await asyncio.to_thread(server.restart, signal.SIGKILL, False)
        await until("resumed on the new process", 20, lambda: rec.of(Resumed))
        resumed = rec.of(Resumed)[0]
        assert resumed.recovered is False, "told, not silently cut"
        assert resumed.since == before
        assert resumed.epoch != before.epoch
        n = len(rec.seqs("signals_enterprise"))
        await produce(server, 30, 0)
        await until("signals after", 15, lambda: len(rec.seqs("signals_enterprise")) > n)
        assert sub.position("signals_enterprise").epoch == resumed.epoch
        await rec.close()

    server = Server()
    try:
        run(scenario(server))
    finally:
        server.stop()
