"""One signalcast process shared by the tests of a session that do not restart it;
each such test works on symbols of its own, so that they do not see each other's
signals where it matters."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Iterator

import pytest

from harness import Server


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    s = Server()
    try:
        yield s
    finally:
        s.stop()


def run(coro: Awaitable[Any], timeout: float = 120) -> Any:
    """Runs one test's coroutine to completion, bounded: no test can hang."""

    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())
