"""Idioms LangChain users bring from ChatOpenAI and ChatNVIDIA (issue 12), each over
HTTP to the NIM emulator: nothing passed is dropped, and the result has the shape
those classes give."""

from __future__ import annotations

import asyncio
import base64
import warnings
from typing import TYPE_CHECKING, Any

import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, trim_messages
from langchain_core.tools import tool
from pydantic import BaseModel

from langchain_nemovlm import ChatNemoVLM
from nemovlm.errors import UnsupportedInputError
from nemovlm.samples import make_image

if TYPE_CHECKING:
    from tests.conftest import WireLog

LLAMA8 = "nvidia/llama-3.1-nemotron-nano-vl-8b-v1"
NANO12 = "nvidia/nemotron-nano-12b-v2-vl"
GEMMA = "google/diffusiongemma-26b-a4b-it"


@tool
def get_weather(city: str) -> str:
    """Weather in a city."""
    return "sunny"


@tool
def get_time(zone: str) -> str:
    """Time in a zone."""
    return "noon"


class Joke(BaseModel):
    setup: str
    punchline: str


def model(url: str, name: str = NANO12, **kwargs: Any) -> ChatNemoVLM:
    return ChatNemoVLM(model=name, base_url=url, max_retries=0, **kwargs)


def collect(chunks: Any) -> Any:
    full = None
    for chunk in chunks:
        full = chunk if full is None else full + chunk
    assert full is not None
    return full


# --- extra_body, model_kwargs, unknown arguments -----------------------------------------


def test_extra_body_in_the_constructor_is_merged_into_the_body(nim_url: str, wire: WireLog) -> None:
    model(nim_url, extra_body={"top_k": 5}).invoke("hi")
    assert wire.last()["top_k"] == 5 and "extra_body" not in wire.last()


def test_extra_body_as_a_call_argument_is_merged_not_sent_as_a_key(
    nim_url: str, wire: WireLog
) -> None:
    model(nim_url).invoke("hi", extra_body={"repetition_penalty": 1.1})
    assert wire.last()["repetition_penalty"] == 1.1 and "extra_body" not in wire.last()


def test_a_calls_extra_body_wins_over_the_constructors(nim_url: str, wire: WireLog) -> None:
    model(nim_url, extra_body={"top_k": 5}).invoke("hi", extra_body={"top_k": 9})
    assert wire.last()["top_k"] == 9


def test_model_kwargs_keep_working_beside_extra_body(nim_url: str, wire: WireLog) -> None:
    llm = model(nim_url, model_kwargs={"min_p": 0.1, "extra_body": {"top_k": 3}})
    llm.invoke("hi", extra_body={"repetition_penalty": 1.2})
    body = wire.last()
    assert (body["min_p"], body["top_k"], body["repetition_penalty"]) == (0.1, 3, 1.2)


def test_an_unknown_constructor_argument_warns_naming_it_and_reaches_the_request(
    nim_url: str, wire: WireLog
) -> None:
    with pytest.warns(UserWarning, match="top_k=7 is not a parameter of ChatNemoVLM") as seen:
        llm = model(nim_url, top_k=7)
    assert seen[0].filename == __file__  # the user's line, not pydantic's
    llm.invoke("hi")
    assert wire.last()["top_k"] == 7


def test_response_format_in_model_kwargs_goes_the_models_own_way(
    nim_url: str, wire: WireLog
) -> None:
    json_object = {"response_format": {"type": "json_object"}}
    model(nim_url, model_kwargs=json_object).invoke("Give me 'name' as JSON.")
    assert wire.last()["response_format"] == {"type": "json_object"}
    model(nim_url, LLAMA8, model_kwargs=json_object).invoke("Give me 'name' as JSON.")
    assert "response_format" not in wire.last()  # Llama Nano VL 8B: the prompt protocol


def test_an_argument_given_twice_is_refused(nim_url: str) -> None:
    with pytest.raises(ValueError, match="top_k is given both"):
        model(nim_url, top_k=7, model_kwargs={"top_k": 8})


