"""NIM wire mapping out: a prepared conversation and its options as the JSON body of
``/v1/chat/completions`` (``map_request`` -> ``map_messages`` -> ``map_content``)."""

from __future__ import annotations

import json
from typing import Any

from typing_extensions import assert_never

from nemovlm.media import PreparedMedia
from nemovlm.messages import TextPart
from nemovlm.options import RequestOptions
from nemovlm.pipeline import PreparedConversation, PreparedTurn
from nemovlm.profiles import ModelProfile
from nemovlm.tools import map_tool, map_tool_choice


def map_request(
    profile: ModelProfile, prepared: PreparedConversation, options: RequestOptions, *, stream: bool
) -> dict[str, Any]:
    """The JSON body of one ``/v1/chat/completions`` call."""
    request: dict[str, Any] = {
        "model": profile.model,
        "messages": map_messages(prepared.turns, options),
        "stream": stream,
    }
    if stream:
        request["stream_options"] = {"include_usage": True}
    for name in ("max_tokens", "temperature", "top_p", "seed", "n"):
        value = getattr(options, name)
        if value is not None:
            request[name] = value
    if options.stop:
        request["stop"] = list(options.stop)
    if prepared.native_tools:
        request["tools"] = [map_tool(t) for t in options.tools]
        if options.tool_choice is not None:
            request["tool_choice"] = map_tool_choice(options.tool_choice)
    if prepared.json_mode == "native" and options.json_schema is not None:
        request["response_format"] = {
            "type": "json_schema",
            "json_schema": dict(options.json_schema),
        }
    elif prepared.json_mode == "native" and options.json_mode:
        request["response_format"] = {"type": "json_object"}
    extra: dict[str, Any] = dict(prepared.params)
    video: dict[str, Any] = {}
    if options.video_fps is not None:
        video["fps"] = options.video_fps
    if options.video_num_frames is not None:
        video["num_frames"] = options.video_num_frames
    if not video and prepared.video_fps_hint and profile.video_sampling:
        video["fps"] = prepared.video_fps_hint
    if video and prepared.videos:
        extra["media_io_kwargs"] = {"video": video}
    if options.max_num_tiles is not None:
        extra["mm_processor_kwargs"] = {"max_num_tiles": options.max_num_tiles}
    extra.update(options.extra)
    # NIM's own fields go in the body beside the OpenAI ones (the SDK's extra_body).
    request.update(extra)
    return request


def map_messages(turns: list[PreparedTurn], options: RequestOptions) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for turn in turns:
        if turn.role == "assistant":
            message: dict[str, Any] = {"role": "assistant", "content": turn.text or None}
            if turn.tool_calls:
                message["tool_calls"] = [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
                    }
                    for c in turn.tool_calls
                ]
            elif message["content"] is None:
                message["content"] = ""
            messages.append(message)
        elif turn.role == "tool":
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": turn.tool_call_id or "",
                    "content": map_tagged_text(turn) if turn.media else turn.text,
                }
            )
        elif turn.role == "system":
            messages.append({"role": "system", "content": turn.text})
        elif turn.role == "user":
            messages.append({"role": "user", "content": map_content(turn, options)})
        else:
            assert_never(turn.role)
    return messages


def map_content(turn: PreparedTurn, options: RequestOptions) -> str | list[dict[str, Any]]:
    if not turn.media:
        return turn.text
    if options.image_transport == "img_tag":
        return map_tagged_text(turn)
    if options.image_transport != "parts":
        assert_never(options.image_transport)
    parts: list[dict[str, Any]] = []
    for part in turn.parts:
        if isinstance(part, TextPart):
            if part.text:
                parts.append({"type": "text", "text": part.text})
        elif part.kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": part.as_url()}})
        elif part.kind == "video":
            parts.append({"type": "video_url", "video_url": {"url": part.as_url()}})
        else:
            assert_never(part.kind)
    return parts


def map_tagged_text(turn: PreparedTurn) -> str:
    """Images as ``<img src="..." />`` inside plain text (the seed's text-only fallback)."""
    pieces = []
    for part in turn.parts:
        if isinstance(part, PreparedMedia):
            src = part.as_url().replace('"', "%22")
            pieces.append(f'<img src="{src}" />')
        elif part.text:
            pieces.append(part.text)
    return " ".join(pieces)
