"""ChatNemoVLM: the contract of issue 2, each behaviour over HTTP to the NIM emulator."""

from __future__ import annotations

import base64
import json
import pickle
from typing import TYPE_CHECKING, Any

import pytest
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.tools import tool
from pydantic import BaseModel, SecretStr

from langchain_nemovlm import ChatNemoVLM
from nemovlm.errors import (
    IncompleteResponseError,
    MissingCredentialsError,
    RequestError,
    UnsupportedInputError,
)
from nemovlm.samples import make_image, make_mp4

if TYPE_CHECKING:
    from tests.conftest import WireLog

LLAMA8 = "nvidia/llama-3.1-nemotron-nano-vl-8b-v1"
NANO12 = "nvidia/nemotron-nano-12b-v2-vl"
GEMMA = "google/diffusiongemma-26b-a4b-it"

PNG = make_image(64, 48, "png")
PNG_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()
GIF = make_image(32, 32, "gif")
MP4 = make_mp4(duration_s=4.0, width=320, height=240, fps=8.0)
MP4_URL = "data:video/mp4;base64," + base64.b64encode(MP4).decode()


def ask(text: str = "What is in this image?", *media: dict[str, Any]) -> list[HumanMessage]:
    return [HumanMessage(content=[{"type": "text", "text": text}, *media])]


def image_part(url: str = PNG_URL) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def video_part(url: str = MP4_URL) -> dict[str, Any]:
    return {"type": "video_url", "video_url": {"url": url}}


def collect(chunks: Any) -> AIMessageChunk:
    full = None
    for chunk in chunks:
        full = chunk if full is None else full + chunk
    assert full is not None
    return full


def part_types(body: dict[str, Any], index: int = -1) -> list[str]:
    content = body["messages"][index]["content"]
    return [p["type"] for p in content] if isinstance(content, list) else ["str"]


@pytest.fixture
def llm(nim_url: str) -> ChatNemoVLM:
    return ChatNemoVLM(model=NANO12, base_url=nim_url)


def model(name: str, url: str, **kwargs: Any) -> ChatNemoVLM:
    return ChatNemoVLM(model=name, base_url=url, **kwargs)


# --- calls ---------------------------------------------------------------------------


def test_invoke_returns_the_answer_with_model_name_and_usage(llm: ChatNemoVLM) -> None:
    msg = llm.invoke(ask("Describe it", image_part()))
    assert isinstance(msg, AIMessage)
    assert msg.content.startswith("[nemovlm emulator]") and "Describe it" in msg.content
    assert msg.response_metadata["model_name"] == NANO12
    assert msg.usage_metadata and msg.usage_metadata["input_tokens"] > 256


def test_stream_yields_several_chunks_and_usage(llm: ChatNemoVLM) -> None:
    chunks = list(llm.stream(ask("Describe it", image_part())))
    full = collect(chunks)
    assert len(chunks) > 3
    assert "Describe it" in full.content
    assert full.usage_metadata and full.usage_metadata["output_tokens"] > 0
    assert full.response_metadata["model_name"] == NANO12
    assert full.response_metadata["finish_reason"] == "stop"


async def test_ainvoke_and_astream_match_invoke(llm: ChatNemoVLM) -> None:
    sync = llm.invoke(ask("same"))
    msg = await llm.ainvoke(ask("same"))
    full = None
    async for chunk in llm.astream(ask("same")):
        full = chunk if full is None else full + chunk
    assert msg.content == sync.content == full.content  # type: ignore[union-attr]


def test_batch_keeps_each_answer_with_its_input(llm: ChatNemoVLM) -> None:
    answers = llm.batch([f"question {i}" for i in range(5)])
    assert [a.content.endswith(f"question {i}") for i, a in enumerate(answers)] == [True] * 5


