"""LlamaIndex objects <-> the neutral conversation. No wire logic here.

In: ``map_messages`` turns ``ChatMessage``s into ``Turn``s; ``_map_blocks`` handles
``TextBlock``, ``ImageBlock`` and ``VideoBlock`` (``_map_image_block`` /
``_map_video_block``: bytes, an explicit path, or a URL string through
``media_from_string``), skips ``ThinkingBlock``s and reads ``ToolCallBlock``s as the
assistant's tool calls (``_map_tool_calls``). ``map_image_document`` does the same for
the ``ImageNode``s a multi-modal query engine hands over, and
``tool_spec_from_llama_index`` turns a LlamaIndex tool or an OpenAI tool dict into the
core's ``ToolSpec``.

Out: ``process_reply`` builds the ``ChatResponse`` a LlamaIndex user expects
(reasoning in a ``ThinkingBlock``, tool calls as ``ToolCallBlock``s and OpenAI-shaped
``additional_kwargs["tool_calls"]``, token counts in ``raw["usage"]`` and
``additional_kwargs``); ``ChatResponseAccumulator`` does it chunk by chunk (cumulative
message, ``delta``, ``additional_kwargs["thinking_delta"]``), its last response folded
by the core's ``assemble_reply`` so a stream ends with the same message a plain call
returns. ``process_tool_selections`` reads tool calls back out of a response.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from llama_index.core.base.llms.generic_utils import image_node_to_image_block
from llama_index.core.base.llms.types import (
    AudioBlock,
    CachePoint,
    ChatMessage,
    ChatResponse,
    CitableBlock,
    CitationBlock,
    CompletionResponse,
    DocumentBlock,
    ImageBlock,
    LogProb,
    MessageRole,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
    VideoBlock,
)
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.llms.utils import parse_partial_json
from llama_index.core.schema import ImageDocument, ImageNode

from nemovlm.errors import UnsupportedInputError
from nemovlm.media import MediaPolicy, media_from_string
from nemovlm.messages import (
    Delta,
    InvalidToolCall,
    MediaPart,
    Part,
    Reply,
    Role,
    TextPart,
    ToolCall,
    ToolSpec,
    Turn,
    Usage,
)
from nemovlm.pipeline import assemble_reply
from nemovlm.tools import parse_arguments, tool_spec_from_openai

_ROLES: dict[str, Role] = {
    MessageRole.SYSTEM.value: "system",
    MessageRole.DEVELOPER.value: "system",
    MessageRole.USER.value: "user",
    MessageRole.ASSISTANT.value: "assistant",
    MessageRole.CHATBOT.value: "assistant",
    MessageRole.MODEL.value: "assistant",
    MessageRole.TOOL.value: "tool",
    MessageRole.FUNCTION.value: "tool",
}

# --- in ----------------------------------------------------------------------------


def map_messages(messages: Sequence[ChatMessage], policy: MediaPolicy) -> list[Turn]:
    return [_map_message(m, policy) for m in messages]


def _map_message(message: ChatMessage, policy: MediaPolicy) -> Turn:
    role_name = message.role.value if isinstance(message.role, MessageRole) else message.role
    role = _ROLES.get(str(role_name))
    if role is None:
        raise UnsupportedInputError(
            f"Unknown message role {role_name!r}; use one of {sorted(_ROLES)}."
        )
    parts = _map_blocks(message.blocks, policy)
    if role == "assistant":
        return Turn("assistant", parts, tool_calls=_map_tool_calls(message))
    if role == "tool":
        block = next((b for b in message.blocks if isinstance(b, ToolCallBlock)), None)
        call_id = message.additional_kwargs.get("tool_call_id") or (
            block.tool_call_id if block else None
        )
        name = message.additional_kwargs.get("name") or (block.tool_name if block else None)
        return Turn("tool", parts, tool_call_id=call_id, name=name)
    return Turn(role, parts)


def _map_blocks(blocks: Iterable[Any], policy: MediaPolicy) -> list[Part]:
    parts: list[Part] = []
    for block in blocks:
        if isinstance(block, TextBlock):
            if block.text:
                parts.append(TextPart(block.text))
        elif isinstance(block, ImageBlock):
            parts.append(_map_image_block(block, policy))
        elif isinstance(block, VideoBlock):
            parts.append(_map_video_block(block, policy))
        elif isinstance(block, CitableBlock):
            parts.extend(_map_blocks(block.content, policy))
        elif isinstance(block, CitationBlock):
            parts.extend(_map_blocks(block.cited_content, policy))
        elif isinstance(block, (ThinkingBlock, ToolCallBlock, CachePoint)):
            # Earlier reasoning is not sent back; tool calls travel in Turn.tool_calls;
            # cache points are a hint other providers read.
            continue
        elif isinstance(block, (AudioBlock, DocumentBlock)):
            raise UnsupportedInputError(
                f"{type(block).__name__} is not supported by NVIDIA vision-language models; "
                "send TextBlock, ImageBlock or VideoBlock (extract a document's text first)."
            )
        else:
            raise UnsupportedInputError(
                f"Content block {type(block).__name__} is not supported; "
                "send TextBlock, ImageBlock or VideoBlock."
            )
    return parts


def _map_image_block(block: ImageBlock, policy: MediaPolicy) -> MediaPart:
    # Same precedence as ImageBlock.resolve_image: bytes, then path, then url.
    if block.image is not None:
        # LlamaIndex keeps bytes base64-encoded; resolve_image gives the raw bytes.
        data = block.resolve_image().read()
        return MediaPart("image", data=data, mime_type=block.image_mimetype)
    if block.path is not None:
        return MediaPart("image", path=Path(block.path), mime_type=block.image_mimetype)
    if block.url is not None:
        return media_from_string(str(block.url), "image", policy)
    raise UnsupportedInputError("An ImageBlock needs image bytes, a path or a url.")


def _map_video_block(block: VideoBlock, policy: MediaPolicy) -> MediaPart:
    part: MediaPart
    if block.video is not None:
        data = block.resolve_video().read()
        part = MediaPart("video", data=data, mime_type=block.video_mimetype)
    elif block.path is not None:
        part = MediaPart("video", path=Path(block.path), mime_type=block.video_mimetype)
    elif block.url is not None:
        part = media_from_string(str(block.url), "video", policy)
    else:
        raise UnsupportedInputError("A VideoBlock needs video bytes, a path or a url.")
    return replace(part, fps=float(block.fps)) if block.fps is not None else part


def map_image_document(
    document: ImageNode | ImageDocument | ImageBlock, policy: MediaPolicy
) -> MediaPart:
    """An ``ImageNode``/``ImageDocument`` (``image`` base64, ``image_path``, ``image_url``)
    or an ``ImageBlock``, as a multi-modal query engine passes them."""
    if isinstance(document, ImageBlock):
        return _map_image_block(document, policy)
    if isinstance(document, (ImageNode, ImageDocument)):
        # ImageDocument is no ImageNode subclass but has the same image properties.
        block = image_node_to_image_block(document)  # type: ignore[arg-type]
        return _map_image_block(block, policy)
    raise UnsupportedInputError(
        f"image_documents must hold ImageNode / ImageDocument or ImageBlock objects, "
        f"not {type(document).__name__}."
    )


def _map_tool_calls(message: ChatMessage) -> list[ToolCall]:
    """An assistant message's tool calls: ``ToolCallBlock``s, else OpenAI-shaped
    ``additional_kwargs["tool_calls"]`` (histories written by other integrations)."""
    calls: list[ToolCall] = []
    blocks = [b for b in message.blocks if isinstance(b, ToolCallBlock)]
    if blocks:
        for i, block in enumerate(blocks):
            calls.append(
                ToolCall(
                    block.tool_call_id or f"call_{i}",
                    block.tool_name,
                    _arguments(block.tool_kwargs, block.tool_name),
                )
            )
        return calls
    for i, raw in enumerate(message.additional_kwargs.get("tool_calls") or []):
        call_id, name, arguments = _read_openai_call(raw)
        if not name:
            raise UnsupportedInputError(
                f"additional_kwargs['tool_calls'][{i}] has no function name; "
                "use ToolCallBlock(tool_name=..., tool_kwargs=...) in message.blocks."
            )
        calls.append(ToolCall(call_id or f"call_{i}", name, _arguments(arguments, name)))
    return calls


def _read_openai_call(raw: Any) -> tuple[str | None, str | None, Any]:
    if isinstance(raw, dict):
        fn = raw.get("function") or {}
        return raw.get("id"), fn.get("name"), fn.get("arguments")
    fn = getattr(raw, "function", None)
    return getattr(raw, "id", None), getattr(fn, "name", None), getattr(fn, "arguments", None)


def _arguments(raw: Any, name: str) -> dict[str, Any]:
    try:
        return parse_arguments(raw)
    except ValueError as exc:
        raise UnsupportedInputError(
            f"The arguments of the earlier call to tool {name!r} are not a JSON object "
            f"({exc}); fix tool_kwargs in the message history."
        ) from None


def tool_spec_from_llama_index(tool: Any) -> ToolSpec:
    """A ``ToolSpec`` from a ``ToolSpec``, a LlamaIndex tool, or an OpenAI tool dict."""
    if isinstance(tool, ToolSpec):
        return tool
    metadata = getattr(tool, "metadata", None)
    if metadata is not None and hasattr(metadata, "to_openai_tool"):
        tool = metadata.to_openai_tool(skip_length_check=True)
    spec = tool_spec_from_openai(tool) if isinstance(tool, dict) else None
    if spec is not None:
        return spec
    raise UnsupportedInputError(
        f"Cannot use {tool!r} as a tool: pass LlamaIndex tools (FunctionTool...) or OpenAI "
        "tool dicts {'type': 'function', 'function': {'name': ..., 'parameters': ...}}."
    )


# --- out ---------------------------------------------------------------------------


def _process_usage(usage: Usage | None) -> dict[str, int]:
    """Token counts under the OpenAI names LlamaIndex's token counter reads."""
    if usage is None:
        return {}
    counts = {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens or usage.input_tokens + usage.output_tokens,
    }
    if usage.reasoning_tokens is not None:
        counts["reasoning_tokens"] = usage.reasoning_tokens
    return counts


