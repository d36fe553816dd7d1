"""Tool calling: native OpenAI tools, and a prompt protocol for models without them.

Native (``profile.tools == "native"``): ``map_tool`` gives OpenAI ``tools`` entries;
streamed argument fragments are joined by ``ToolCallAccumulator``; arguments that are
not a JSON object become ``InvalidToolCall``s, never exceptions. ``ToolCallScreen``
holds back, from its first fragment, a call with no name or a repeated id.

Prompt protocol (``profile.tools == "prompt"``, and every fal model): the tools go into
the system prompt as JSON between ``<tools>`` tags, with the choice in
``<tool_choice>``; the model is asked to reply with only
``{"tool_calls": [{"name": ..., "arguments": {...}}]}`` when it calls tools. Earlier
calls and their results are rendered as text (``<tool_result>`` blocks in a user
turn), so any chat model can run an agent loop. ``process_tool_reply`` parses the
reply back. Structured output without ``response_format`` support uses the same idea
with a ``<json_schema>`` block (or, for JSON mode without a schema, a
``<response_format>json_object</response_format>`` line). A tool's ``strict`` goes out
as ``function.strict``, or into its description in the prompt.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nemovlm.errors import UnsupportedInputError
from nemovlm.messages import (
    InvalidToolCall,
    MediaPart,
    TextPart,
    ToolCall,
    ToolCallChunk,
    ToolSpec,
    Turn,
)

_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?```$", re.DOTALL)


def new_tool_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def map_tool(spec: ToolSpec) -> dict[str, Any]:
    function: dict[str, Any] = {
        "name": spec.name,
        "description": spec.description,
        "parameters": spec.parameters or {"type": "object", "properties": {}},
    }
    if spec.strict is not None:
        function["strict"] = spec.strict
    return {"type": "function", "function": function}


def tool_spec_from_openai(tool: Mapping[str, Any]) -> ToolSpec | None:
    """An OpenAI tool dict (``{"type": "function", "function": {...}}``, or the bare
    function) as a ``ToolSpec``, keeping ``strict``; ``None`` when it names no function."""
    fn = tool.get("function", tool)
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
        return None
    strict = fn.get("strict")
    return ToolSpec(
        fn["name"],
        fn.get("description") or "",
        dict(fn.get("parameters") or {}),
        strict if isinstance(strict, bool) else None,
    )


def map_tool_choice(choice: str | None) -> str | dict[str, Any] | None:
    if choice is None or choice in ("auto", "none", "required"):
        return choice
    return {"type": "function", "function": {"name": choice}}


def parse_arguments(raw: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """Tool arguments as a dict; ``ValueError`` says why when they are not an object."""
    if raw is None or raw == "":
        return {}
    if isinstance(raw, Mapping):
        return dict(raw)
    value = json.loads(raw)  # ValueError (JSONDecodeError) on bad JSON
    if not isinstance(value, dict):
        raise ValueError(f"tool arguments must be a JSON object, got {type(value).__name__}")
    return value


def _process_tool_call(
    call_id: str | None, name: str | None, raw: str | Mapping[str, Any] | None
) -> ToolCall | InvalidToolCall:
    text = raw if isinstance(raw, str) or raw is None else json.dumps(raw)
    if not name:
        return InvalidToolCall(call_id, name, text, "the tool call has no function name")
    try:
        args = parse_arguments(raw)
    except ValueError as exc:
        return InvalidToolCall(call_id, name, text, f"arguments are not valid JSON: {exc}")
    return ToolCall(call_id or new_tool_call_id(), name, args)


@dataclass
class ToolCallAccumulator:
    """Joins streamed ``ToolCallChunk``s by index; linear in the total length."""

    _calls: dict[int, list[Any]] = field(default_factory=dict)

    def add(self, chunk: ToolCallChunk) -> None:
        entry = self._calls.setdefault(chunk.index, [chunk.id, chunk.name, []])
        if chunk.id and not entry[0]:
            entry[0] = chunk.id
        if chunk.name and not entry[1]:
            entry[1] = chunk.name
        if chunk.arguments:
            entry[2].append(chunk.arguments)

    def joined(self) -> dict[int, tuple[str | None, str | None, str]]:
        """Each call's id, name and joined arguments text, by index, in index order."""
        return {i: (e[0], e[1], "".join(e[2])) for i, e in sorted(self._calls.items())}

    def finish(self) -> tuple[list[ToolCall], list[InvalidToolCall]]:
        calls: list[ToolCall] = []
        invalid: list[InvalidToolCall] = []
        for call_id, name, arguments in self.joined().values():
            result = _process_tool_call(call_id, name, arguments)
            (calls if isinstance(result, ToolCall) else invalid).append(result)  # type: ignore[arg-type]
        return calls, invalid


