"""Real parts for the tests, as clients/typescript/test/harness.ts has them: the
``signalcast`` binary started on free loopback ports, its ``token`` and ``produce``
subcommands, a TCP proxy that records and can cut connections, and bounded waits."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import socket
import subprocess
import tempfile
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, Optional, Type, TypeVar, Union

import signalcast
from signalcast import NewSignal, Subscriber, now_micros

#: The repository root (this file is clients/python/tests/harness.py).
REPO = Path(__file__).resolve().parents[3]
#: The dev producer of the embedded default (fixtures/producers.toml, README step 4).
PRODUCER_ID = "model-alpha"
PRODUCER_KEY = "dev-alpha-0c1d2e3f4a5b6c7d"
#: A source model-alpha may publish under (the README's examples use it).
SOURCE_ID = "5eacdd1d-446b-4985-8de0-f44da0e8f005"

T = TypeVar("T")


def binary() -> str:
    path = os.environ.get("SIGNALCAST_BIN") or str(REPO / "target" / "debug" / "signalcast")
    if not os.path.exists(path):
        raise RuntimeError(f"{path} is missing: build it (cargo build -p signalcast-gateway) or set SIGNALCAST_BIN")
    return path


def child_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment for signalcast processes, without SIGNALCAST_BIN, which is ours
    (signalcast refuses SIGNALCAST_* variables that are not its settings)."""
    env = {k: v for k, v in os.environ.items() if k != "SIGNALCAST_BIN"}
    env.update(extra or {})
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str) -> Optional[tuple]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return None


class Server:
    """A ``signalcast serve`` process in single-node mode with a data directory (its
    signal store) of its own."""

    def __init__(
        self,
        http_port: Optional[int] = None,
        feed_port: Optional[int] = None,
        data_dir: Optional[str] = None,
        env: Optional[Dict[str, str]] = None,
    ):
        self.env = dict(env or {})
        self.http_port = http_port or free_port()
        self.feed_port = feed_port or free_port()
        self.own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="signalcast-py-")
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen:
        proc = subprocess.Popen(
            [binary(), "serve"],
            env=child_env(
                {
                    "SIGNALCAST_LISTEN": f"127.0.0.1:{self.http_port}",
                    "SIGNALCAST_FEED_LISTEN": f"127.0.0.1:{self.feed_port}",
                    "SIGNALCAST_DEMO__ENABLED": "false",
                    "SIGNALCAST_DRAIN_TIMEOUT_SECS": "2",
                    "SIGNALCAST_LOG": "warn",
                    "SIGNALCAST_STORE__DATA_DIR": self.data_dir,
                    **self.env,
                }
            ),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"signalcast exited at start with {proc.returncode}")
            got = _get(self.http_port, "/health/ready")
            if got is not None and got[0] == 200:
                return proc
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise RuntimeError("signalcast not ready within 30 s")
            time.sleep(0.05)

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.http_port}/ws"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def metric(self, series: str) -> float:
        """A sample from /metrics: the first line that starts with ``series``."""
        got = _get(self.http_port, "/metrics")
        for line in (got[1] if got else "").splitlines():
            if line.startswith(series + " "):
                return float(line[len(series) + 1 :])
        return 0.0

    def head(self, tier: str = "enterprise") -> int:
        """The channel's head: its last published seq."""
        return int(self.metric(f'signalcast_channel_head_seq{{tier="{tier}"}}'))

    def stop(self, sig: int = signal.SIGTERM, keep_data: bool = False) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
        if not keep_data and self.own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def restart(self, sig: int, keep_data: bool = False) -> None:
        """Stops with ``sig`` and starts again on the same ports: on the same data
        directory (``keep_data``: its store survives) or on a fresh one (a node that
        lost its store: new epochs, nothing to resume from)."""
        self.stop(sig, keep_data=keep_data)
        if not keep_data:
            self.data_dir = tempfile.mkdtemp(prefix="signalcast-py-")
            self.own_dir = True
        self.proc = self._spawn()


