"""The prepared-image cache (a bounded LRU keyed by content and settings) and the
memo of data URLs already checked, so a conversation's repeated media is decoded once."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nemovlm.media.prepared import PreparedMedia


@dataclass(frozen=True)
class MediaCacheInfo:
    hits: int
    misses: int
    decodes: int
    """Images decoded by ``prepare_media`` since start (a cache hit decodes nothing)."""
    entries: int
    bytes: int
    max_entries: int
    max_bytes: int


def content_key(data: bytes) -> tuple[str, bytes, int]:
    """The cache key of some bytes: their digest and length, never the bytes themselves."""
    return ("bytes", hashlib.blake2b(data, digest_size=20).digest(), len(data))


class NotCached(Exception):
    """A lookup inside ``lookups_only()`` missed: what it needs must be decoded, which
    an async caller does in a worker thread, not on its event loop."""


_LOOKUP_ONLY: ContextVar[bool] = ContextVar("nemovlm_media_lookup_only", default=False)


@contextmanager
def lookups_only() -> Iterator[None]:
    """Within this block the caches only answer from what they hold: a miss raises
    ``NotCached`` instead of decoding (another thread may evict an entry between a
    check and its use)."""
    token = _LOOKUP_ONLY.set(True)
    try:
        yield
    finally:
        _LOOKUP_ONLY.reset(token)


class _DataUrlMemo:
    """Data URLs checked before, by the URL string itself -> (MIME type, digest).

    A conversation carries the same data URL in every call, often in several turns;
    base64-decoding it (to check it, then to find it in the cache) costs more than all
    the rest of a turn. An entry holds the URL, not its bytes; bounded by entries and
    by the characters of the URLs held.
    """

    def __init__(self, max_entries: int = 64, max_chars: int = 64 * 1024 * 1024) -> None:
        self._items: OrderedDict[str, tuple[str | None, Hashable]] = OrderedDict()
        self._lock = threading.Lock()
        self._chars = 0
        self.max_entries = max_entries
        self.max_chars = max_chars

    def get(self, url: str) -> tuple[str | None, Hashable] | None:
        with self._lock:
            found = self._items.get(url)
            if found is not None:
                self._items.move_to_end(url)
        if found is None and _LOOKUP_ONLY.get():
            raise NotCached(url[:40])
        return found

    def put(self, url: str, value: tuple[str | None, Hashable]) -> None:
        if len(url) > self.max_chars:
            return
        with self._lock:
            if self._items.pop(url, None) is not None:
                self._chars -= len(url)
            self._items[url] = value
            self._chars += len(url)
            while len(self._items) > self.max_entries or self._chars > self.max_chars:
                dropped, _ = self._items.popitem(last=False)
                self._chars -= len(dropped)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._chars = 0


DATA_URLS = _DataUrlMemo()


class _ImageCache:
    """A thread-safe LRU of prepared images, bounded by entries and by bytes held."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self._items: OrderedDict[Hashable, PreparedMedia] = OrderedDict()
        self._lock = threading.Lock()
        self._bytes = 0
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.hits = self.misses = self.decodes = 0

    def get_or_make(self, key: Hashable, make: Callable[[], PreparedMedia]) -> PreparedMedia:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return found
            if _LOOKUP_ONLY.get():
                raise NotCached(repr(key)[:80])
            self.misses += 1
        # Made outside the lock: two threads may prepare the same image once each,
        # which is cheaper than serialising every decode.
        made = make()
        self._put(key, made)
        return made

    def holds(self, key: Hashable) -> bool:
        """Whether ``key`` is cached (not counted as a hit or a miss)."""
        with self._lock:
            return key in self._items

    def count_decode(self) -> None:
        with self._lock:
            self.decodes += 1

    def _put(self, key: Hashable, item: PreparedMedia) -> None:
        size = len(item.data) if item.data is not None else 0
        with self._lock:
            if size > self.max_bytes or self.max_entries <= 0:
                return
            old = self._items.pop(key, None)
            if old is not None and old.data is not None:
                self._bytes -= len(old.data)
            self._items[key] = item
            self._bytes += size
            self._evict()

    def _evict(self) -> None:
        while self._items and (len(self._items) > self.max_entries or self._bytes > self.max_bytes):
            _, dropped = self._items.popitem(last=False)
            if dropped.data is not None:
                self._bytes -= len(dropped.data)

    def info(self) -> MediaCacheInfo:
        with self._lock:
            return MediaCacheInfo(
                hits=self.hits,
                misses=self.misses,
                decodes=self.decodes,
                entries=len(self._items),
                bytes=self._bytes,
                max_entries=self.max_entries,
                max_bytes=self.max_bytes,
            )

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0
            self.hits = self.misses = self.decodes = 0

    def set_limits(self, max_entries: int, max_bytes: int) -> None:
        with self._lock:
            self.max_entries, self.max_bytes = max_entries, max_bytes
            self._evict()


IMAGE_CACHE = _ImageCache(max_entries=256, max_bytes=256 * 1024 * 1024)


def cache_info() -> MediaCacheInfo:
    """Counters and size of the prepared-image cache."""
    return IMAGE_CACHE.info()


def clear_cache() -> None:
    """Empty the prepared-image cache and reset its counters."""
    IMAGE_CACHE.clear()
    DATA_URLS.clear()


def set_cache_limits(max_entries: int = 256, max_bytes: int = 256 * 1024 * 1024) -> None:
    """Bound the prepared-image cache (0 entries disables it); evicts at once if needed."""
    IMAGE_CACHE.set_limits(max_entries, max_bytes)