def _process_raw(reply: Reply | Delta, model: str) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "id": reply.response_id,
        "model": reply.model or model,
        "finish_reason": reply.finish_reason,
        "usage": _process_usage(reply.usage) or None,
    }
    if reply.metadata:
        raw["metadata"] = dict(reply.metadata)
    if isinstance(reply, Reply) and reply.choices:
        # n > 1: the response is the first choice; every choice is here, OpenAI-shaped,
        # as in OpenAILike's raw completion.
        raw["choices"] = [_process_choice(i, c) for i, c in enumerate(reply.choices)]
    return raw


def _process_choice(index: int, choice: Reply) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": choice.text}
    if choice.reasoning:
        message["reasoning_content"] = choice.reasoning
    if choice.tool_calls:
        message["tool_calls"] = [
            _openai_call(c.id, c.name, json.dumps(c.arguments)) for c in choice.tool_calls
        ]
    return {"index": index, "message": message, "finish_reason": choice.finish_reason}


def _process_logprobs(logprobs: list[dict[str, Any]] | None) -> list[list[LogProb]] | None:
    """Per generated token, its ``top_logprobs`` as LlamaIndex's ``LogProb``s (as
    LlamaIndex's OpenAI class gives them); the token itself when no alternatives were
    asked for."""
    if logprobs is None:
        return None
    return [
        [
            LogProb(token=t["token"], logprob=t["logprob"], bytes=t.get("bytes") or [])
            for t in (token.get("top_logprobs") or [token])
        ]
        for token in logprobs
    ]