def process_duplicate_ids(calls: list[ToolCall]) -> tuple[list[ToolCall], list[InvalidToolCall]]:
    """A call whose id an earlier call of the same reply already has is invalid: a tool
    result names the call it answers by id, so the two could not be told apart."""
    seen: set[str] = set()
    valid: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    for call in calls:
        if call.id in seen:
            error = _duplicate_id_error(call.id)
            invalid.append(InvalidToolCall(call.id, call.name, json.dumps(call.arguments), error))
        else:
            seen.add(call.id)
            valid.append(call)
    return valid, invalid


def _duplicate_id_error(call_id: str) -> str:
    return f"the tool call id {call_id!r} is already used by an earlier call in this reply"


@dataclass
class ToolCallScreen:
    """Decides once per streamed call, on its first fragment (where OpenAI-compatible
    servers put the id and the name), whether the call can ever be run. A call with no
    function name, or with an id an earlier call of the reply has, is held back whole
    and comes out of ``finish`` as an ``InvalidToolCall``: a stream never shows a
    fragment of it, so a framework that builds tool calls from the fragments (LangChain)
    cannot take it for a good one."""

    _good: set[int] = field(default_factory=set)
    _ids: set[str] = field(default_factory=set)
    _held: dict[int, str] = field(default_factory=dict)
    _held_calls: ToolCallAccumulator = field(default_factory=ToolCallAccumulator)

    def screen(self, chunks: list[ToolCallChunk]) -> list[ToolCallChunk]:
        """The fragments of calls that may still be good; the rest are held."""
        passed: list[ToolCallChunk] = []
        for chunk in chunks:
            if chunk.index not in self._good and chunk.index not in self._held:
                error = self._first_fragment_error(chunk)
                if error is None:
                    self._good.add(chunk.index)
                    if chunk.id:
                        self._ids.add(chunk.id)
                else:
                    self._held[chunk.index] = error
            if chunk.index in self._held:
                self._held_calls.add(chunk)
            else:
                passed.append(chunk)
        return passed

    def _first_fragment_error(self, chunk: ToolCallChunk) -> str | None:
        if not chunk.name:
            return "the tool call has no function name"
        if chunk.id and chunk.id in self._ids:
            return _duplicate_id_error(chunk.id)
        return None

    def finish(self) -> list[InvalidToolCall]:
        return [
            InvalidToolCall(call_id, name, arguments, self._held[index])
            for index, (call_id, name, arguments) in self._held_calls.joined().items()
        ]


def normalize_tool_choice(choice: Any, tools: Sequence[ToolSpec]) -> str | None:
    """The frameworks' tool_choice spellings (``"any"``, ``True``, OpenAI dicts) ->
    ``auto | none | required | <name>``; a name must be one of ``tools``."""
    if choice is None or choice is False:
        return None
    if choice is True:
        if len(tools) != 1:
            raise UnsupportedInputError(
                "tool_choice=True needs exactly one bound tool; name the tool instead."
            )
        return tools[0].name
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") or choice.get("name")
        if not name:
            raise UnsupportedInputError(f"Cannot read a tool name from tool_choice={choice!r}.")
        choice = name
    if choice == "any":
        return "required"
    if not isinstance(choice, str):
        raise UnsupportedInputError(f"tool_choice must be a string, bool or dict, not {choice!r}.")
    if choice not in ("auto", "none", "required") and choice not in {t.name for t in tools}:
        raise UnsupportedInputError(
            f"tool_choice={choice!r} names no bound tool; bound tools: "
            f"{[t.name for t in tools] or 'none'}."
        )
    return choice


# --- prompt protocol: out ------------------------------------------------------------


def _render_tool_prompt(tools: Sequence[ToolSpec], tool_choice: str | None) -> str:
    described = [
        {"name": t.name, "description": t.description, "parameters": t.parameters}
        | ({"strict": t.strict} if t.strict is not None else {})
        for t in tools
    ]
    choice = tool_choice or "auto"
    if choice == "required":
        rule = "You must call at least one tool."
    elif choice == "none":
        rule = "Do not call any tool now; answer in plain text."
    elif choice == "auto":
        rule = "Call a tool when it helps; otherwise answer the user in plain text."
    else:
        rule = f"You must call the tool {choice!r}."
    return (
        "You can call tools. They are described by this JSON list:\n"
        f"<tools>\n{json.dumps(described, ensure_ascii=False)}\n</tools>\n"
        f"<tool_choice>{choice}</tool_choice>\n"
        f"{rule}\n"
        "To call tools, reply with only this JSON object and no other text:\n"
        '{"tool_calls": [{"name": "<tool name>", "arguments": {<arguments as JSON>}}]}\n'
        "Tool results come back to you inside <tool_result> blocks."
    )