def test_a_call_naming_another_model_is_refused(nim_url: str, wire: WireLog) -> None:
    with pytest.raises(UnsupportedInputError, match="create another"):
        model(nim_url).invoke("hi", model=LLAMA8)
    assert wire.bodies() == []


# --- n, logprobs, token_usage, llm_output ----------------------------------------------


def test_n_choices_come_back_as_one_generation_each(nim_url: str, wire: WireLog) -> None:
    result = model(nim_url).generate([[HumanMessage("hi")]], n=3)
    assert wire.last()["n"] == 3
    texts = [g.message.content for g in result.generations[0]]
    assert len(texts) == 3 and len(set(texts)) == 3  # the emulator numbers its choices


def test_logprobs_come_back_in_response_metadata(nim_url: str, wire: WireLog) -> None:
    msg = model(nim_url).invoke("hi", logprobs=True, top_logprobs=2)
    assert wire.last()["logprobs"] is True and wire.last()["top_logprobs"] == 2
    tokens = msg.response_metadata["logprobs"]["content"]
    assert "".join(t["token"] for t in tokens) == msg.content
    assert all(len(t["top_logprobs"]) == 2 for t in tokens)


def test_streamed_logprobs_add_up_in_response_metadata(nim_url: str) -> None:
    full = collect(model(nim_url).stream("hi", logprobs=True))
    tokens = full.response_metadata["logprobs"]["content"]
    assert "".join(t["token"] for t in tokens) == full.content


def test_token_usage_is_in_response_metadata_as_chat_openai_puts_it(nim_url: str) -> None:
    msg = model(nim_url).invoke("hi")
    usage = msg.response_metadata["token_usage"]
    assert usage["prompt_tokens"] == msg.usage_metadata["input_tokens"]  # type: ignore[index]
    assert usage["completion_tokens"] == msg.usage_metadata["output_tokens"]  # type: ignore[index]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_llm_output_holds_token_usage_and_model_name(nim_url: str) -> None:
    llm = model(nim_url)
    result = llm.generate([[HumanMessage("hi")], [HumanMessage("hello there")]])
    each = [g[0].message.response_metadata["token_usage"] for g in result.generations]
    assert result.llm_output is not None
    assert result.llm_output["model_name"] == NANO12
    assert result.llm_output["token_usage"]["total_tokens"] == sum(u["total_tokens"] for u in each)


# --- JSON mode and strict tools ----------------------------------------------------------


def test_json_mode_sends_json_object_and_needs_no_schema(nim_url: str, wire: WireLog) -> None:
    answer = (
        model(nim_url)
        .with_structured_output(method="json_mode")
        .invoke("Return JSON with 'setup' and 'punchline' keys.")
    )
    assert wire.last()["response_format"] == {"type": "json_object"}
    assert set(answer) == {"setup", "punchline"}  # type: ignore[arg-type]


def test_json_mode_parses_into_a_given_schema(nim_url: str) -> None:
    answer = (
        model(nim_url)
        .with_structured_output(Joke, method="json_mode")
        .invoke("Return JSON with 'setup' and 'punchline' keys.")
    )
    assert isinstance(answer, Joke)


def test_json_mode_uses_the_prompt_protocol_where_response_format_is_not_taken(
    nim_url: str, wire: WireLog
) -> None:
    answer = (
        model(nim_url, LLAMA8)
        .with_structured_output(method="json_mode")
        .invoke("Give me 'name' as JSON.")
    )
    body = wire.last()
    assert "response_format" not in body
    assert "<response_format>json_object</response_format>" in body["messages"][0]["content"]
    assert set(answer) == {"name"}  # type: ignore[arg-type]


def test_bind_tools_strict_reaches_every_tool_never_the_top_level(
    nim_url: str, wire: WireLog
) -> None:
    model(nim_url).bind_tools([get_weather, get_time], strict=True).invoke("Weather?")
    body = wire.last()
    assert [t["function"]["strict"] for t in body["tools"]] == [True, True]
    assert "strict" not in body