async def test_abatch_keeps_each_answer_with_its_input(llm: ChatNemoVLM) -> None:
    answers = await llm.abatch([f"question {i}" for i in range(5)])
    assert all(a.content.endswith(f"question {i}") for i, a in enumerate(answers))


def test_streaming_flag_makes_invoke_stream(nim_url: str, wire: WireLog) -> None:
    msg = model(NANO12, nim_url, streaming=True).invoke("hi")
    assert wire.last()["stream"] is True and "hi" in msg.content


# --- connection and keys ------------------------------------------------------------


def test_base_url_comes_from_nvidia_base_url(nim_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NVIDIA_BASE_URL", nim_url)
    assert ChatNemoVLM(model=NANO12).invoke("hi").content.startswith("[nemovlm emulator]")


def test_api_key_comes_from_nvidia_api_key_and_is_sent(
    nim_url: str, wire: WireLog, nim_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx

    monkeypatch.setenv("NVIDIA_API_KEY", "nvapi-secret-123")
    llm = ChatNemoVLM(model=NANO12, base_url=nim_url)
    assert isinstance(llm.api_key, SecretStr)
    llm.invoke("hi")
    records = httpx.get(nim_server.url + "/emulator/requests").json()
    assert "authorization" not in records[-1]["headers"]  # the emulator never stores it
    assert "nvapi-secret-123" not in repr(llm) and "nvapi-secret-123" not in str(llm.asdict())


def test_hosted_catalog_without_a_key_says_which_variable_to_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NVIDIA_API_KEY", raising=False)
    monkeypatch.delenv("NVIDIA_BASE_URL", raising=False)
    with pytest.raises(MissingCredentialsError, match="NVIDIA_API_KEY"):
        ChatNemoVLM(model=NANO12).invoke("hi")


def test_unknown_model_gets_a_plain_profile_and_still_works(nim_url: str, wire: WireLog) -> None:
    llm = model("acme/new-vlm", nim_url)
    msg = llm.invoke(ask("hello", image_part(make_gif_url())))
    assert "acme/new-vlm" in msg.content
    # Generic profile: no conversion, no reordering.
    assert part_types(wire.last()) == ["text", "image_url"]
    assert wire.last()["messages"][0]["content"][1]["image_url"]["url"].startswith("data:image/gif")


def make_gif_url() -> str:
    return "data:image/gif;base64," + base64.b64encode(GIF).decode()


def test_model_pickles_and_rebuilds_its_clients(llm: ChatNemoVLM) -> None:
    llm.invoke("warm up")
    clone = pickle.loads(pickle.dumps(llm))
    assert clone.invoke("after pickle").content.endswith("after pickle")


# --- ordering and <img> tags --------------------------------------------------------


def test_llama_nano_vl_puts_images_before_text(nim_url: str, wire: WireLog) -> None:
    msg = model(LLAMA8, nim_url).invoke(ask("first text", image_part(), image_part()))
    assert part_types(wire.last()) == ["image_url", "image_url", "text"]
    assert "parts: image, image, text" in msg.content


def test_nano12_keeps_the_users_part_order(llm: ChatNemoVLM, wire: WireLog) -> None:
    llm.invoke(ask("first text", image_part()))
    assert part_types(wire.last()) == ["text", "image_url"]


def test_img_tag_transport_sends_images_inside_plain_text(nim_url: str, wire: WireLog) -> None:
    msg = model(LLAMA8, nim_url, image_transport="img_tag").invoke(ask("what?", image_part()))
    content = wire.last()["messages"][-1]["content"]
    assert isinstance(content, str) and content.startswith('<img src="data:image/png;base64,')
    assert "image 1: png 64x48" in msg.content


def test_img_tag_transport_is_refused_for_models_that_do_not_read_tags(
    nim_url: str, wire: WireLog
) -> None:
    with pytest.raises(UnsupportedInputError, match="img_tag"):
        model(NANO12, nim_url, image_transport="img_tag").invoke(ask("what?", image_part()))
    assert wire.bodies() == []


def test_image_from_a_tool_reaches_a_native_tool_model_as_a_user_message(
    llm: ChatNemoVLM, wire: WireLog
) -> None:
    history = [
        HumanMessage("Plot it"),
        AIMessage("", tool_calls=[{"name": "plot", "args": {}, "id": "c1"}]),
        ToolMessage(content=[{"type": "text", "text": "chart"}, image_part()], tool_call_id="c1"),
    ]
    msg = llm.invoke(history)
    roles = [m["role"] for m in wire.last()["messages"]]
    assert roles == ["user", "assistant", "tool", "user"]
    assert part_types(wire.last()) == ["text", "image_url"]
    assert "image 1: png 64x48" in msg.content


def test_agent_whose_tool_returns_an_image_reaches_a_final_answer(llm: ChatNemoVLM) -> None:
    # The image follows the tool message as a user turn; the loop must still end.
    bound = llm.bind_tools([get_weather])
    history: list[Any] = [HumanMessage("Plot the weather in Paris")]
    first = bound.invoke(history)
    call = first.tool_calls[0]
    history += [
        first,
        ToolMessage(content=[{"type": "text", "text": "chart"}, image_part()],
                    tool_call_id=call["id"]),
    ]  # fmt: skip
    final = bound.invoke(history)
    assert not final.tool_calls and final.content.startswith("[nemovlm emulator]")


def test_image_from_a_tool_reaches_a_prompt_tool_model(nim_url: str, wire: WireLog) -> None:
    history = [
        HumanMessage("Plot it"),
        AIMessage("", tool_calls=[{"name": "plot", "args": {}, "id": "c1"}]),
        ToolMessage(content=[{"type": "text", "text": "chart"}, image_part()], tool_call_id="c1"),
    ]
    msg = model(LLAMA8, nim_url).invoke(history)
    last = wire.last()["messages"][-1]
    assert last["role"] == "user" and part_types(wire.last()) == ["image_url", "text"]
    assert last["content"][0]["image_url"]["url"] == PNG_URL
    assert "Tool result received: chart" in msg.content


# --- video --------------------------------------------------------------------------


def test_video_url_part_reaches_nano12_as_video_url(llm: ChatNemoVLM, wire: WireLog) -> None:
    msg = llm.invoke(ask("what happens?", video_part()))
    assert part_types(wire.last()) == ["text", "video_url"]
    assert "video" in msg.content and "320x240" in msg.content


def test_standard_video_block_becomes_a_video_url_part(llm: ChatNemoVLM, wire: WireLog) -> None:
    block = {"type": "video", "base64": base64.b64encode(MP4).decode(), "mime_type": "video/mp4"}
    llm.invoke(ask("what happens?", block))
    sent = wire.last()["messages"][-1]["content"][1]
    assert sent["type"] == "video_url" and sent["video_url"]["url"].startswith("data:video/mp4")


def test_video_fps_maps_to_media_io_kwargs(nim_url: str, wire: WireLog) -> None:
    model(NANO12, nim_url, video_fps=2.0).invoke(ask("what?", video_part()))
    assert wire.last()["media_io_kwargs"] == {"video": {"fps": 2.0}}


def test_video_num_frames_maps_to_media_io_kwargs(llm: ChatNemoVLM, wire: WireLog) -> None:
    llm.invoke(ask("what?", video_part()), video_num_frames=16)
    assert wire.last()["media_io_kwargs"] == {"video": {"num_frames": 16}}


def test_max_num_tiles_maps_to_mm_processor_kwargs(llm: ChatNemoVLM, wire: WireLog) -> None:
    llm.invoke(ask("what?", image_part()), max_num_tiles=3)
    assert wire.last()["mm_processor_kwargs"] == {"max_num_tiles": 3}


def test_fps_and_num_frames_together_are_refused_before_any_request(
    nim_url: str, wire: WireLog
) -> None:
    llm = model(NANO12, nim_url, video_fps=2.0, video_num_frames=8)
    with pytest.raises(UnsupportedInputError, match="mutually exclusive"):
        llm.invoke(ask("what?", video_part()))
    assert wire.bodies() == []


def test_more_than_128_frames_are_refused(llm: ChatNemoVLM, wire: WireLog) -> None:
    with pytest.raises(UnsupportedInputError, match="128"):
        llm.invoke(ask("what?", video_part()), video_num_frames=129)
    assert wire.bodies() == []


def test_video_to_llama_nano_vl_is_refused_before_any_request(nim_url: str, wire: WireLog) -> None:
    with pytest.raises(UnsupportedInputError, match="video"):
        model(LLAMA8, nim_url).invoke(ask("what?", video_part()))
    assert wire.bodies() == []


# --- inputs -------------------------------------------------------------------------


def test_standard_image_block_with_base64_is_sent_as_a_data_url(
    llm: ChatNemoVLM, wire: WireLog
) -> None:
    block = {"type": "image", "base64": base64.b64encode(PNG).decode(), "mime_type": "image/png"}
    msg = llm.invoke(ask("what?", block))
    assert wire.last()["messages"][-1]["content"][1]["image_url"]["url"] == PNG_URL
    assert "png 64x48" in msg.content


def test_standard_image_block_with_url_passes_the_url_through(
    llm: ChatNemoVLM, wire: WireLog
) -> None:
    llm.invoke(ask("what?", {"type": "image", "url": "https://example.com/cat.png"}))
    sent = wire.last()["messages"][-1]["content"][1]["image_url"]["url"]
    assert sent == "https://example.com/cat.png"


def test_gif_is_converted_to_png_for_the_nano_models(llm: ChatNemoVLM, wire: WireLog) -> None:
    msg = llm.invoke(ask("what?", image_part(make_gif_url())))
    assert wire.last()["messages"][-1]["content"][1]["image_url"]["url"].startswith(
        "data:image/png;base64,"
    )
    assert "png 32x32" in msg.content


def test_gif_goes_to_diffusiongemma_untouched(nim_url: str, wire: WireLog) -> None:
    model(GEMMA, nim_url).invoke(ask("what?", image_part(make_gif_url())))
    assert wire.last()["messages"][-1]["content"][1]["image_url"]["url"] == make_gif_url()


def test_a_bare_path_inside_content_is_refused(llm: ChatNemoVLM, wire: WireLog) -> None:
    with pytest.raises(UnsupportedInputError, match="allowed_dirs|Path"):
        llm.invoke(ask("what?", image_part("/etc/passwd")))
    assert wire.bodies() == []


def test_unsupported_content_block_type_is_refused(llm: ChatNemoVLM) -> None:
    with pytest.raises(UnsupportedInputError, match="not supported"):
        llm.invoke(ask("what?", {"type": "audio", "base64": "AAAA", "mime_type": "audio/wav"}))


# --- reasoning ----------------------------------------------------------------------


def test_nano12_reasoning_on_sends_think_in_the_system_prompt(
    llm: ChatNemoVLM, wire: WireLog
) -> None:
    msg = llm.invoke([SystemMessage("Be brief."), *ask("why?")], reasoning=True)
    assert wire.last()["messages"][0] == {"role": "system", "content": "/think\nBe brief."}
    assert msg.additional_kwargs["reasoning_content"].startswith("Reasoning (emulated)")
    assert "<think>" not in msg.content and "</think>" not in msg.content


def test_nano12_reasoning_off_by_default_sends_no_directive(
    llm: ChatNemoVLM, wire: WireLog
) -> None:
    msg = llm.invoke(ask("why?"))
    assert wire.last()["messages"][0]["role"] == "user"
    assert "reasoning_content" not in msg.additional_kwargs


def test_nano12_reasoning_with_video_is_refused(llm: ChatNemoVLM, wire: WireLog) -> None:
    with pytest.raises(UnsupportedInputError, match="video"):
        llm.invoke(ask("why?", video_part()), reasoning=True)
    assert wire.bodies() == []


def test_diffusiongemma_reasoning_off_uses_chat_template_kwargs(
    nim_url: str, wire: WireLog
) -> None:
    msg = model(GEMMA, nim_url, reasoning=False).invoke("why?")
    assert wire.last()["chat_template_kwargs"] == {"thinking": False}
    assert "reasoning_content" not in msg.additional_kwargs


def test_diffusiongemma_reasons_by_default_in_its_reasoning_field(nim_url: str) -> None:
    msg = model(GEMMA, nim_url).invoke("why?")
    assert msg.additional_kwargs["reasoning_content"].startswith("Reasoning (emulated)")


def test_diffusiongemma_include_reasoning_false_hides_the_trace(
    nim_url: str, wire: WireLog
) -> None:
    msg = model(GEMMA, nim_url, include_reasoning=False).invoke("why?")
    assert wire.last()["include_reasoning"] is False
    assert "reasoning_content" not in msg.additional_kwargs


def test_include_reasoning_false_while_streaming_is_refused(nim_url: str, wire: WireLog) -> None:
    with pytest.raises(UnsupportedInputError, match="stream"):
        list(model(GEMMA, nim_url, include_reasoning=False).stream("why?"))
    assert wire.bodies() == []


def test_reasoning_asked_of_a_model_that_cannot_reason_is_refused(nim_url: str) -> None:
    with pytest.raises(UnsupportedInputError, match="reasoning"):
        model(LLAMA8, nim_url, reasoning=True).invoke("why?")


@pytest.mark.parametrize(
    "style", ["think_tags", "closing_tag_only", "reasoning_content", "reasoning"]
)
def test_every_reasoning_shape_lands_in_reasoning_content(nim_url: str, style: str) -> None:
    llm = model(
        NANO12,
        nim_url,
        reasoning=True,
        default_headers={"X-Emulator-Reasoning-Style": style, "X-Emulator-Chunk-Size": "3"},
    )
    for msg in (llm.invoke("why?"), collect(llm.stream("why?"))):
        assert msg.additional_kwargs["reasoning_content"].startswith("Reasoning (emulated)")
        assert "think>" not in msg.content and msg.content.startswith("[nemovlm emulator]")


def test_think_tag_split_one_character_per_chunk_never_leaks(nim_url: str) -> None:
    llm = model(NANO12, nim_url, default_headers={"X-Emulator-Chunk-Size": "1"})
    chunks = list(llm.stream("why?", reasoning=True))
    assert all("<" not in str(c.content) for c in chunks)
    full = collect(chunks)
    assert full.additional_kwargs["reasoning_content"].startswith("Reasoning (emulated)")


# --- tools --------------------------------------------------------------------------


@tool
def get_weather(city: str) -> str:
    """Weather for a city."""
    return f"sunny in {city}"


@tool
def get_time(zone: str) -> str:
    """Time in a zone."""
    return "noon"


def test_nano12_uses_native_tools(llm: ChatNemoVLM, wire: WireLog) -> None:
    msg = llm.bind_tools([get_weather]).invoke("Weather in Paris?")
    assert wire.last()["tools"][0]["function"]["name"] == "get_weather"
    assert msg.tool_calls[0]["name"] == "get_weather" and "city" in msg.tool_calls[0]["args"]


def test_native_tool_calls_stream_as_tool_call_chunks(llm: ChatNemoVLM) -> None:
    chunks = list(llm.bind_tools([get_weather]).stream("Weather in Paris?"))
    assert sum(1 for c in chunks if c.tool_call_chunks) > 1
    full = collect(chunks)
    assert full.tool_calls[0]["name"] == "get_weather" and full.tool_calls[0]["args"]


def test_tool_choice_by_name_is_sent_as_a_function_choice(llm: ChatNemoVLM, wire: WireLog) -> None:
    msg = llm.bind_tools([get_weather, get_time], tool_choice="get_time").invoke("now?")
    assert wire.last()["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}
    assert msg.tool_calls[0]["name"] == "get_time"


def test_unknown_tool_choice_name_is_refused(llm: ChatNemoVLM) -> None:
    with pytest.raises(UnsupportedInputError, match="names no bound tool"):
        llm.bind_tools([get_weather], tool_choice="launch_rocket").invoke("go")


def test_unparseable_native_arguments_become_invalid_tool_calls(nim_url: str) -> None:
    llm = model(NANO12, nim_url, default_headers={"X-Emulator-Fault": "bad_tool_args"})
    msg = llm.bind_tools([get_weather]).invoke("Weather in Paris?")
    assert not msg.tool_calls and msg.invalid_tool_calls[0]["name"] == "get_weather"
    assert "not valid JSON" in msg.invalid_tool_calls[0]["error"]


def test_unparseable_streamed_arguments_do_not_raise(nim_url: str) -> None:
    # LangChain itself joins streamed chunks (partial-JSON parsing, as for ChatOpenAI).
    llm = model(NANO12, nim_url, default_headers={"X-Emulator-Fault": "bad_tool_args"})
    streamed = collect(llm.bind_tools([get_weather]).stream("Weather in Paris?"))
    assert streamed.tool_call_chunks[0]["args"].startswith('{"city": "Par')
    assert not streamed.tool_calls and streamed.invalid_tool_calls


def test_llama_nano_vl_calls_tools_through_the_prompt_protocol(nim_url: str, wire: WireLog) -> None:
    msg = model(LLAMA8, nim_url).bind_tools([get_weather]).invoke("Weather in Paris?")
    body = wire.last()
    assert "tools" not in body and "<tools>" in body["messages"][0]["content"]
    assert msg.tool_calls[0]["name"] == "get_weather" and msg.content == ""


def test_prompt_protocol_tool_calls_also_stream(nim_url: str) -> None:
    full = collect(model(LLAMA8, nim_url).bind_tools([get_weather]).stream("Weather in Paris?"))
    assert full.tool_calls[0]["name"] == "get_weather"


def test_prompt_protocol_agent_loop_reaches_a_final_answer(nim_url: str) -> None:
    llm = model(LLAMA8, nim_url).bind_tools([get_weather])
    history: list[Any] = [HumanMessage("Weather in Paris?")]
    first = llm.invoke(history)
    call = first.tool_calls[0]
    history += [first, ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])]
    final = llm.invoke(history)
    assert not final.tool_calls and "sunny in" in final.content


class Weather(BaseModel):
    city: str
    temperature_c: float


def test_structured_output_uses_response_format_on_nano12(llm: ChatNemoVLM, wire: WireLog) -> None:
    result = llm.with_structured_output(Weather).invoke("Weather in Oslo as JSON")
    assert isinstance(result, Weather)
    assert wire.last()["response_format"]["type"] == "json_schema"


def test_structured_output_uses_the_prompt_protocol_on_llama_nano_vl(
    nim_url: str, wire: WireLog
) -> None:
    result = model(LLAMA8, nim_url).with_structured_output(Weather).invoke("Weather in Oslo")
    assert isinstance(result, Weather)
    assert "response_format" not in wire.last()
    assert "<json_schema>" in wire.last()["messages"][0]["content"]


def test_structured_output_include_raw_returns_raw_and_parsed(llm: ChatNemoVLM) -> None:
    out = llm.with_structured_output(Weather, include_raw=True).invoke("Weather in Oslo")
    assert isinstance(out["raw"], AIMessage) and isinstance(out["parsed"], Weather)
    assert out["parsing_error"] is None
    assert json.loads(out["raw"].content)["city"]


def test_structured_output_by_function_calling(llm: ChatNemoVLM) -> None:
    result = llm.with_structured_output(Weather, method="function_calling").invoke("Oslo?")
    assert isinstance(result, Weather)


# --- profile and errors -------------------------------------------------------------


def test_profile_describes_what_the_model_takes(nim_url: str) -> None:
    nano = model(NANO12, nim_url).profile
    llama = model(LLAMA8, nim_url).profile
    assert nano and llama
    assert nano["video_inputs"] and nano["reasoning_output"] and nano["tool_calling"]
    assert not llama["video_inputs"] and not llama["reasoning_output"] and llama["image_inputs"]


def test_server_refusal_carries_status_and_message(nim_url: str) -> None:
    llm = model("acme/new-vlm", nim_url, video_fps=500.0)
    with pytest.raises(RequestError) as info:
        llm.invoke(ask("what?", video_part()))
    assert info.value.status_code == 400 and "fps" in str(info.value)


def test_a_broken_stream_raises_instead_of_ending_quietly(nim_url: str) -> None:
    llm = model(NANO12, nim_url, default_headers={"X-Emulator-Fault": "break_stream"})
    with pytest.raises(IncompleteResponseError):
        list(llm.stream("tell me a long story"))


def test_an_empty_message_list_is_refused(llm: ChatNemoVLM) -> None:
    with pytest.raises(UnsupportedInputError, match="empty"):
        llm.invoke([])


# --- local files ----------------------------------------------------------------------


def test_media_block_sends_a_local_file_the_caller_chose(
    llm: ChatNemoVLM, wire: WireLog, tmp_path: Any
) -> None:
    from langchain_nemovlm import media_block

    (tmp_path / "chart.png").write_bytes(PNG)
    msg = llm.invoke(ask("what?", media_block(tmp_path / "chart.png")))
    assert wire.last()["messages"][-1]["content"][1]["image_url"]["url"] == PNG_URL
    assert "png 64x48" in msg.content


def test_media_block_of_a_video_file_becomes_a_video_url_part(
    llm: ChatNemoVLM, wire: WireLog, tmp_path: Any
) -> None:
    from langchain_nemovlm import media_block

    (tmp_path / "clip.mp4").write_bytes(MP4)
    llm.invoke(ask("what happens?", media_block(str(tmp_path / "clip.mp4"))))
    assert part_types(wire.last()) == ["text", "video_url"]


def test_media_block_of_a_file_that_is_not_media_is_refused(tmp_path: Any) -> None:
    from langchain_nemovlm import media_block

    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UnsupportedInputError, match="not an image or video"):
        media_block(tmp_path / "notes.txt")


