"""Tools: native mapping, streamed argument joining, and the prompt protocol."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from nemovlm.messages import TextPart, ToolCall, ToolCallChunk, ToolSpec, Turn
from nemovlm.tools import (
    ToolCallAccumulator,
    map_prompt_protocol,
    map_tool_choice,
    process_tool_reply,
)

WEATHER = ToolSpec(
    "get_weather",
    "Weather for a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def test_tool_choice_name_becomes_a_function_choice() -> None:
    assert map_tool_choice("get_weather") == {
        "type": "function",
        "function": {"name": "get_weather"},
    }
    assert map_tool_choice("required") == "required"


def test_streamed_argument_fragments_join_into_one_call() -> None:
    acc = ToolCallAccumulator()
    acc.add(ToolCallChunk(0, "call_1", "get_weather", ""))
    for piece in ['{"ci', 'ty": "Pa', 'ris"}']:
        acc.add(ToolCallChunk(0, None, None, piece))
    calls, invalid = acc.finish()
    assert calls == [ToolCall("call_1", "get_weather", {"city": "Paris"})] and not invalid


def test_unparseable_arguments_become_an_invalid_tool_call() -> None:
    acc = ToolCallAccumulator()
    acc.add(ToolCallChunk(0, "call_1", "get_weather", '{"city": "Par'))
    calls, invalid = acc.finish()
    assert not calls
    assert invalid[0].name == "get_weather" and "not valid JSON" in invalid[0].error


def test_prompt_protocol_puts_tools_and_choice_in_the_system_turn() -> None:
    turns = map_prompt_protocol(
        [Turn("user", [TextPart("weather?")])], tools=[WEATHER], tool_choice="get_weather"
    )
    system = turns[0].text
    assert turns[0].role == "system"
    listed = json.loads(system.split("<tools>")[1].split("</tools>")[0])
    assert listed[0]["name"] == "get_weather"
    assert "<tool_choice>get_weather</tool_choice>" in system


def test_prompt_protocol_renders_history_as_text() -> None:
    turns = map_prompt_protocol(
        [
            Turn("user", [TextPart("weather?")]),
            Turn("assistant", tool_calls=[ToolCall("c1", "get_weather", {"city": "Oslo"})]),
            Turn("tool", [TextPart("rain")], tool_call_id="c1", name="get_weather"),
        ],
        tools=[WEATHER],
    )
    assert [t.role for t in turns] == ["system", "user", "assistant", "user"]
    assert json.loads(turns[2].text) == {
        "tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]
    }
    assert turns[3].text.startswith('<tool_result name="get_weather" id="c1">')


def test_prompt_reply_with_tool_calls_parses_into_calls() -> None:
    text, calls, invalid = process_tool_reply(
        '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}', [WEATHER]
    )
    assert text == "" and not invalid
    assert calls[0].name == "get_weather" and calls[0].arguments == {"city": "Oslo"}


def test_prompt_reply_in_a_code_fence_still_parses() -> None:
    reply = '```json\n{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Rome"}}]}\n```'
    _, calls, _ = process_tool_reply(reply, [WEATHER])
    assert calls[0].arguments == {"city": "Rome"}


def test_prompt_reply_in_plain_text_stays_text() -> None:
    assert process_tool_reply("It is sunny.", [WEATHER]) == ("It is sunny.", [], [])


def test_prompt_reply_that_does_not_parse_is_an_invalid_call_not_a_crash() -> None:
    text, calls, invalid = process_tool_reply('{"tool_calls": [{"name": "get_w', [WEATHER])
    assert not calls and invalid and text


def test_prompt_reply_naming_an_unknown_tool_is_invalid() -> None:
    _, calls, invalid = process_tool_reply(
        '{"tool_calls": [{"name": "launch", "arguments": {}}]}', [WEATHER]
    )
    assert not calls and "launch" in invalid[0].error


@settings(max_examples=100, deadline=None)
@given(
    args=st.dictionaries(st.text(max_size=5), st.text(max_size=8), max_size=4),
    cuts=st.lists(st.integers(min_value=1, max_value=60), max_size=6),
)
def test_any_chunking_of_arguments_gives_the_same_call(
    args: dict[str, str], cuts: list[int]
) -> None:
    raw = json.dumps(args)
    points = sorted({c for c in cuts if c < len(raw)})
    acc = ToolCallAccumulator()
    acc.add(ToolCallChunk(0, "c", "f", ""))
    for i, j in zip([0, *points], [*points, len(raw)]):
        acc.add(ToolCallChunk(0, None, None, raw[i:j]))
    calls, _ = acc.finish()
    assert calls[0].arguments == args
