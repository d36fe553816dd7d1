"""What every backend does before mapping a request and after reading a reply.

Out (``prepare``): check the options and the conversation against the profile, render
the prompt tool protocol where the model has no native tools, move tool-returned
media where the model can see it, switch reasoning the model's own way, prepare every
image and video (``nemovlm.media``), and order media first where the model wants it.
The result is a ``PreparedConversation`` a backend maps to its wire format.

In (``ReplyProcessor``): one per-chunk function for streaming and non-streaming,
sync and async. A backend turns each wire chunk (or the whole reply, as one chunk)
into a raw ``Delta``; the processor splits reasoning out of the text, holds back a
prompt-protocol tool call until it can be parsed, and ``finish`` releases the rest.
``assemble_reply`` folds processed deltas into a ``Reply``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from typing_extensions import assert_never

from nemovlm.errors import UnsupportedInputError
from nemovlm.media import MediaPolicy, PreparedMedia, needs_work, prepare_media, run_off_loop
from nemovlm.media.cache import NotCached, lookups_only
from nemovlm.messages import (
    Delta,
    InvalidToolCall,
    MediaPart,
    Reply,
    Role,
    TextPart,
    TokenLogprob,
    ToolCall,
    ToolSpec,
    Turn,
    Usage,
)
from nemovlm.options import RequestOptions, check_options
from nemovlm.profiles import ModelProfile
from nemovlm.reasoning import ThinkSplitter, map_reasoning, reasoning_enabled
from nemovlm.tools import (
    ToolCallAccumulator,
    ToolCallScreen,
    looks_like_json_reply,
    map_prompt_protocol,
    process_duplicate_ids,
    process_tool_reply,
    strip_code_fence,
)

PreparedPart = TextPart | PreparedMedia


@dataclass
class PreparedTurn:
    role: Role
    parts: list[PreparedPart] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))

    @property
    def media(self) -> list[PreparedMedia]:
        return [p for p in self.parts if isinstance(p, PreparedMedia)]


@dataclass
class PreparedConversation:
    turns: list[PreparedTurn]
    params: dict[str, Any]
    """Wire parameters the core decided (reasoning switches)."""
    native_tools: bool
    """Send ``options.tools`` as native tools."""
    json_mode: Literal["native", "prompt"] | None
    processor: ReplyProcessor
    video_fps_hint: float | None = None
    """A per-video sampling rate the caller attached to a video (LlamaIndex
    ``VideoBlock.fps``); request-level ``video_fps``/``video_num_frames`` win."""

    @property
    def images(self) -> list[PreparedMedia]:
        return [m for t in self.turns for m in t.media if m.kind == "image"]

    @property
    def videos(self) -> list[PreparedMedia]:
        return [m for t in self.turns for m in t.media if m.kind == "video"]


def prepare(
    turns: Sequence[Turn],
    options: RequestOptions,
    profile: ModelProfile,
    policy: MediaPolicy | None = None,
    *,
    stream: bool = False,
) -> PreparedConversation:
    """Check and shape a conversation for ``profile``; raises before any request."""
    if not turns:
        raise UnsupportedInputError("The message list is empty: pass at least one message.")
    check_options(options, profile, stream=stream)
    for turn in turns:
        if turn.role in ("system", "assistant") and turn.media:
            raise UnsupportedInputError(
                f"A {turn.role} message cannot carry {turn.media[0].describe()}: put images "
                "and videos in a user message (or a tool result)."
            )
    policy = _media_policy(options, profile, policy)
    work = list(turns)

    prompt_tools = profile.tools == "prompt" and bool(options.tools)
    json_mode: Literal["native", "prompt"] | None = None
    if options.json_schema is not None or options.json_mode:
        json_mode = "native" if profile.json_schema else "prompt"
    if profile.tools == "prompt":
        # Without native tools the wire has no tool role: history goes in as text.
        work = map_prompt_protocol(
            work,
            tools=options.tools if prompt_tools else (),
            tool_choice=options.tool_choice,
            json_schema=options.json_schema if json_mode == "prompt" else None,
            json_object=json_mode == "prompt" and options.json_mode,
        )
    elif profile.tools == "native":
        work = _map_tool_media(work, profile)
        if json_mode == "prompt":
            work = map_prompt_protocol(
                work, json_schema=options.json_schema, json_object=options.json_mode
            )
    else:
        assert_never(profile.tools)

    has_video = any(m.kind == "video" for t in work for m in t.media)
    work, params = map_reasoning(work, options, profile, has_video=has_video)

    prepared = [_prepare_turn(t, profile, policy) for t in work]
    _check_media_counts(prepared, profile)

    processor = ReplyProcessor(
        tools=options.tools,
        prompt_tools=prompt_tools and options.tool_choice != "none",
        prompt_json=json_mode == "prompt",
        expect_reasoning=reasoning_enabled(options, profile, turns) and options.include_reasoning,
    )
    hints = [m.fps for t in work for m in t.media if m.kind == "video" and m.fps]
    return PreparedConversation(
        turns=prepared,
        params=params,
        native_tools=bool(options.tools) and profile.tools == "native",
        json_mode=json_mode,
        processor=processor,
        video_fps_hint=hints[0] if hints else None,
    )


async def aprepare(
    turns: Sequence[Turn],
    options: RequestOptions,
    profile: ModelProfile,
    policy: MediaPolicy | None = None,
    *,
    stream: bool = False,
) -> PreparedConversation:
    """``prepare`` for async callers: media that must be decoded, read or fetched is
    prepared in a worker thread (``nemovlm.media.run_off_loop``), so one large photo or
    slow host does not stall the event loop; cancelling the call stops that work where
    it can."""
    # The policy ``prepare`` will use: an image cached for other settings is decoded again.
    checked = _media_policy(options, profile, policy)
    media = (p for t in turns for p in t.parts if isinstance(p, MediaPart))
    if not any(needs_work(p, profile, checked) for p in media):
        try:
            with lookups_only():  # a miss raises rather than decode on the loop
                return prepare(turns, options, profile, policy, stream=stream)
        except NotCached:
            pass  # evicted since the check, by another thread's work
    return await run_off_loop(prepare, turns, options, profile, policy, stream=stream)


def _media_policy(
    options: RequestOptions, profile: ModelProfile, policy: MediaPolicy | None
) -> MediaPolicy:
    """The media policy a request is prepared with."""
    policy = policy or MediaPolicy()
    if options.max_num_tiles and profile.tile_size and policy.max_image_pixels is None:
        # More tiles asked for: the model can use more pixels, so send them.
        tiles = max(options.max_num_tiles, profile.max_tiles or 0)
        policy = replace(policy, max_image_pixels=profile.tile_size**2 * tiles)
    return policy


def _map_tool_media(turns: list[Turn], profile: ModelProfile) -> list[Turn]:
    """Native tool messages carry text only: media a tool returned follows in a user turn
    (or stays as ``<img>`` tags where the model reads them)."""
    if profile.img_tag or not any(t.role == "tool" and t.media for t in turns):
        return turns
    out: list[Turn] = []
    pending: list[MediaPart] = []
    for turn in turns:
        if turn.role != "tool" and pending:
            out.append(_tool_media_turn(pending))
            pending = []
        if turn.role == "tool" and turn.media:
            pending.extend(turn.media)
            text_parts: list[TextPart | MediaPart] = [
                p for p in turn.parts if isinstance(p, TextPart)
            ]
            note = TextPart(f"\n[{len(turn.media)} media item(s) follow in the next message]")
            out.append(
                Turn("tool", [*text_parts, note], tool_call_id=turn.tool_call_id, name=turn.name)
            )
        else:
            out.append(turn)
    if pending:
        out.append(_tool_media_turn(pending))
    return out


def _tool_media_turn(media: list[MediaPart]) -> Turn:
    return Turn("user", [TextPart("The tool returned these media items:"), *media])


def _prepare_turn(turn: Turn, profile: ModelProfile, policy: MediaPolicy) -> PreparedTurn:
    parts: list[PreparedPart] = [
        prepare_media(p, profile, policy)
        if isinstance(p, MediaPart)
        else _map_inert_img_tags(p, profile)
        for p in turn.parts
    ]
    if profile.images_first and turn.role == "user":
        # Stable: media keep their order, text keeps its order, media go first.
        parts = [p for p in parts if isinstance(p, PreparedMedia)] + [
            p for p in parts if isinstance(p, TextPart)
        ]
    return PreparedTurn(turn.role, parts, list(turn.tool_calls), turn.tool_call_id, turn.name)


# ``<img``, ``< IMG``, ``</img``: any spelling a lenient tag reader might accept.
_IMG_TAG_START = re.compile(r"<(?=\s*/?\s*img\b)", re.IGNORECASE)


def _map_inert_img_tags(part: TextPart, profile: ModelProfile) -> TextPart:
    """Text for a model that reads ``<img src=...>`` inside text (``profile.img_tag``)
    with every such tag made inert (``&lt;img ...``).

    Such a server fetches whatever a tag names, so a tag inside a tool result, a web
    page or a document pasted into a message would make it fetch an address nobody
    chose. Only images given as image parts become tags (``image_transport="img_tag"``,
    written by the backend after this)."""
    if not profile.img_tag or "<" not in part.text:
        return part
    inert = _IMG_TAG_START.sub("&lt;", part.text)
    return part if inert == part.text else TextPart(inert)


def _check_media_counts(turns: list[PreparedTurn], profile: ModelProfile) -> None:
    images = sum(1 for t in turns for m in t.media if m.kind == "image")
    videos = sum(1 for t in turns for m in t.media if m.kind == "video")
    if profile.max_images is not None and images > profile.max_images:
        raise UnsupportedInputError(
            f"{profile.model} takes {_count(profile.max_images, 'image')} per request; "
            f"this conversation has {images}. Send one image per call."
        )
    if profile.max_videos is not None and videos > profile.max_videos:
        raise UnsupportedInputError(
            f"{profile.model} takes {_count(profile.max_videos, 'video')} per request; "
            f"this conversation has {videos}. Send one video per call."
        )
    if profile.requires == "image":
        if images == 0:
            raise UnsupportedInputError(
                f"{profile.model} needs exactly one image with the prompt: add an image part."
            )
    elif profile.requires == "video":
        if videos == 0:
            raise UnsupportedInputError(
                f"{profile.model} needs exactly one video with the prompt: add a video part."
            )
    elif profile.requires is not None:
        assert_never(profile.requires)


def _count(n: int, noun: str) -> str:
    return f"at most {n} {noun}{'' if n == 1 else 's'}"


@dataclass
class ReplyProcessor:
    """Per-chunk processing of a reply; one instance per request."""

    tools: Sequence[ToolSpec] = ()
    prompt_tools: bool = False
    prompt_json: bool = False
    expect_reasoning: bool = False
    _think: ThinkSplitter = field(init=False)
    _hold: list[str] | None = field(default=None, init=False)
    _mode: Literal["undecided", "plain", "hold"] = field(default="undecided", init=False)
    _calls: ToolCallScreen = field(default_factory=ToolCallScreen, init=False)

    def __post_init__(self) -> None:
        self._think = ThinkSplitter(expect_reasoning=self.expect_reasoning)
        if not (self.prompt_tools or self.prompt_json):
            self._mode = "plain"

    def feed(self, raw: Delta) -> Delta:
        """The processed counterpart of one raw wire delta."""
        if raw.reasoning:
            self._think.saw_reasoning_field()
        answer, thought = self._think.feed(raw.text) if raw.text else ("", "")
        return Delta(
            text=self._route(answer),
            reasoning=raw.reasoning + thought,
            tool_call_chunks=self._calls.screen(raw.tool_call_chunks),
            tool_calls=raw.tool_calls,
            invalid_tool_calls=raw.invalid_tool_calls,
            finish_reason=raw.finish_reason,
            usage=raw.usage,
            model=raw.model,
            response_id=raw.response_id,
            metadata=raw.metadata,
            logprobs=raw.logprobs,
        )

    def finish(self) -> Delta:
        """What was held back, released at the end of the reply."""
        answer, thought = self._think.finish()
        text = self._route(answer)
        out = Delta(text=text, reasoning=thought)
        if self._mode == "hold" or self._mode == "undecided":
            held = "".join(self._hold or ())
            self._hold = None
            if self.prompt_tools:
                out.text, out.tool_calls, out.invalid_tool_calls = process_tool_reply(
                    held, self.tools
                )
                if self.prompt_json and out.text:
                    out.text = strip_code_fence(out.text)
            else:
                out.text = strip_code_fence(held)
            if out.tool_calls and not out.finish_reason:
                out.finish_reason = "tool_calls"
        out.invalid_tool_calls += self._calls.finish()
        return out

    def _route(self, answer: str) -> str:
        if self._mode == "plain" or not answer:
            return answer
        if self._hold is None:
            self._hold = []
        self._hold.append(answer)
        if self._mode == "undecided":
            head = "".join(self._hold)
            verdict = looks_like_json_reply(head)
            if verdict is None:
                return ""
            stripped = head.lstrip()
            holds = stripped.startswith("`") or (self.prompt_tools and stripped.startswith("{"))
            if verdict and holds:
                self._mode = "hold"
                return ""
            self._mode = "plain"
            self._hold = None
            return head
        return ""


def assemble_reply(deltas: Iterable[Delta]) -> Reply:
    """Fold processed deltas into one ``Reply``."""
    text: list[str] = []
    reasoning: list[str] = []
    acc = ToolCallAccumulator()
    calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    reply = Reply()
    usage: Usage | None = None
    logprobs: list[TokenLogprob] | None = None
    for d in deltas:
        if d.logprobs is not None:
            logprobs = logprobs if logprobs is not None else []
            logprobs.extend(d.logprobs)
        text.append(d.text)
        reasoning.append(d.reasoning)
        for chunk in d.tool_call_chunks:
            acc.add(chunk)
        calls.extend(d.tool_calls)
        invalid.extend(d.invalid_tool_calls)
        reply.finish_reason = d.finish_reason or reply.finish_reason
        reply.model = d.model or reply.model
        reply.response_id = d.response_id or reply.response_id
        reply.metadata.update(d.metadata)
        # Servers that report usage on several chunks report running totals.
        usage = d.usage or usage
    streamed_calls, streamed_invalid = acc.finish()
    reply.text = "".join(text)
    joined = "".join(reasoning).strip()
    reply.reasoning = joined or None
    reply.tool_calls, duplicates = process_duplicate_ids(streamed_calls + calls)
    reply.invalid_tool_calls = streamed_invalid + invalid + duplicates
    reply.usage = usage
    reply.logprobs = logprobs
    return reply