def test_each_event_loop_gets_its_own_client_and_closed_loops_are_let_go(
    llm: ChatNemoVLM,
) -> None:
    import asyncio

    for i in range(3):
        assert asyncio.run(llm.ainvoke(f"loop {i}")).content.endswith(f"loop {i}")
    assert len(llm.backend._aclients) <= 1  # type: ignore[attr-defined]


def test_a_stream_stopped_early_releases_its_connection(nim_url: str) -> None:
    llm = model(NANO12, nim_url, default_headers={"X-Emulator-Chunk-Size": "1"})
    for _ in range(30):  # more than the pool would hold if each stream kept its socket
        stream = llm.stream("a long enough question to stream many chunks")
        next(iter(stream))
        stream.close()  # type: ignore[attr-defined]
    pool = llm.backend.client._client._transport._pool  # type: ignore[attr-defined]
    assert all(not c.is_closed() and c.is_idle() for c in pool.connections)
    assert llm.invoke("after").content.endswith("after")


def test_a_users_own_think_streams_its_reasoning_apart_from_the_answer(nim_url: str) -> None:
    llm = model(NANO12, nim_url, default_headers={"X-Emulator-Reasoning-Style": "closing_tag_only"})
    messages = [SystemMessage("/think"), HumanMessage("hi")]
    for msg in (llm.invoke(messages), collect(llm.stream(messages))):
        assert msg.content.startswith("[nemovlm emulator]")
        assert msg.additional_kwargs["reasoning_content"].startswith("Reasoning (emulated)")


