"""LangChain objects <-> the neutral conversation. No wire logic here.

In: ``map_messages`` turns ``BaseMessage``s into ``Turn``s (``_map_content_block``
accepts OpenAI-style ``image_url``/``video_url`` parts and standard ``image``/``video``
blocks, v0 and v1). Out: ``process_reply`` and ``process_delta`` build the
``AIMessage`` / ``AIMessageChunk`` a LangChain user expects (reasoning in
``additional_kwargs["reasoning_content"]``, ``usage_metadata``, tool calls).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import ToolCallChunk as LCToolCallChunk
from langchain_core.messages.tool import invalid_tool_call, tool_call
from langchain_core.utils.json import parse_partial_json

from nemovlm.errors import UnsupportedInputError
from nemovlm.media import MediaPolicy, media_from_base64, media_from_string, read_media_file
from nemovlm.messages import (
    Delta,
    MediaKind,
    Part,
    Reply,
    Role,
    TextPart,
    ToolCall,
    ToolCallChunk,
    Turn,
    Usage,
)
from nemovlm.tools import parse_arguments

_ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "ai": "assistant",
    "tool": "tool",
}


def map_messages(messages: Sequence[BaseMessage], policy: MediaPolicy) -> list[Turn]:
    return [_map_message(m, policy) for m in messages]


def _map_message(message: BaseMessage, policy: MediaPolicy) -> Turn:
    if isinstance(message, AIMessage):
        calls = [
            ToolCall(c.get("id") or f"call_{i}", c["name"], dict(c.get("args") or {}))
            for i, c in enumerate(message.tool_calls)
        ]
        return Turn("assistant", _map_content(message.content, policy), tool_calls=calls)
    if isinstance(message, ToolMessage):
        return Turn(
            "tool",
            _map_content(message.content, policy),
            tool_call_id=message.tool_call_id,
            name=message.name,
        )
    if isinstance(message, SystemMessage):
        return Turn("system", _map_content(message.content, policy))
    if isinstance(message, HumanMessage):
        return Turn("user", _map_content(message.content, policy))
    if isinstance(message, ChatMessage):
        role = _ROLES.get(message.role)
        if role is None:
            raise UnsupportedInputError(
                f"Unknown message role {message.role!r}; use one of {sorted(_ROLES)}."
            )
        return Turn(role, _map_content(message.content, policy))
    raise UnsupportedInputError(
        f"{type(message).__name__} is not supported; send System/Human/AI/Tool messages."
    )


def _map_content(content: str | list[Any], policy: MediaPolicy) -> list[Part]:
    if isinstance(content, str):
        return [TextPart(content)] if content else []
    parts: list[Part] = []
    for block in content:
        part = _map_content_block(block, policy)
        if part is not None:
            parts.append(part)
    return parts


_SKIPPED = {"reasoning", "thinking", "tool_call", "tool_use", "invalid_tool_call"}


def _map_content_block(block: Any, policy: MediaPolicy) -> Part | None:
    if isinstance(block, str):
        return TextPart(block)
    if not isinstance(block, dict):
        raise UnsupportedInputError(
            f"Content block of type {type(block).__name__} is not supported."
        )
    kind = block.get("type")
    if kind == "text":
        return TextPart(str(block.get("text", "")))
    if kind in ("image_url", "video_url"):
        media: MediaKind = "image" if kind == "image_url" else "video"
        value = block.get(kind)
        url = value.get("url") if isinstance(value, dict) else value
        if not isinstance(url, str) or not url:
            raise UnsupportedInputError(f"A {kind} part needs a url: {{'{kind}': {{'url': ...}}}}.")
        return media_from_string(url, media, policy)
    if kind in ("image", "video"):
        return _map_standard_block(block, kind, policy)
    if kind in _SKIPPED:
        return None
    raise UnsupportedInputError(
        f"Content blocks of type {kind!r} are not supported; use text, image_url, video_url, "
        "or standard image / video blocks."
    )


def _map_standard_block(block: dict[str, Any], kind: MediaKind, policy: MediaPolicy) -> Part:
    # v1: {"type": "image", "url"|"base64", "mime_type"}; v0: "source_type" + "data"/"url".
    source_type = block.get("source_type")
    mime = block.get("mime_type")
    if block.get("base64") or (source_type == "base64" and block.get("data")):
        return media_from_base64(block.get("base64") or block["data"], mime, kind)
    url = block.get("url") or (block.get("data") if source_type == "url" else None)
    if url:
        return media_from_string(str(url), kind, policy)
    if block.get("file_id") or block.get("id") and source_type == "id":
        raise UnsupportedInputError(
            f"{kind} blocks by file id are not supported: pass a url, or base64 with mime_type."
        )
    raise UnsupportedInputError(
        f"A standard {kind} block needs 'url', or 'base64' with 'mime_type'."
    )


def media_block(path: str | Path) -> dict[str, Any]:
    """A standard LangChain ``image`` / ``video`` block for a local file you choose to send.

    Message content cannot carry a path, and a path string inside content is refused
    (content may come from a tool or a web page); this helper is the explicit way::

        HumanMessage(content=[{"type": "text", "text": "What is this?"},
                              media_block("chart.png")])
    """
    data, mime, kind = read_media_file(path)
    return {"type": kind, "base64": base64.b64encode(data).decode(), "mime_type": mime}


# --- out ---------------------------------------------------------------------------


def _process_usage(usage: Usage | None) -> UsageMetadata | None:
    if usage is None:
        return None
    # langchain-core 1.8 imports NotRequired from ``typing`` (3.11+), so mypy checking
    # for Python 3.10 reads the optional detail keys as required.
    meta: UsageMetadata = {  # type: ignore[typeddict-item]
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens or usage.input_tokens + usage.output_tokens,
    }
    if usage.reasoning_tokens is not None:
        meta["output_token_details"] = {"reasoning": usage.reasoning_tokens}
    return meta


def _process_token_usage(usage: Usage | None) -> dict[str, Any] | None:
    """Usage under OpenAI's names, as ``ChatOpenAI`` puts it in ``token_usage``."""
    if usage is None:
        return None
    counts: dict[str, Any] = {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens or usage.input_tokens + usage.output_tokens,
    }
    if usage.reasoning_tokens is not None:
        counts["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning_tokens}
    return counts


def process_response_metadata(
    model: str | None, finish_reason: str | None, response_id: str | None, extra: dict[str, Any]
) -> dict[str, Any]:
    meta: dict[str, Any] = {"model_name": model, "model_provider": "nvidia"}
    if finish_reason:
        meta["finish_reason"] = finish_reason
    if response_id:
        meta["id"] = response_id
    meta.update(extra)
    return meta


def process_llm_output(reply: Reply, model: str) -> dict[str, Any]:
    """``ChatResult.llm_output`` as ``ChatOpenAI`` fills it."""
    out: dict[str, Any] = {
        "token_usage": _process_token_usage(reply.usage) or {},
        "model_provider": "nvidia",
        "model_name": reply.model or model,
    }
    if reply.response_id:
        out["id"] = reply.response_id
    return out


def _process_logprobs(logprobs: list[dict[str, Any]] | None) -> dict[str, Any]:
    # ChatOpenAI's shape: the choice's ``logprobs`` object, tokens under "content".
    return {"logprobs": {"content": logprobs}} if logprobs is not None else {}


def process_reply(reply: Reply, model: str, usage: Usage | None = None) -> AIMessage:
    """One choice as an ``AIMessage``; ``usage``: the whole reply's (``n > 1``: each
    choice carries it, as ``ChatOpenAI`` does), else the choice's own."""
    usage = usage or reply.usage
    extra: dict[str, Any] = {}
    if reply.reasoning:
        extra["reasoning_content"] = reply.reasoning
    metadata = dict(reply.metadata)
    token_usage = _process_token_usage(usage)
    if token_usage is not None:
        metadata["token_usage"] = token_usage
    metadata.update(_process_logprobs(reply.logprobs))
    return AIMessage(
        content=reply.text,
        additional_kwargs=extra,
        tool_calls=[tool_call(name=c.name, args=c.arguments, id=c.id) for c in reply.tool_calls],
        invalid_tool_calls=[
            invalid_tool_call(name=c.name, args=c.arguments, id=c.id, error=c.error)
            for c in reply.invalid_tool_calls
        ],
        usage_metadata=_process_usage(usage),
        response_metadata=process_response_metadata(
            reply.model or model, reply.finish_reason, reply.response_id, metadata
        ),
        id=reply.response_id,
    )


# Tool call chunks are numbered apart from the reasoning and text blocks: with
# output_version="v1" LangChain numbers those by their order (0, 1, ...) and takes a
# tool call chunk's index as its content block's, so a call at index 0 would be folded
# into the reasoning block before it.
_STREAMED_CALLS = 100


# LangChain rebuilds a streamed message's tool calls from the joined chunk args with
# its lenient partial-JSON parser (AIMessageChunk.init_tool_calls), which reads a cut
# '{"city": "Par' as {"city": "Par"}; chunks already sent cannot be taken back. So the
# last chunk appends to such args the shortest tail that parser gives up on (an
# unmatched closer), and the aggregate lists the call under invalid_tool_calls.
_GIVE_UP_TAILS = ("}", "]", '"}', '"]', '""}', '""]')


def _langchain_reads_as_call(args: str) -> bool:
    try:
        return isinstance(parse_partial_json(args), dict)
    except ValueError:
        return False


def process_cut_arguments(arguments: dict[int, str]) -> list[ToolCallChunk]:
    """For each streamed call whose whole arguments are not a JSON object but which
    LangChain would still read as a call: a last fragment that makes it unreadable."""
    tails: list[ToolCallChunk] = []
    for index, args in arguments.items():
        try:
            parse_arguments(args)
        except ValueError:
            if _langchain_reads_as_call(args):
                tail = next(t for t in _GIVE_UP_TAILS if not _langchain_reads_as_call(args + t))
                tails.append(ToolCallChunk(index, arguments=tail))
    return tails


def process_delta(delta: Delta, response_metadata: dict[str, Any] | None = None) -> AIMessageChunk:
    """One chunk; ``response_metadata`` goes on the last chunk only, because LangChain
    concatenates string metadata when it adds chunks (logprobs, a list, add up and go
    on every chunk that has some)."""
    extra: dict[str, Any] = {}
    if delta.reasoning:
        extra["reasoning_content"] = delta.reasoning
    chunks = [
        LCToolCallChunk(
            name=c.name,
            args=c.arguments or None,
            id=c.id,
            index=_STREAMED_CALLS + c.index,
            type="tool_call_chunk",
        )
        for c in delta.tool_call_chunks
    ]
    # Calls parsed whole (prompt protocol) travel as one chunk each, after any streamed ones.
    base = 1_000
    for i, call in enumerate(delta.tool_calls):
        chunks.append(
            LCToolCallChunk(
                name=call.name,
                args=json.dumps(call.arguments),
                id=call.id,
                index=base + i,
                type="tool_call_chunk",
            )
        )
    for j, bad in enumerate(delta.invalid_tool_calls):
        # LangChain re-reads joined chunks with a lenient partial-JSON parser; quoting
        # the raw text makes it a JSON string, which it keeps as an invalid call.
        chunks.append(
            LCToolCallChunk(
                name=bad.name,
                args=json.dumps(bad.arguments or ""),
                id=bad.id,
                index=base + 500 + j,
                type="tool_call_chunk",
            )
        )
    kwargs: dict[str, Any] = {}
    if response_metadata is not None:
        kwargs["chunk_position"] = "last"
    return AIMessageChunk(
        content=delta.text,
        additional_kwargs=extra,
        tool_call_chunks=chunks,
        usage_metadata=_process_usage(delta.usage),
        response_metadata={**(response_metadata or {}), **_process_logprobs(delta.logprobs)},
        id=delta.response_id,
        **kwargs,
    )
