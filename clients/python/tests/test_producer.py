"""HTTP ingest through the Producer against a real signalcast process: per-item
results, a retry after a lost answer comes back ``duplicate`` (one signal, not two),
refusals with their reason, ticks, and bad credentials."""

from __future__ import annotations

import pytest

from conftest import run
from harness import PRODUCER_ID, Proxy, new_signal, producer, token

import signalcast
from signalcast import Api, Backoff, HttpError, NewTick


def test_a_retry_after_a_lost_answer_is_a_duplicate_not_a_second_signal(server) -> None:
    async def scenario() -> None:
        # The first request reaches the server, which stores the signal and answers;
        # the answer is lost on the way back. The producer sends the same body again.
        proxy = await Proxy(server.http_port, drop_answers=1).start()
        p = signalcast.Producer(
            f"http://127.0.0.1:{proxy.port}", PRODUCER_ID, "dev-alpha-0c1d2e3f4a5b6c7d", backoff=Backoff(initial=0.05)
        )
        signal = new_signal("RETRYPY")
        [result] = await p.publish([signal])
        await proxy.close()
        assert proxy.connections == 2, "one retry"
        assert result.status == "duplicate" and result.id == signal.id and result.ok
        page = await Api(server.http, token("u-enterprise-1")).history(symbol="RETRYPY")
        assert [i.id for i in page.items] == [signal.id], "routed once"

        # And sent again later, straight to the server: still one.
        assert (await producer(server).publish_one(signal)).status == "duplicate"

    run(scenario())


def test_results_per_item_in_order_with_the_reason_of_a_refusal(server) -> None:
    async def scenario() -> None:
        good = new_signal("ITEMSPY")
        low = new_signal("ITEMSPY", confidence=60.0)
        incoherent = new_signal("ITEMSPY", target_price="2400.0000")  # a buy's target below its entry
        results = await producer(server).publish([good, low, incoherent])
        assert [(r.id, r.status) for r in results] == [
            (good.id, "accepted"),
            (low.id, "refused"),
            (incoherent.id, "refused"),
        ]
        assert results[1].error == "below_confidence" and results[1].message
        assert results[2].error == "invalid_signal" and "target_price" in (results[2].message or "")
        assert not results[1].ok

    run(scenario())


def test_ticks_are_accepted(server) -> None:
    async def scenario() -> None:
        results = await producer(server).publish_ticks([NewTick("TICKPY", "NSE", "10.0", "10.2", "10.1", volume=5)])
        assert [r.status for r in results] == ["accepted"]

    run(scenario())


def test_bad_credentials_raise_at_once_with_status_and_code(server) -> None:
    async def scenario() -> None:
        p = signalcast.Producer(server.http, PRODUCER_ID, "wrong-key")
        with pytest.raises(HttpError) as e:
            await p.publish([new_signal("AUTHPY")])
        assert e.value.status == 401 and e.value.code == "unauthorized", e.value

    run(scenario())
