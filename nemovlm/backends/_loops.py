"""One async client per running event loop, for every backend.

Pooled connections belong to the loop that opened them, so a model used from several
loops (``asyncio.run`` twice, one loop per test) needs a client each. A client holds
its loop through its connections, so weak keys alone never let go: the clients of
loops that have closed are dropped on the next lookup.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class PerLoop(Generic[T]):
    """A cache of one ``T`` per live event loop; pickles empty (clients are rebuilt)."""

    def __init__(self) -> None:
        self._items: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = (
            weakref.WeakKeyDictionary()
        )

    def get(self, make: Callable[[], T]) -> T:
        """The running loop's ``T``, made with ``make`` on first use in that loop."""
        loop = asyncio.get_running_loop()
        for done in [old for old in self._items if old.is_closed()]:
            del self._items[done]
        item = self._items.get(loop)
        if item is None:
            item = self._items[loop] = make()
        return item

    def __len__(self) -> int:
        return len(self._items)

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]