def _render_schema_prompt(schema: Mapping[str, Any]) -> str:
    body = schema.get("schema", schema)
    return (
        "Reply with only one JSON object, no prose and no code fence, that validates "
        "against this JSON Schema:\n"
        f"<json_schema>\n{json.dumps(body, ensure_ascii=False)}\n</json_schema>"
    )


# JSON mode without a schema; the tag lets a reader (and the emulator) tell it apart.
JSON_OBJECT_PROMPT = (
    "Reply with only one JSON object, no prose and no code fence.\n"
    "<response_format>json_object</response_format>"
)


def map_prompt_protocol(
    turns: list[Turn],
    *,
    tools: Sequence[ToolSpec] = (),
    tool_choice: str | None = None,
    json_schema: Mapping[str, Any] | None = None,
    json_object: bool = False,
) -> list[Turn]:
    """Turns for a model without native tools (or ``response_format``): instructions
    in the system turn, earlier tool calls and results as plain text."""
    blocks = []
    if tools:
        blocks.append(_render_tool_prompt(tools, tool_choice))
    if json_schema is not None:
        blocks.append(_render_schema_prompt(json_schema))
    elif json_object:
        blocks.append(JSON_OBJECT_PROMPT)
    out: list[Turn] = []
    for turn in turns:
        if turn.role == "assistant" and turn.tool_calls:
            calls = [{"name": c.name, "arguments": c.arguments} for c in turn.tool_calls]
            text = json.dumps({"tool_calls": calls}, ensure_ascii=False)
            prefix = f"{turn.text}\n" if turn.text else ""
            out.append(Turn("assistant", [TextPart(prefix + text)]))
        elif turn.role == "tool":
            out.append(_map_tool_result_as_user(turn))
        else:
            out.append(turn)
    # Consecutive tool results become one user turn, as models expect alternation.
    merged: list[Turn] = []
    for turn in out:
        if (
            merged
            and turn.role == "user"
            and merged[-1].role == "user"
            and turn.text.startswith("<tool_result")
        ):
            merged[-1] = Turn("user", [*merged[-1].parts, TextPart("\n"), *turn.parts])
        else:
            merged.append(turn)
    if not blocks:
        return merged
    instructions = "\n\n".join(blocks)
    if merged and merged[0].role == "system":
        first = merged[0]
        text = f"{first.text}\n\n{instructions}" if first.text else instructions
        return [Turn("system", [TextPart(text)]), *merged[1:]]
    return [Turn("system", [TextPart(instructions)]), *merged]


def _map_tool_result_as_user(turn: Turn) -> Turn:
    attrs = f' name="{turn.name}"' if turn.name else ""
    attrs += f' id="{turn.tool_call_id}"' if turn.tool_call_id else ""
    media: list[MediaPart] = turn.media
    note = f"\n(The tool returned {len(media)} attached media item(s).)" if media else ""
    text = f"<tool_result{attrs}>\n{turn.text}{note}\n</tool_result>"
    return Turn("user", [TextPart(text), *media])


# --- prompt protocol: in -------------------------------------------------------------


def strip_code_fence(text: str) -> str:
    stripped = text.strip()
    match = _FENCE.match(stripped)
    return match.group(1).strip() if match else stripped


def looks_like_json_reply(head: str) -> bool | None:
    """Whether a reply that starts with ``head`` may be a JSON tool call.
    ``None``: too early to tell."""
    stripped = head.lstrip()
    if not stripped:
        return None
    if stripped[0] in "{`":
        return True
    return False


def process_tool_reply(
    text: str, tools: Sequence[ToolSpec]
) -> tuple[str, list[ToolCall], list[InvalidToolCall]]:
    """Split a prompt-protocol reply into (text, tool calls, invalid tool calls)."""
    body = strip_code_fence(text)
    if not body.startswith("{"):
        return text, [], []
    try:
        value = json.loads(body)
    except ValueError as exc:
        if '"tool_calls"' in body:
            return text, [], [InvalidToolCall(None, None, body, f"reply is not valid JSON: {exc}")]
        return text, [], []
    if isinstance(value, dict) and "name" in value and "tool_calls" not in value:
        value = {"tool_calls": [value]}  # a lone call: accept it, models do this
    if not isinstance(value, dict) or not isinstance(value.get("tool_calls"), list):
        return text, [], []
    known = {t.name for t in tools}
    calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    for item in value["tool_calls"]:
        if not isinstance(item, dict):
            invalid.append(InvalidToolCall(None, None, json.dumps(item), "not a JSON object"))
            continue
        name = item.get("name")
        raw = item.get("arguments", item.get("parameters"))
        result = _process_tool_call(None, name, raw)
        if isinstance(result, ToolCall) and known and name not in known:
            result = InvalidToolCall(
                result.id, name, json.dumps(result.arguments), f"no tool named {name!r}"
            )
        (calls if isinstance(result, ToolCall) else invalid).append(result)  # type: ignore[arg-type]
    return ("" if calls or invalid else text), calls, invalid
