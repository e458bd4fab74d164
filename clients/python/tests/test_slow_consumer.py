"""A caller that stops reading: the subscriber's queue is bounded, so it stops reading
the socket; the gateway closes it as a slow consumer (4008). The subscriber resumes
from the last event it queued, and the gateway replays the whole gap (far more than
its 1 MiB buffer: a replay is not counted against it): every seq once, in order, then
live."""

from __future__ import annotations

from typing import List

from conftest import run
from harness import Server, new_signal, producer, token

from signalcast import Backoff, Disconnected, Resumed, SignalUpdate, Subscribed, Subscriber


def test_a_slow_caller_is_cut_off_resumes_and_gets_every_signal_once() -> None:
    async def scenario(server: Server) -> None:
        sub = Subscriber(server.ws, token=lambda: token("u-enterprise-1"), max_queue=10, backoff=Backoff(initial=0.05, max=0.5))
        await sub.start()
        await sub.subscribe("signals_enterprise")
        while not isinstance(await sub.next_event(10), Subscribed):
            pass

        # Far more than the gateway buffers (1 MiB) while nobody reads. Without ticks,
        # so that no signal closes: one seq per signal.
        p = producer(server)
        for _ in range(12):
            results = await p.publish([new_signal("SLOWPY") for _ in range(1000)])
            assert all(r.status == "accepted" for r in results)
        head = server.head()
        assert head == 12_000

        delivered: List[int] = []
        closes: List[int] = []
        resumes: List[Resumed] = []
        while len(delivered) < head:
            event = await sub.next_event(30)
            assert event is not None, f"stalled at {delivered[-1:]} of {head}"
            if isinstance(event, SignalUpdate):
                delivered.append(event.seq)
            elif isinstance(event, Disconnected):
                closes.append(event.code)
            elif isinstance(event, Resumed):
                resumes.append(event)
        assert closes and set(closes) == {4008}, closes
        assert resumes and all(r.recovered for r in resumes), resumes
        assert delivered == list(range(1, head + 1)), "every seq once, in order"

        # Live from the head on.
        await p.publish([new_signal("SLOWPY") for _ in range(5)])
        live: List[int] = []
        while len(live) < 5:
            event = await sub.next_event(10)
            if isinstance(event, SignalUpdate):
                live.append(event.seq)
        assert live == list(range(head + 1, head + 6))
        await sub.close()

    server = Server()
    try:
        run(scenario(server), timeout=180)
    finally:
        server.stop()
