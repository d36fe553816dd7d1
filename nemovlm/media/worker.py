"""Media work off the event loop, for async callers: ``run_off_loop`` runs a
preparation in a worker thread and remembers the caller's loop (so a fetch can go
through their ``async_http_client`` with ``on_callers_loop``) and a cancel flag that
the work checks between steps (``check_cancelled``). Cancelling the awaiting task stops
a fetch under way and skips decoding that has not started; a decode already running
ends on its own (Pillow cannot be interrupted), bounded by the pixel cap."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import os
import threading
from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

_T = TypeVar("_T")
_P = ParamSpec("_P")


@dataclass
class _Call:
    loop: asyncio.AbstractEventLoop
    cancelled: threading.Event = field(default_factory=threading.Event)
    pending: set[concurrent.futures.Future[Any]] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def cancel(self) -> None:
        with self.lock:
            self.cancelled.set()
            pending = list(self.pending)
        for future in pending:
            future.cancel()


# run_off_loop copies the context, so the worker thread sees the call it serves.
_CALL: ContextVar[_Call | None] = ContextVar("nemovlm_media_call", default=None)


async def run_off_loop(fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """``fn(*args, **kwargs)`` in a worker thread; cancelling the caller cancels the work
    where it can (see ``check_cancelled``)."""
    call = _Call(asyncio.get_running_loop())
    token = _CALL.set(call)
    try:
        # Copy the context, as asyncio.to_thread does: the worker sees the call it serves.
        work = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        return await call.loop.run_in_executor(_media_executor(), work)
    except asyncio.CancelledError:
        call.cancel()
        raise
    finally:
        _CALL.reset(token)


@functools.cache
def _media_executor() -> concurrent.futures.ThreadPoolExecutor:
    """Threads of their own for media work (Pillow releases the GIL while it decodes,
    resizes and encodes, so photos are prepared on every core), sized as the standard
    library sizes the loop's default executor. Not that executor: aiohttp resolves host
    names on it, so 32 photos queued there would hold up every new connection."""
    workers = min(32, (os.cpu_count() or 1) + 4)
    return concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="nemovlm-media")


def check_cancelled() -> None:
    """Raise ``asyncio.CancelledError`` when the async call this work serves was cancelled.

    A ``BaseException``, so no ``except Exception`` on the way turns it into a refusal;
    nobody sees it (the awaiting task is already cancelled)."""
    call = _CALL.get()
    if call is not None and call.cancelled.is_set():
        raise asyncio.CancelledError


def callers_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop of the async call this worker thread serves; ``None`` in sync calls
    and on the loop's own thread (where waiting for it would deadlock)."""
    call = _CALL.get()
    if call is None or call.loop.is_closed():
        return None
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    return None if running is call.loop else call.loop


def on_callers_loop(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` on the caller's loop (see ``callers_loop``, which must not be
    ``None``) and wait for it here; the call's cancellation cancels it."""
    call = _CALL.get()
    assert call is not None
    future = asyncio.run_coroutine_threadsafe(coro, call.loop)
    with call.lock:
        call.pending.add(future)
        if call.cancelled.is_set():
            future.cancel()
    try:
        return future.result()
    except concurrent.futures.CancelledError:
        raise asyncio.CancelledError from None
    finally:
        with call.lock:
            call.pending.discard(future)
