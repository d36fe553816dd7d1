"""The neutral conversation every adapter maps into and every backend maps out of.

Flow: an adapter turns framework messages into ``list[Turn]`` (``_map_*`` in the
adapter), a backend turns turns into a wire request and the wire reply into a
``Reply`` or a stream of ``Delta`` (``_process_*`` in the backend), and the adapter
turns those back into framework objects. Nothing here knows about LangChain,
LlamaIndex, OpenAI or fal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]
MediaKind = Literal["image", "video"]


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True)
class MediaPart:
    """An image or a video, from exactly one source.

    ``url`` is an http(s) URL (passed through) or a ``data:`` URL; ``data`` is raw
    bytes; ``path`` is a local file the caller explicitly asked to send (a
    ``pathlib.Path``, LlamaIndex ``ImageBlock(path=...)``). Strings that merely look
    like paths never become ``path``: see ``nemovlm.media.media_from_string``.
    """

    kind: MediaKind
    url: str | None = None
    data: bytes | None = field(default=None, repr=False)
    path: Path | None = None
    mime_type: str | None = None
    # Per-video sampling hint (LlamaIndex ``VideoBlock.fps``); request-level
    # settings on the model take precedence.
    fps: float | None = None

    def __post_init__(self) -> None:
        given = sum(x is not None for x in (self.url, self.data, self.path))
        if given != 1:
            raise ValueError(
                f"A {self.kind} part needs exactly one of url, data or path (got {given})."
            )

    def describe(self) -> str:
        """A short, safe description for error messages (never the bytes)."""
        if self.url is not None:
            if self.url.startswith("data:"):
                return f"{self.kind} (data URL, {self.url[:40].split(',')[0]})"
            return f"{self.kind} ({self.url[:80]})"
        if self.path is not None:
            return f"{self.kind} (file {self.path})"
        assert self.data is not None
        return f"{self.kind} ({len(self.data)} bytes)"


Part = TextPart | MediaPart


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class InvalidToolCall:
    """A tool call whose arguments did not parse; kept, never raised."""

    id: str | None
    name: str | None
    arguments: str | None
    error: str


@dataclass(frozen=True)
class ToolSpec:
    """A tool as the core sees it: an OpenAI-style function description."""

    name: str
    description: str
    parameters: dict[str, Any]
    strict: bool | None = None
    """Sent as ``function.strict`` (the arguments must follow ``parameters`` exactly);
    ``None`` leaves it out."""


@dataclass
class Turn:
    """One message of the neutral conversation.

    ``tool_calls`` only on assistant turns; ``tool_call_id`` only on tool turns.
    A tool turn's parts may hold images (a tool that returns a screenshot).
    """

    role: Role
    parts: list[Part] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))

    @property
    def media(self) -> list[MediaPart]:
        return [p for p in self.parts if isinstance(p, MediaPart)]


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    reasoning_tokens: int | None = None

    def __add__(self, other: Usage) -> Usage:
        reasoning = None
        if self.reasoning_tokens is not None or other.reasoning_tokens is not None:
            reasoning = (self.reasoning_tokens or 0) + (other.reasoning_tokens or 0)
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.total_tokens + other.total_tokens,
            reasoning,
        )


@dataclass
class ToolCallChunk:
    """A streamed fragment of a tool call; ``index`` ties fragments together."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


TokenLogprob = dict[str, Any]
"""One generated token in OpenAI's shape: ``{"token", "logprob", "bytes", "top_logprobs"}``."""


@dataclass
class Delta:
    """One streamed piece of a reply. Empty fields mean "nothing new"."""

    text: str = ""
    reasoning: str = ""
    tool_call_chunks: list[ToolCallChunk] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    invalid_tool_calls: list[InvalidToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None
    model: str | None = None
    response_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    logprobs: list[TokenLogprob] | None = None
    """The logprobs of this piece's tokens, when the request asked for them."""

    def is_empty(self) -> bool:
        return not (
            self.text
            or self.logprobs
            or self.reasoning
            or self.tool_call_chunks
            or self.tool_calls
            or self.invalid_tool_calls
            or self.finish_reason
            or self.usage
            or self.metadata
        )


@dataclass
class Reply:
    """A whole answer, whichever backend produced it."""

    text: str = ""
    reasoning: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    invalid_tool_calls: list[InvalidToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None
    model: str | None = None
    response_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    logprobs: list[TokenLogprob] | None = None
    """Per-token logprobs of the content as the server generated it, when the request
    asked for them (``logprobs``, ``top_logprobs``); a ``<think>`` trace inside the
    content is part of it, a trace in a reasoning field is not."""
    choices: list[Reply] = field(default_factory=list)
    """Every choice, in order, when the request asked for several (``n > 1``); this
    reply's own fields are the first choice's, and ``usage`` counts them all. Empty
    for a single answer."""

    @property
    def all_choices(self) -> list[Reply]:
        """The choices as a list, one or several."""
        return self.choices or [self]