def token(user: str, ttl: Optional[int] = None) -> str:
    """A dev token for a fixture user (``signalcast token``)."""
    args = [binary(), "token", "--user", user]
    if ttl is not None:
        args += ["--ttl", str(ttl)]
    out = subprocess.run(args, env=child_env(), capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.strip()


async def produce(server: Server, count: int, rate: int) -> None:
    """Replays the embedded fixtures into the TCP feed; returns once all are ACKed."""
    proc = await start_produce(server, count, rate)
    code = await asyncio.wait_for(proc.wait(), 60)
    assert code == 0, f"signalcast produce exited with {code}"


async def start_produce(server: Server, count: int, rate: int) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        binary(),
        "produce",
        "--addr",
        f"127.0.0.1:{server.feed_port}",
        "--producer",
        PRODUCER_ID,
        "--count",
        str(count),
        "--rate",
        str(rate),
        env=child_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


def new_signal(symbol: str = "RELIANCE", **fields: Any) -> NewSignal:
    """A signal on NSE, valid for an hour, confident enough for every tier."""
    now = now_micros()
    values: Dict[str, Any] = dict(
        source_id=SOURCE_ID,
        source_type="algorithm",
        symbol=symbol,
        exchange="NSE",
        category="equity",
        signal_type="buy",
        entry_price="2456.7500",
        target_price="2500.0000",
        stop_loss="2430.0000",
        quantity_recommended=10,
        confidence=95.0,
        generated_at=now,
        expires_at=now + 3_600_000_000,
    )
    values.update(fields)
    return NewSignal(**values)


def producer(server: Server, **options: Any) -> signalcast.Producer:
    return signalcast.Producer(server.http, PRODUCER_ID, PRODUCER_KEY, **options)


async def until(what: str, timeout: float, cond: Callable[[], Union[object, Awaitable[object]]]) -> None:
    """Waits for ``cond`` to be true (checked every 50 ms) for up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if inspect.isawaitable(got):
            got = await got
        if got:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.05)


class Recorder:
    """Reads a subscriber's events in the background, as a caller's loop would."""

    def __init__(self, sub: Subscriber) -> None:
        self.sub = sub
        self.events: List[Any] = []
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for event in self.sub:
            self.events.append(event)

    def of(self, cls: Type[T]) -> List[T]:
        return [e for e in self.events if isinstance(e, cls)]

    def seqs(self, channel: str) -> List[int]:
        return [e.seq for e in self.of(signalcast.SignalUpdate) if e.channel == channel and not e.snapshot]

    async def close(self) -> None:
        await self.sub.close()
        await asyncio.wait_for(self._task, 10)


def contiguous(seqs: List[int]) -> bool:
    return all(b == a + 1 for a, b in zip(seqs, seqs[1:]))


class Proxy:
    """A TCP proxy to 127.0.0.1:``target`` that records the head of every request (as a
    proxy's access log would see it) and can cut every connection through it, or
    swallow the answers of the first ``drop_answers`` connections (a response lost on
    the way back: the request reached the server, its answer never reached the client)."""

    def __init__(self, target: int, drop_answers: int = 0, swallow_requests: int = 0) -> None:
        self.target = target
        self.drop_answers = drop_answers
        #: On the first this many connections, what the client sends after its request
        #: head never reaches the server (a SUBSCRIBE lost before its answer).
        self.swallow_requests = swallow_requests
        #: While set, nothing passes either way, and nothing is closed: a dead path.
        self.frozen = False
        self.heads: List[str] = []
        self.connections = 0
        self._writers: List[asyncio.StreamWriter] = []
        self._server: Optional[asyncio.AbstractServer] = None
        self.port = 0

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        drop = self.connections <= self.drop_answers
        swallow = self.connections <= self.swallow_requests
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target)
        self._writers += [client_w, up_w]
        head_seen = False

        async def upstream() -> None:
            nonlocal head_seen
            while data := await client_r.read(65536):
                if not head_seen:
                    head_seen = True
                    self.heads.append(data.split(b"\r\n\r\n")[0].decode("latin1"))
                elif swallow or self.frozen:
                    continue
                up_w.write(data)
                await up_w.drain()
            up_w.close()

        async def downstream() -> None:
            while data := await up_r.read(65536):
                if drop:
                    # The server has answered, so it has the request: lose the answer.
                    client_w.transport.abort()
                    return
                if self.frozen:
                    continue
                client_w.write(data)
                await client_w.drain()
            client_w.close()

        results = await asyncio.gather(upstream(), downstream(), return_exceptions=True)
        for r in results:
            if isinstance(r, Exception) and not isinstance(r, (ConnectionError, OSError)):
                raise r
        for w in (client_w, up_w):
            w.transport.abort()

    def cut(self) -> int:
        """Resets every connection through the proxy, as a network failure does."""
        n = 0
        for w in self._writers:
            if not w.transport.is_closing():
                n += 1
            w.transport.abort()
        self._writers.clear()
        return n

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
