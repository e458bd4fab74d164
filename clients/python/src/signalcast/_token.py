"""Where the access token comes from: a string, or a callable (sync or async) asked for
a current one on every (re)connect, before expiry, and for each HTTP request."""

from __future__ import annotations

import inspect
from typing import Awaitable, Callable, Union

TokenSource = Union[str, Callable[[], Union[str, Awaitable[str]]]]


async def resolve(source: TokenSource) -> str:
    if isinstance(source, str):
        return source
    token = source()
    if inspect.isawaitable(token):
        token = await token
    if not isinstance(token, str) or not token:
        raise TypeError(f"the token callable returned {type(token).__name__}, not a non-empty str")
    return token