def test_an_unparseable_prompt_protocol_reply_stays_invalid_when_streamed(nim_url: str) -> None:
    # max_tokens=8 cuts the emulator's JSON tool call off mid-way.
    llm = model(LLAMA8, nim_url, max_tokens=8).bind_tools([get_weather])
    for msg in (llm.invoke("Weather in Paris?"), collect(llm.stream("Weather in Paris?"))):
        assert msg.tool_calls == [] and len(msg.invalid_tool_calls) == 1


def test_a_response_format_argument_goes_the_models_own_way(nim_url: str, wire: WireLog) -> None:
    schema = {"name": "Weather", "schema": Weather.model_json_schema()}
    rf = {"type": "json_schema", "json_schema": schema}
    model(NANO12, nim_url).invoke("Weather in Oslo", response_format=rf)
    assert wire.last()["response_format"]["json_schema"]["name"] == "Weather"
    msg = model(LLAMA8, nim_url).invoke("Weather in Oslo", response_format=rf)
    assert "response_format" not in wire.last()  # the 8B NIM would ignore it
    assert Weather.model_validate_json(msg.content).city


def test_create_agent_with_a_response_format_works_on_a_prompted_model(nim_url: str) -> None:
    agents = pytest.importorskip("langchain.agents")
    agent = agents.create_agent(model(LLAMA8, nim_url), tools=[], response_format=Weather)
    result = agent.invoke({"messages": [HumanMessage("Weather in Oslo")]})
    assert isinstance(result["structured_response"], Weather)


