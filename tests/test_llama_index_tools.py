"""NemoVLM (LlamaIndex) tools, agents and structured output, over HTTP to the NIM emulator.

Nano 12B and DiffusionGemma call tools natively; Llama Nano VL 8B has no native tools,
so the core's prompt protocol carries them. The adapter is the same for all three.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
from llama_index.core.agent.workflow import AgentOutput, FunctionAgent
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ImageBlock,
    TextBlock,
    ToolCallBlock,
)
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool, ToolOutput
from pydantic import BaseModel

from llama_index_nemovlm import NemoVLM
from nemovlm.errors import UnsupportedInputError
from nemovlm.samples import make_image

if TYPE_CHECKING:
    from tests.conftest import WireLog

LLAMA8 = "nvidia/llama-3.1-nemotron-nano-vl-8b-v1"
NANO12 = "nvidia/nemotron-nano-12b-v2-vl"
GEMMA = "google/diffusiongemma-26b-a4b-it"
ALL_MODELS = [NANO12, GEMMA, LLAMA8]
# FunctionAgent's workflow runs inspect.getmembers over pydantic objects (upstream noise).
quiet_agent = pytest.mark.filterwarnings("ignore::DeprecationWarning:inspect")


def get_weather(city: str) -> str:
    """The weather for a city."""
    return f"Sunny in {city}"


def get_time(zone: str) -> str:
    """The time in a time zone."""
    return f"Noon in {zone}"


WEATHER = FunctionTool.from_defaults(get_weather)
TIME = FunctionTool.from_defaults(get_time)


class Song(BaseModel):
    title: str
    year: int


def tool_calls(response: ChatResponse) -> list[ToolCallBlock]:
    return [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]


@pytest.fixture
def nano12(nim_url: str) -> NemoVLM:
    return NemoVLM(model=NANO12, base_url=nim_url)


# --- chat_with_tools ---------------------------------------------------------------


def test_native_tools_go_to_the_wire_as_openai_tools(nano12: NemoVLM, wire: WireLog) -> None:
    nano12.chat_with_tools([WEATHER], user_msg="Weather in Paris?")
    tools = wire.last()["tools"]
    assert [t["function"]["name"] for t in tools] == ["get_weather"]
    assert tools[0]["function"]["parameters"]["required"] == ["city"]


def test_chat_with_tools_returns_tool_call_blocks(nano12: NemoVLM) -> None:
    response = nano12.chat_with_tools([WEATHER], user_msg="Weather in Paris?")
    (call,) = tool_calls(response)
    assert call.tool_name == "get_weather"
    assert call.tool_kwargs == {"city": "Paris"}
    assert call.tool_call_id


def test_tool_calls_also_appear_openai_shaped_in_additional_kwargs(nano12: NemoVLM) -> None:
    response = nano12.chat_with_tools([WEATHER], user_msg="Weather in Paris?")
    (call,) = response.message.additional_kwargs["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}


def test_tool_required_sends_tool_choice_required(nano12: NemoVLM, wire: WireLog) -> None:
    nano12.chat_with_tools([WEATHER, TIME], user_msg="Anything", tool_required=True)
    assert wire.last()["tool_choice"] == "required"


def test_tool_choice_by_name_sends_a_function_choice(nano12: NemoVLM, wire: WireLog) -> None:
    response = nano12.chat_with_tools(
        [WEATHER, TIME], user_msg="Time in UTC", tool_choice="get_time"
    )
    assert wire.last()["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}
    assert tool_calls(response)[0].tool_name == "get_time"


def test_tool_choice_naming_no_bound_tool_is_refused(nano12: NemoVLM, wire: WireLog) -> None:
    with pytest.raises(UnsupportedInputError, match="names no bound tool"):
        nano12.chat_with_tools([WEATHER], user_msg="x", tool_choice="get_stock")
    assert wire.bodies() == []


def test_llama_nano_vl_calls_tools_through_the_prompt_protocol(nim_url: str, wire: WireLog) -> None:
    llm = NemoVLM(model=LLAMA8, base_url=nim_url)
    response = llm.chat_with_tools([WEATHER], user_msg="Weather in Oslo?")
    body = wire.last()
    assert "tools" not in body
    assert "<tools>" in body["messages"][0]["content"]
    (call,) = tool_calls(response)
    assert (call.tool_name, call.tool_kwargs) == ("get_weather", {"city": "Oslo"})
    assert response.message.content == ""


def test_get_tool_calls_from_response_gives_tool_selections(nano12: NemoVLM) -> None:
    response = nano12.chat_with_tools([WEATHER], user_msg="Weather in Rome?")
    (selection,) = nano12.get_tool_calls_from_response(response)
    assert (selection.tool_name, selection.tool_kwargs) == ("get_weather", {"city": "Rome"})
    assert selection.tool_id == tool_calls(response)[0].tool_call_id


def test_get_tool_calls_without_calls_raises_only_when_asked(nano12: NemoVLM) -> None:
    response = nano12.chat([ChatMessage(role="user", content="no tools here")])
    assert nano12.get_tool_calls_from_response(response, error_on_no_tool_call=False) == []
    with pytest.raises(ValueError, match="0 tool calls"):
        nano12.get_tool_calls_from_response(response)


def test_unparseable_tool_arguments_are_reported_not_called(nim_url: str) -> None:
    llm = NemoVLM(
        model=NANO12, base_url=nim_url, default_headers={"X-Emulator-Fault": "bad_tool_args"}
    )
    response = llm.chat_with_tools([WEATHER], user_msg="Weather?")
    assert tool_calls(response) == []
    (invalid,) = response.message.additional_kwargs["invalid_tool_calls"]
    assert invalid["name"] == "get_weather"
    with pytest.raises(ValueError, match="did not parse"):
        llm.get_tool_calls_from_response(response)


def test_only_the_first_call_is_kept_unless_parallel_calls_are_allowed(nano12: NemoVLM) -> None:
    def two_calls() -> ChatResponse:
        blocks = [
            ToolCallBlock(tool_call_id="a", tool_name="get_weather", tool_kwargs={"city": "A"}),
            ToolCallBlock(tool_call_id="b", tool_name="get_time", tool_kwargs={"zone": "B"}),
        ]
        return ChatResponse(message=ChatMessage(role="assistant", blocks=blocks))

    single = nano12._validate_chat_with_tools_response(two_calls(), [WEATHER, TIME])
    parallel = nano12._validate_chat_with_tools_response(
        two_calls(), [WEATHER, TIME], allow_parallel_tool_calls=True
    )
    assert [c.tool_id for c in nano12.get_tool_calls_from_response(single)] == ["a"]
    assert [c.tool_id for c in nano12.get_tool_calls_from_response(parallel)] == ["a", "b"]


def test_stream_chat_with_tools_ends_with_the_whole_call(nano12: NemoVLM) -> None:
    responses = list(nano12.stream_chat_with_tools([WEATHER], user_msg="Weather in Lima?"))
    partial = [r for r in responses[:-1] if tool_calls(r)]
    assert partial, "the call should be visible while it streams"
    (call,) = tool_calls(responses[-1])
    assert call.tool_kwargs == {"city": "Lima"}


def test_prompt_protocol_calls_also_stream(nim_url: str) -> None:
    llm = NemoVLM(model=LLAMA8, base_url=nim_url)
    *_, last = llm.stream_chat_with_tools([WEATHER], user_msg="Weather in Oslo?")
    assert llm.get_tool_calls_from_response(last)[0].tool_kwargs == {"city": "Oslo"}
    assert last.message.content == ""


# --- history --------------------------------------------------------------------------


def test_tool_call_blocks_and_tool_results_reach_the_wire(nano12: NemoVLM, wire: WireLog) -> None:
    history = [
        ChatMessage(role="user", content="Weather in Paris?"),
        ChatMessage(
            role="assistant",
            blocks=[
                ToolCallBlock(
                    tool_call_id="call_1", tool_name="get_weather", tool_kwargs={"city": "Paris"}
                )
            ],
        ),
        ChatMessage(role="tool", content="Sunny", additional_kwargs={"tool_call_id": "call_1"}),
    ]
    response = nano12.chat(history)
    assistant, tool = wire.last()["messages"][1:]
    assert assistant["tool_calls"][0]["id"] == "call_1"
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert tool == {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"}
    assert "Tool result received: Sunny" in (response.message.content or "")


def test_openai_shaped_tool_calls_in_history_are_read_too(nano12: NemoVLM, wire: WireLog) -> None:
    call = {"id": "c9", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Bern"}'}}  # fmt: skip
    history = [
        ChatMessage(role="user", content="Weather in Bern?"),
        ChatMessage(role="assistant", content="", additional_kwargs={"tool_calls": [call]}),
        ChatMessage(role="tool", content="Snow", additional_kwargs={"tool_call_id": "c9"}),
    ]
    nano12.chat(history)
    assert wire.last()["messages"][1]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_an_image_from_a_tool_reaches_the_model(nano12: NemoVLM, wire: WireLog) -> None:
    history = [
        ChatMessage(role="user", content="Take a screenshot"),
        ChatMessage(role="assistant", blocks=[ToolCallBlock(tool_call_id="s1", tool_name="shot")]),
        ChatMessage(
            role="tool",
            blocks=[TextBlock(text="done"), ImageBlock(image=make_image(30, 20, "png"))],
            additional_kwargs={"tool_call_id": "s1"},
        ),
    ]
    nano12.chat(history)
    last = wire.last()["messages"][-1]
    assert last["role"] == "user"
    assert any(p["type"] == "image_url" for p in last["content"])


# --- predict_and_call, agents, structured output -------------------------------------


def test_predict_and_call_runs_the_chosen_tool(nano12: NemoVLM) -> None:
    result = nano12.predict_and_call([WEATHER], user_msg="Weather in Kyoto?")
    assert result.response == "Sunny in Kyoto"
    assert isinstance(result.sources[0], ToolOutput)


@quiet_agent
@pytest.mark.parametrize("model", ALL_MODELS)
@pytest.mark.parametrize("streaming", [False, True], ids=["plain", "streaming"])
async def test_function_agent_runs_a_tool_loop_to_a_final_answer(
    nim_url: str, wire: WireLog, model: str, streaming: bool
) -> None:
    agent = FunctionAgent(
        tools=[WEATHER], llm=NemoVLM(model=model, base_url=nim_url), streaming=streaming
    )
    result: AgentOutput = await agent.run("What is the weather in Paris?")
    assert [c.tool_name for c in result.tool_calls] == ["get_weather"]
    assert result.tool_calls[0].tool_kwargs == {"city": "Paris"}
    assert str(result) == "[nemovlm emulator] Tool result received: Sunny in Paris"
    assert len(wire.bodies()) == 2


@quiet_agent
async def test_function_agent_streams_thinking_deltas(nim_url: str) -> None:
    from llama_index.core.agent.workflow import AgentStream

    agent = FunctionAgent(tools=[WEATHER], llm=NemoVLM(model=GEMMA, base_url=nim_url))
    handler = agent.run("What is the weather in Paris?")
    thinking = ""
    async for event in handler.stream_events():
        if isinstance(event, AgentStream) and event.thinking_delta:
            thinking += event.thinking_delta
    await handler
    assert "Reasoning (emulated)" in thinking


@pytest.mark.parametrize("model", ALL_MODELS)
def test_structured_predict_fills_the_model_through_a_tool_call(nim_url: str, model: str) -> None:
    llm = NemoVLM(model=model, base_url=nim_url)
    song = llm.structured_predict(Song, PromptTemplate("Name a song about {topic}"), topic="rain")
    assert song == Song(title="rain", year=1)


async def test_astructured_predict_works_through_prompt_tools(nim_url: str) -> None:
    llm = NemoVLM(model=LLAMA8, base_url=nim_url)
    song = await llm.astructured_predict(Song, PromptTemplate("A song about {topic}"), topic="sun")
    assert song == Song(title="sun", year=1)


def test_stream_structured_predict_ends_with_the_whole_object(nano12: NemoVLM) -> None:
    *_, last = nano12.stream_structured_predict(Song, PromptTemplate("A song about {t}"), t="sea")
    assert last.model_dump() == {"title": "sea", "year": 1}


def test_as_structured_llm_chat_returns_the_object_as_raw(nano12: NemoVLM) -> None:
    structured = nano12.as_structured_llm(Song)
    response = structured.chat([ChatMessage(role="user", content="A song about snow")])
    assert response.raw == Song(title="snow", year=1)
    assert json.loads(response.message.content or "") == {"title": "snow", "year": 1}