def _openai_call(call_id: str | None, name: str | None, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _process_message(
    text: str,
    reasoning: str | None,
    calls: Sequence[tuple[str | None, str, dict[str, Any] | str]],
    invalid: Sequence[InvalidToolCall] = (),
    reasoning_tokens: int | None = None,
) -> ChatMessage:
    blocks: list[Any] = []
    if reasoning:
        blocks.append(ThinkingBlock(content=reasoning, num_tokens=reasoning_tokens))
    blocks.append(TextBlock(text=text))
    extra: dict[str, Any] = {}
    for call_id, name, arguments in calls:
        blocks.append(ToolCallBlock(tool_call_id=call_id, tool_name=name, tool_kwargs=arguments))
    if calls:
        # FunctionCallingProgram's streaming parser looks here before asking for calls.
        extra["tool_calls"] = [
            _openai_call(i, n, a if isinstance(a, str) else json.dumps(a)) for i, n, a in calls
        ]
    if invalid:
        extra["invalid_tool_calls"] = [
            {"id": c.id, "name": c.name, "arguments": c.arguments, "error": c.error}
            for c in invalid
        ]
    return ChatMessage(role=MessageRole.ASSISTANT, blocks=blocks, additional_kwargs=extra)


def process_reply(reply: Reply, model: str) -> ChatResponse:
    message = _process_message(
        reply.text,
        reply.reasoning,
        [(c.id, c.name, c.arguments) for c in reply.tool_calls],
        reply.invalid_tool_calls,
        reply.usage.reasoning_tokens if reply.usage else None,
    )
    return ChatResponse(
        message=message,
        raw=_process_raw(reply, model),
        additional_kwargs=_process_usage(reply.usage),
        logprobs=_process_logprobs(reply.logprobs),
    )


class ChatResponseAccumulator:
    """Folds the core's deltas into the cumulative ``ChatResponse``s LlamaIndex streams."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.deltas: list[Delta] = []
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.partial: dict[int, list[Any]] = {}
        self.whole: list[ToolCall] = []

    def feed(self, delta: Delta) -> ChatResponse | None:
        """The response for one delta; ``None`` when it holds nothing to show."""
        self.deltas.append(delta)
        self.text.append(delta.text)
        self.reasoning.append(delta.reasoning)
        for chunk in delta.tool_call_chunks:
            entry = self.partial.setdefault(chunk.index, [chunk.id, chunk.name, []])
            entry[0] = entry[0] or chunk.id
            entry[1] = entry[1] or chunk.name
            entry[2].append(chunk.arguments)
        self.whole.extend(delta.tool_calls)
        if delta.is_empty():
            return None
        calls: list[tuple[str | None, str, dict[str, Any] | str]] = [
            (call_id, name or "", "".join(pieces))
            for call_id, name, pieces in (self.partial[i] for i in sorted(self.partial))
        ]
        calls += [(c.id, c.name, c.arguments) for c in self.whole]
        message = _process_message("".join(self.text), "".join(self.reasoning), calls)
        extra = {"thinking_delta": delta.reasoning} if delta.reasoning else {}
        return ChatResponse(
            message=message,
            delta=delta.text,
            raw=_process_raw(delta, self.model),
            additional_kwargs=extra,
            logprobs=_process_logprobs(delta.logprobs),
        )

    def last(self) -> ChatResponse:
        """The closing response: the whole reply as a plain call returns it, empty delta."""
        response = process_reply(assemble_reply(self.deltas), self.model)
        response.delta = ""
        return response


def process_completion(response: ChatResponse) -> CompletionResponse:
    """A chat response as a completion; reasoning goes to ``additional_kwargs["thinking"]``
    since a completion has no blocks."""
    extra = dict(response.additional_kwargs)
    thinking = "".join(
        b.content or "" for b in response.message.blocks if isinstance(b, ThinkingBlock)
    )
    if thinking and "thinking_delta" not in extra:
        extra["thinking"] = thinking
    return CompletionResponse(
        text=response.message.content or "",
        additional_kwargs=extra,
        raw=response.raw,
        delta=response.delta,
        logprobs=response.logprobs,
    )


def process_tool_selections(
    response: ChatResponse, error_on_no_tool_call: bool
) -> list[ToolSelection]:
    message = response.message
    found: list[tuple[str | None, str | None, Any]] = [
        (b.tool_call_id, b.tool_name, b.tool_kwargs)
        for b in message.blocks
        if isinstance(b, ToolCallBlock)
    ]
    if not found:
        found = [_read_openai_call(c) for c in message.additional_kwargs.get("tool_calls") or []]
    selections = [
        ToolSelection(tool_id=call_id or "", tool_name=name, tool_kwargs=_selection_kwargs(args))
        for call_id, name, args in found
        if name
    ]
    if not selections and error_on_no_tool_call:
        invalid = message.additional_kwargs.get("invalid_tool_calls") or []
        why = "; ".join(f"{c.get('name')!r}: {c.get('error')}" for c in invalid)
        raise ValueError(
            "Expected at least one tool call, but got 0 tool calls."
            + (f" The model tried but its call(s) did not parse: {why}." if why else "")
        )
    return selections


def _selection_kwargs(arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    if not arguments:
        return {}
    try:
        # A stream's calls are partial JSON until the last response.
        value = parse_partial_json(str(arguments))
    except (ValueError, TypeError):
        return {}
    return value if isinstance(value, dict) else {}