def test_an_image_in_a_system_message_is_refused_not_dropped(
    llm: ChatNemoVLM, wire: WireLog
) -> None:
    system = SystemMessage(content=[{"type": "text", "text": "sys"}, image_part()])
    with pytest.raises(UnsupportedInputError, match="system message cannot carry"):
        llm.invoke([system, HumanMessage("hi")])
    assert wire.bodies() == []


def test_image_from_a_tool_reaches_an_img_tag_model_as_a_tag(nim_url: str, wire: WireLog) -> None:
    history = [
        HumanMessage("Plot it"),
        AIMessage("", tool_calls=[{"name": "plot", "args": {}, "id": "c1"}]),
        ToolMessage(content=[{"type": "text", "text": "chart"}, image_part()], tool_call_id="c1"),
    ]
    model(LLAMA8, nim_url, image_transport="img_tag").invoke(history)
    last = wire.last()["messages"][-1]
    assert last["role"] == "user" and isinstance(last["content"], str)
    assert last["content"].startswith(f'<img src="{PNG_URL}" />')
    assert "<tool_result" in last["content"]


def test_more_tiles_let_a_larger_image_through(llm: ChatNemoVLM) -> None:
    big = "data:image/png;base64," + base64.b64encode(make_image(2500, 2000, "png")).decode()
    default = llm.invoke(ask("what?", image_part(big)))
    assert "png 2500x2000" not in default.content  # 12 tiles of 512px: downscaled
    more = llm.invoke(ask("what?", image_part(big)), max_num_tiles=24)
    assert "png 2500x2000" in more.content  # 24 tiles hold all of it


@pytest.mark.parametrize("name", ["temperature", "top_p", "video_fps"])
def test_a_number_that_is_not_finite_is_refused(llm: ChatNemoVLM, wire: WireLog, name: str) -> None:
    with pytest.raises(UnsupportedInputError, match="finite"):
        llm.invoke("hi", **{name: float("nan")})
    assert wire.bodies() == []