def test_function_calling_structured_output_strict_reaches_the_tool(
    nim_url: str, wire: WireLog
) -> None:
    llm = model(nim_url).with_structured_output(Joke, method="function_calling", strict=True)
    assert isinstance(llm.invoke("A joke about 'cats'"), Joke)
    body = wire.last()
    assert body["tools"][0]["function"]["strict"] is True and "strict" not in body


# --- content blocks v1 while streaming ---------------------------------------------------


def test_a_v1_stream_that_reasons_then_calls_a_tool_keeps_both_blocks(nim_url: str) -> None:
    llm = model(nim_url, GEMMA, output_version="v1")
    full = collect(llm.bind_tools([get_weather]).stream("Weather in 'Paris'?"))
    kinds = [b["type"] for b in full.content_blocks]
    assert kinds == ["reasoning", "tool_call"]
    assert full.content_blocks[1]["args"] == {"city": "Paris"}
    assert full.tool_calls[0]["args"] == {"city": "Paris"}


# --- errors, models, reasoning, token counts --------------------------------------------


def test_with_fallbacks_written_for_chat_openai_catches_our_429(nim_url: str) -> None:
    failing = model(nim_url, default_headers={"X-Emulator-Fault": "429"})
    backup = model(nim_url)
    chain = failing.with_fallbacks([backup], exceptions_to_handle=(openai.RateLimitError,))
    assert isinstance(chain.invoke("hi"), AIMessage)


def test_available_models_lists_what_the_server_serves(nim_url: str) -> None:
    served = model(nim_url).available_models
    assert NANO12 in [m.id for m in served]
    assert all(m.known for m in served if m.id == NANO12)


def test_available_models_also_asynchronously(nim_url: str) -> None:
    served = asyncio.run(model(nim_url).aavailable_models())
    assert NANO12 in [m.id for m in served]


def test_a_near_miss_model_id_warns_when_the_model_is_made(nim_url: str) -> None:
    with pytest.warns(UserWarning, match="did you mean 'nvidia/nemotron-nano-12b-v2-vl'"):
        llm = model(nim_url, "nvidia/nemotron-nano-12b-v2-vl-lc")
    assert isinstance(llm.invoke("hi"), AIMessage)  # the id still works


def test_reasoning_false_on_a_model_that_cannot_reason_is_a_no_op(
    nim_url: str, wire: WireLog
) -> None:
    msg = model(nim_url, LLAMA8, reasoning=False).invoke("hi")
    assert msg.content and "think" not in str(wire.last()["messages"])


def test_get_num_tokens_from_messages_counts_an_image_offline(nim_url: str) -> None:
    llm = model("http://127.0.0.1:9/v1")  # nothing listens: counting sends nothing
    text = [HumanMessage("What is this?")]
    png = base64.b64encode(make_image(1024, 768, "png")).decode()
    image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}
    with_image = [HumanMessage(content=[{"type": "text", "text": "What is this?"}, image])]
    assert llm.get_num_tokens_from_messages(with_image) >= (
        llm.get_num_tokens_from_messages(text) + 256
    )


def test_trim_messages_takes_the_model_as_token_counter() -> None:
    llm = model("http://127.0.0.1:9/v1")
    history = [SystemMessage("Be brief."), HumanMessage("a " * 200), AIMessage("b " * 200)]
    history.append(HumanMessage("and now?"))
    trimmed = trim_messages(
        history, token_counter=llm, max_tokens=40, strategy="last", include_system=True
    )
    assert [m.content for m in trimmed] == ["Be brief.", "and now?"]


def test_tools_count_towards_the_estimate() -> None:
    llm = model("http://127.0.0.1:9/v1")
    messages = [HumanMessage("Weather?")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert llm.get_num_tokens_from_messages(
            messages, tools=[get_weather]
        ) > llm.get_num_tokens_from_messages(messages)
