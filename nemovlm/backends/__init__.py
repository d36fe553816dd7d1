"""Backends: the wire mapping for each way a model is served.

Each backend turns the neutral conversation (``nemovlm.messages``) into its wire
request and its wire reply into raw ``Delta``s; everything model-specific that is not
wire shape (reasoning, prompt tools, media rules) lives in the core modules.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from nemovlm.messages import Delta, Reply, Turn
    from nemovlm.options import RequestOptions
    from nemovlm.profiles import ModelProfile


class ChatBackend(Protocol):
    """What every backend offers the adapters (``NIMBackend``, ``FalBackend``)."""

    profile: ModelProfile

    def complete(self, turns: Sequence[Turn], options: RequestOptions) -> Reply: ...
    async def acomplete(self, turns: Sequence[Turn], options: RequestOptions) -> Reply: ...
    def stream(self, turns: Sequence[Turn], options: RequestOptions) -> Iterator[Delta]: ...
    def astream(self, turns: Sequence[Turn], options: RequestOptions) -> AsyncIterator[Delta]: ...
