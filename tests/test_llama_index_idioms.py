"""Idioms LlamaIndex users bring from OpenAILike and LlamaIndex's NVIDIA class (issue
12), each over HTTP to the NIM emulator: nothing passed is dropped, LlamaIndex's own
components (agents, synthesizers, the multi-modal index) work with the classes, and no
error is swallowed on the way."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import TYPE_CHECKING, Any

import pytest
from llama_index.core import Document, SummaryIndex
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.base.llms.types import ChatMessage, ImageBlock, TextBlock
from llama_index.core.embeddings import MockEmbedding, MockMultiModalEmbedding
from llama_index.core.indices.multi_modal import MultiModalVectorStoreIndex
from llama_index.core.memory import ChatMemoryBuffer
from llama_index.core.schema import ImageDocument
from llama_index.core.tools import FunctionTool

from llama_index_nemovlm import InputRefusedError, NemoVLM, NemoVLMMultiModal
from nemovlm.errors import IncompleteResponseError, UnsupportedInputError
from nemovlm.samples import make_image

if TYPE_CHECKING:
    from tests.conftest import WireLog

LLAMA8 = "nvidia/llama-3.1-nemotron-nano-vl-8b-v1"
NANO12 = "nvidia/nemotron-nano-12b-v2-vl"
GEMMA = "google/diffusiongemma-26b-a4b-it"
PNG = make_image(1024, 768, "png")
# FunctionAgent's workflow runs inspect.getmembers over pydantic objects (upstream noise).
quiet_agent = pytest.mark.filterwarnings("ignore::DeprecationWarning:inspect")


def get_weather(city: str) -> str:
    """The weather for a city."""
    return f"Sunny in {city}"


def get_time(zone: str) -> str:
    """The time in a zone."""
    return f"Noon in {zone}"


def model(url: str, name: str = NANO12, **kwargs: Any) -> NemoVLM:
    return NemoVLM(model=name, base_url=url, max_retries=0, **kwargs)


def user(text: str) -> list[ChatMessage]:
    return [ChatMessage(role="user", content=text)]


# --- extra_body ---------------------------------------------------------------------------


def test_additional_kwargs_extra_body_is_merged_into_the_body(nim_url: str, wire: WireLog) -> None:
    model(nim_url, additional_kwargs={"extra_body": {"top_k": 4}, "min_p": 0.2}).chat(user("hi"))
    body = wire.last()
    assert (body["top_k"], body["min_p"]) == (4, 0.2) and "extra_body" not in body


def test_a_calls_extra_body_is_merged_after_the_settings(nim_url: str, wire: WireLog) -> None:
    llm = model(nim_url, additional_kwargs={"extra_body": {"top_k": 4}})
    llm.chat(user("hi"), extra_body={"top_k": 8})
    assert wire.last()["top_k"] == 8


def test_an_unknown_constructor_argument_warns_naming_it_and_reaches_the_request(
    nim_url: str, wire: WireLog
) -> None:
    with pytest.warns(UserWarning, match="top_k=7 is not a parameter of NemoVLM") as seen:
        llm = model(nim_url, top_k=7)
    assert seen[0].filename == __file__  # the user's line, not pydantic's
    llm.chat(user("hi"))
    assert wire.last()["top_k"] == 7


def test_response_format_in_additional_kwargs_goes_the_models_own_way(
    nim_url: str, wire: WireLog
) -> None:
    json_object = {"response_format": {"type": "json_object"}}
    model(nim_url, additional_kwargs=json_object).chat(user("Give me 'name' as JSON."))
    assert wire.last()["response_format"] == {"type": "json_object"}
    answer = model(nim_url, LLAMA8, additional_kwargs=json_object).chat(user("'name' as JSON"))
    assert "response_format" not in wire.last()  # Llama Nano VL 8B: the prompt protocol
    assert json.loads(answer.message.content or "") == {"name": "[nemovlm emulator] name"}


def test_strict_reaches_every_tool_never_the_top_level(nim_url: str, wire: WireLog) -> None:
    tools = [FunctionTool.from_defaults(get_weather), FunctionTool.from_defaults(get_time)]
    model(nim_url, additional_kwargs={"strict": True}).chat_with_tools(tools, "Weather?")
    body = wire.last()
    assert [t["function"]["strict"] for t in body["tools"]] == [True, True]
    assert "strict" not in body


# --- n and logprobs -----------------------------------------------------------------------


def test_n_choices_are_all_in_raw_choices(nim_url: str, wire: WireLog) -> None:
    response = model(nim_url).chat(user("hi"), n=3)
    assert wire.last()["n"] == 3
    texts = [c["message"]["content"] for c in response.raw["choices"]]  # type: ignore[index]
    assert len(set(texts)) == 3 and texts[0] == response.message.content


def test_logprobs_come_back_as_llama_index_logprobs(nim_url: str) -> None:
    response = model(nim_url).chat(user("hi"), logprobs=True, top_logprobs=2)
    assert response.logprobs is not None
    assert len(response.logprobs) > 1 and all(len(top) == 2 for top in response.logprobs)


def test_streamed_logprobs_come_with_each_piece(nim_url: str) -> None:
    responses = list(model(nim_url).stream_chat(user("hi"), logprobs=True))
    pieces = [r for r in responses if r.delta]
    assert all(r.logprobs for r in pieces)
    assert "".join(t[0].token for r in pieces for t in r.logprobs or []) == "".join(
        r.delta or "" for r in pieces
    )


# --- agents and synthesizers --------------------------------------------------------------


@quiet_agent
@pytest.mark.parametrize("streaming", [False, True], ids=["plain", "streaming"])
async def test_an_unparseable_tool_call_stops_a_function_agent_with_a_clear_error(
    nim_url: str, streaming: bool
) -> None:
    llm = model(nim_url, default_headers={"X-Emulator-Fault": "bad_tool_args"})
    agent = FunctionAgent(
        tools=[FunctionTool.from_defaults(get_weather)], llm=llm, streaming=streaming
    )
    with pytest.raises(IncompleteResponseError, match="'get_weather': arguments are not valid"):
        await agent.run("What is the weather in Paris?")


@pytest.mark.parametrize("mode", ["refine", "compact", "tree_summarize"])
def test_a_query_engine_does_not_swallow_an_input_error(
    nim_url: str, wire: WireLog, mode: str
) -> None:
    llm = model(nim_url, temperature=-1.0)
    engine = SummaryIndex.from_documents([Document(text="Paris is sunny.")]).as_query_engine(
        llm=llm, response_mode=mode
    )
    with pytest.raises(InputRefusedError, match="temperature must be >= 0") as info:
        engine.query("How is Paris?")
    assert isinstance(info.value.__cause__, UnsupportedInputError)
    assert not isinstance(info.value, ValueError)  # what Refine catches
    assert wire.bodies() == []


def test_a_streaming_query_engine_does_not_swallow_an_input_error(nim_url: str) -> None:
    engine = SummaryIndex.from_documents([Document(text="Paris is sunny.")]).as_query_engine(
        llm=model(nim_url, temperature=-1.0), response_mode="refine", streaming=True
    )
    with pytest.raises(InputRefusedError, match="temperature"):
        str(engine.query("How is Paris?").get_response())  # type: ignore[attr-defined]


def test_chat_itself_still_raises_the_documented_class(nim_url: str) -> None:
    with pytest.raises(UnsupportedInputError, match="temperature"):
        model(nim_url, temperature=-1.0).chat(user("hi"))


def test_refusals_name_llama_index_methods(nim_url: str) -> None:
    with pytest.raises(UnsupportedInputError) as info:
        list(model(nim_url).stream_chat(user("hi"), n=2))
    assert "use chat() (or complete()) instead of stream_chat()" in str(info.value)
    assert "invoke()" not in str(info.value)


def test_refusals_name_llama_index_methods_for_include_reasoning_too(nim_url: str) -> None:
    llm = model(nim_url, GEMMA, include_reasoning=False)
    with pytest.raises(UnsupportedInputError, match=r"stream_complete\(\)"):
        list(llm.stream_complete("hi"))


# --- multi-modal index --------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Call to deprecated class SimpleMultiModalQueryEngine")
def test_the_multi_modal_index_takes_the_class_without_a_warning(
    nim_url: str, wire: WireLog, caplog: pytest.LogCaptureFixture
) -> None:
    image = ImageDocument(image=base64.b64encode(PNG).decode(), image_mimetype="image/png")
    index = MultiModalVectorStoreIndex.from_documents(
        [Document(text="A chart of sales."), image],
        embed_model=MockEmbedding(embed_dim=8),
        image_embed_model=MockMultiModalEmbedding(embed_dim=8),
    )
    mm = NemoVLMMultiModal(model=NANO12, base_url=nim_url)
    with caplog.at_level(logging.WARNING):
        engine = index.as_query_engine(llm=mm)
    assert "does not appear to be a multi-modal LLM" not in caplog.text
    answer = engine.query("What does the chart show?")
    assert "Query: What does the chart show?" in str(answer)
    assert len(wire.bodies()) == 1


# --- conveniences of LlamaIndex's NVIDIA class --------------------------------------------


def test_the_default_model_is_nemotron_nano_12b_v2_vl(nim_url: str, wire: WireLog) -> None:
    NemoVLM(base_url=nim_url).chat(user("hi"))
    assert wire.last()["model"] == NANO12


def test_nvidia_api_key_is_accepted_as_api_key(nim_url: str) -> None:
    llm = NemoVLM(base_url=nim_url, nvidia_api_key="nvapi-alias")
    assert llm.api_key is not None and llm.api_key.get_secret_value() == "nvapi-alias"
    mm = NemoVLMMultiModal(base_url=nim_url, nvidia_api_key="nvapi-alias")
    assert mm.llm.api_key is not None and mm.llm.api_key.get_secret_value() == "nvapi-alias"


def test_api_key_and_nvidia_api_key_together_are_refused() -> None:
    with pytest.raises(ValueError, match="not both"):
        NemoVLM(api_key="a", nvidia_api_key="b")


# --- models, reasoning, token counts ------------------------------------------------------


def test_available_models_lists_what_the_server_serves(nim_url: str) -> None:
    served = model(nim_url).available_models
    assert NANO12 in [m.id for m in served] and all(m.known for m in served)


def test_available_models_also_asynchronously(nim_url: str) -> None:
    served = asyncio.run(model(nim_url).aavailable_models())
    assert LLAMA8 in [m.id for m in served]


def test_a_near_miss_model_id_warns_when_the_model_is_made(nim_url: str) -> None:
    with pytest.warns(UserWarning, match="did you mean 'nvidia/nemotron-nano-12b-v2-vl'"):
        llm = model(nim_url, "nvidia/nemotron-nano-12b-v2-vl-li")
    assert llm.chat(user("hi")).message.content  # the id still works


def test_reasoning_false_on_a_model_that_cannot_reason_is_a_no_op(
    nim_url: str, wire: WireLog
) -> None:
    assert model(nim_url, LLAMA8, reasoning=False).chat(user("hi")).message.content
    assert "think" not in str(wire.last()["messages"])


def test_count_tokens_counts_an_image_offline() -> None:
    llm = NemoVLM(base_url="http://127.0.0.1:9/v1")  # nothing listens: counting sends nothing
    text = [ChatMessage(role="user", blocks=[TextBlock(text="What is this?")])]
    with_image = [
        ChatMessage(role="user", blocks=[ImageBlock(image=PNG), TextBlock(text="What is this?")])
    ]
    assert llm.count_tokens(with_image) >= llm.count_tokens(text) + 256


def test_memory_trims_with_the_offline_tokenizer() -> None:
    llm = NemoVLM(base_url="http://127.0.0.1:9/v1")
    memory = ChatMemoryBuffer.from_defaults(token_limit=30, tokenizer_fn=llm.tokenizer)
    memory.put(ChatMessage(role="user", content="a " * 100))
    memory.put(ChatMessage(role="assistant", content="b " * 100))
    memory.put(ChatMessage(role="user", content="and now?"))
    assert [m.content for m in memory.get()] == ["and now?"]
