"""One async client per running event loop, for every backend.

Pooled connections belong to the loop that opened them, so a model used from several
loops (``asyncio.run`` twice, one loop per test) needs a client each. A client holds
its loop through its connections, so weak keys alone never let go: the clients of
loops that have closed are dropped when the next loop makes its own.

A client given a ``close`` is closed while its loop still runs, when the loop's runner
shuts it down (``asyncio.run``, ``asyncio.Runner``, pytest-asyncio all call
``loop.shutdown_asyncgens()``): an aiohttp session left open logs "Unclosed client
session" as an error, so simply letting it go is not enough.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def default_http_client() -> Any:
    """The SDK's default sync HTTP client (``openai.DefaultHttpxClient``) on the shared
    TLS context, closed when it is dropped, as the SDK closes the one it makes itself:
    ``openai.OpenAI`` leaves a client it is given to its owner."""
    import openai

    from nemovlm.backends.nim_http import shared_ssl_context

    return _closed_when_dropped(openai.DefaultHttpxClient)(verify=shared_ssl_context())


@functools.cache
def _closed_when_dropped(base: type[Any]) -> type[Any]:
    class ClosedWhenDropped(base):  # type: ignore[misc, valid-type]
        def __del__(self) -> None:
            if not self.is_closed:
                with contextlib.suppress(Exception):
                    self.close()

    return ClosedWhenDropped


def default_async_http_client() -> Any:
    """The SDK's own aiohttp-backed async HTTP client, with the SDK's default timeout,
    connection limits and redirects (``openai.DefaultAioHttpClient``).

    Why aiohttp (``bench/README.md``, scenario 4): at 64 requests in flight the SDK's
    default httpx/httpx2 transport spends three times the CPU per request that aiohttp
    does. Retries (with ``Retry-After``), timeouts and error types are the SDK's, above
    the transport, so they are the same on either. ``openai[aiohttp]`` is a core
    dependency; an SDK without it (older than 1.89, or installed without the extra)
    keeps its default httpx client.
    """
    import openai

    from nemovlm.backends.nim_http import shared_ssl_context

    verify = shared_ssl_context()
    try:
        return openai.DefaultAioHttpClient(verify=verify)
    except (AttributeError, RuntimeError):  # no aiohttp extra: the SDK's default transport
        return openai.DefaultAsyncHttpxClient(verify=verify)


def unreachable(exc: BaseException) -> BaseException | None:
    """The aiohttp error behind a "timeout" that was really a failed connection, if any.

    The SDK's aiohttp adapter reports a refused connection or a failed DNS lookup as a
    connect timeout (openai/openai-python#3594, review of the vendored adapter); this
    finds the real cause so it can be reported as the unreachable server it is.
    """
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - a core dependency
        return None
    cause = exc.__cause__
    while cause is not None:
        if isinstance(cause, aiohttp.ClientConnectorError) and not isinstance(
            cause, asyncio.TimeoutError
        ):
            return cause
        cause = cause.__cause__
    return None


class PerLoop(Generic[T]):
    """A cache of one ``T`` per live event loop; pickles empty (clients are rebuilt).

    ``close``, when given, is awaited on each ``T`` as its loop is shut down.
    """

    def __init__(self, close: Callable[[T], Awaitable[Any]] | None = None) -> None:
        self._close = close
        self._items: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[T, AsyncGenerator[None, None] | None]
        ] = weakref.WeakKeyDictionary()

    def get(self, make: Callable[[], T]) -> T:
        """The running loop's ``T``, made with ``make`` on first use in that loop."""
        loop = asyncio.get_running_loop()
        entry = self._items.get(loop)
        if entry is not None:  # the common case, once per request: nothing else to do
            return entry[0]
        for done in [old for old in self._items if old.is_closed()]:
            _, closer = self._items.pop(done)
            if closer is not None and getattr(closer, "ag_frame", None) is not None:
                # A loop closed without shutting down its async generators: close the
                # client here, as far as it goes without a running loop (an aiohttp
                # session closes its sockets at once), rather than let the garbage
                # collector hand the closer to the closed loop.
                step = closer.aclose()
                with contextlib.suppress(StopIteration, RuntimeError):
                    step.send(None)
                step.close()
        item = make()
        self._items[loop] = (item, self._closer(item))
        return item

    def _closer(self, item: T) -> AsyncGenerator[None, None] | None:
        """An async generator, started on the running loop, whose ``finally`` closes ``item``.

        The loop registers every async generator on its first step and closes them all
        in ``shutdown_asyncgens()`` while it still runs; it only holds them weakly, so
        the cache keeps this one.
        """
        close = self._close
        if close is None:
            return None

        async def closer() -> AsyncGenerator[None, None]:
            try:
                yield
            finally:
                await close(item)

        gen = closer()
        # The first step registers the generator with the running loop and stops at
        # ``yield`` without awaiting anything, so it completes synchronously.
        with contextlib.suppress(StopIteration):
            gen.asend(None).send(None)
        return gen

    def __len__(self) -> int:
        return len(self._items)

    def __getstate__(self) -> dict[str, Any]:
        return {"close": self._close}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state.get("close"))  # type: ignore[misc]


async def aclose(client: Any) -> None:
    """Close a client that has an async ``close()`` (``openai.AsyncOpenAI``)."""
    await client.close()
