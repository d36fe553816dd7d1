"""NemoVLM (LlamaIndex): issue 4's chat contract, each behaviour over HTTP to the NIM emulator.

Grouped as: settings and lifecycle; blocks in; reasoning out; streaming and completion;
usage; options on the wire; errors.
"""

from __future__ import annotations

import base64
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from llama_index.core.base.llms.types import (
    AudioBlock,
    ChatMessage,
    ImageBlock,
    TextBlock,
    ThinkingBlock,
    VideoBlock,
)
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler
from pydantic import SecretStr

from llama_index_nemovlm import NemoVLM
from llama_index_nemovlm._convert import _map_video_block
from nemovlm.errors import RequestError, UnsupportedInputError
from nemovlm.media import MediaPolicy
from nemovlm.samples import make_image, make_mp4

if TYPE_CHECKING:
    from tests.conftest import WireLog

LLAMA8 = "nvidia/llama-3.1-nemotron-nano-vl-8b-v1"
NANO12 = "nvidia/nemotron-nano-12b-v2-vl"
GEMMA = "google/diffusiongemma-26b-a4b-it"

PNG = make_image(64, 48, "png")
MP4 = make_mp4(duration_s=4.0, width=320, height=240, fps=8.0)


def user(*blocks: Any) -> list[ChatMessage]:
    return [ChatMessage(role="user", blocks=list(blocks))]


def wire_parts(wire: WireLog, index: int = -1) -> list[dict[str, Any]]:
    content = wire.last()["messages"][index]["content"]
    assert isinstance(content, list), content
    return content


@pytest.fixture
def llm(nim_url: str) -> NemoVLM:
    return NemoVLM(model=NANO12, base_url=nim_url)


# --- settings and lifecycle ------------------------------------------------------------


def test_metadata_comes_from_the_model_profile(nim_url: str) -> None:
    meta = NemoVLM(model=LLAMA8, base_url=nim_url, max_tokens=300).metadata
    assert meta.context_window == 16_384
    assert meta.num_output == 300
    assert meta.is_chat_model and meta.is_function_calling_model
    assert meta.model_name == LLAMA8


def test_api_key_comes_from_nvidia_api_key_as_a_secret(
    nim_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NVIDIA_API_KEY", "nvapi-test-secret")
    llm = NemoVLM(model=NANO12, base_url=nim_url)
    assert isinstance(llm.api_key, SecretStr)
    assert llm.api_key.get_secret_value() == "nvapi-test-secret"
    assert "nvapi-test-secret" not in repr(llm) + str(llm.to_payload())


def test_backend_is_made_once_per_instance(llm: NemoVLM) -> None:
    assert llm.backend is llm.backend


def test_a_pickled_llm_rebuilds_its_backend_and_still_chats(llm: NemoVLM) -> None:
    llm.chat(user(TextBlock(text="warm up")))
    copy = pickle.loads(pickle.dumps(llm))
    assert copy.backend is not llm.backend
    response = copy.chat(user(TextBlock(text="after pickling")))
    assert "text: after pickling" in (response.message.content or "")


def test_unknown_model_works_with_the_generic_profile(nim_url: str, wire: WireLog) -> None:
    llm = NemoVLM(model="acme/new-vlm", base_url=nim_url)
    response = llm.chat(user(TextBlock(text="hello"), ImageBlock(image=PNG)))
    assert "acme/new-vlm received parts: text, image" in response.message.content
    assert llm.metadata.context_window == 128_000


# --- blocks in -------------------------------------------------------------------------


def test_image_block_bytes_reach_nim_as_a_data_url_image_part(llm: NemoVLM, wire: WireLog) -> None:
    response = llm.chat(user(TextBlock(text="Summarise"), ImageBlock(image=PNG)))
    parts = wire_parts(wire)
    assert [p["type"] for p in parts] == ["text", "image_url"]
    assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert "image 1: png 64x48" in response.message.content


def test_image_block_base64_bytes_are_decoded_not_sent_twice_encoded(
    llm: NemoVLM, wire: WireLog
) -> None:
    block = ImageBlock(image=base64.b64encode(PNG), image_mimetype="image/png")
    llm.chat(user(TextBlock(text="x"), block))
    url = wire_parts(wire)[1]["image_url"]["url"]
    assert base64.b64decode(url.split(",", 1)[1]) == PNG


def test_image_block_path_is_read_as_the_callers_file(
    llm: NemoVLM, wire: WireLog, tmp_path: Path
) -> None:
    chart = tmp_path / "chart.png"
    chart.write_bytes(make_image(40, 30, "png"))
    response = llm.chat(user(ImageBlock(path=chart), TextBlock(text="Summarise")))
    assert "image 1: png 40x30" in response.message.content


def test_image_block_http_url_passes_through_unchanged(llm: NemoVLM, wire: WireLog) -> None:
    url = "https://example.com/cat.png"
    llm.chat(user(TextBlock(text="x"), ImageBlock(url=url)))
    assert wire_parts(wire)[1]["image_url"]["url"] == url


def test_image_block_file_url_is_refused_without_allowed_media_dirs(
    llm: NemoVLM, wire: WireLog, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(PNG)
    with pytest.raises(UnsupportedInputError):
        llm.chat(user(TextBlock(text="x"), ImageBlock(url=secret.as_uri())))
    assert wire.bodies() == []


def test_image_block_file_url_is_read_inside_allowed_media_dirs(
    nim_url: str, tmp_path: Path
) -> None:
    picture = tmp_path / "allowed.png"
    picture.write_bytes(make_image(20, 10, "png"))
    llm = NemoVLM(model=NANO12, base_url=nim_url, allowed_media_dirs=[tmp_path])
    response = llm.chat(user(TextBlock(text="x"), ImageBlock(url=picture.as_uri())))
    assert "image 1: png 20x10" in response.message.content


def test_llama_nano_vl_gets_images_before_text(nim_url: str, wire: WireLog) -> None:
    llm = NemoVLM(model=LLAMA8, base_url=nim_url)
    llm.chat(user(TextBlock(text="Describe"), ImageBlock(image=PNG)))
    assert [p["type"] for p in wire_parts(wire)] == ["image_url", "text"]


def test_video_block_reaches_nim_as_video_url_part(llm: NemoVLM, wire: WireLog) -> None:
    response = llm.chat(user(TextBlock(text="What happens?"), VideoBlock(video=MP4)))
    parts = wire_parts(wire)
    assert parts[1]["type"] == "video_url"
    assert parts[1]["video_url"]["url"].startswith("data:video/mp4;base64,")
    assert "video 1: mp4 4.0s 320x240" in response.message.content


def test_video_block_path_reaches_nim_as_video_url_part(
    llm: NemoVLM, wire: WireLog, tmp_path: Path
) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(MP4)
    llm.chat(user(TextBlock(text="x"), VideoBlock(path=clip)))
    assert wire_parts(wire)[1]["type"] == "video_url"


def test_video_block_fps_becomes_the_parts_sampling_hint() -> None:
    part = _map_video_block(VideoBlock(url="https://example.com/a.mp4", fps=4), MediaPolicy())
    assert (part.kind, part.url, part.fps) == ("video", "https://example.com/a.mp4", 4.0)


def test_video_fps_setting_reaches_nim_as_media_io_kwargs(nim_url: str, wire: WireLog) -> None:
    llm = NemoVLM(model=NANO12, base_url=nim_url, video_fps=1.0)
    response = llm.chat(user(TextBlock(text="x"), VideoBlock(video=MP4)))
    assert wire.last()["media_io_kwargs"] == {"video": {"fps": 1.0}}
    assert "4 frames sampled (fps 1)" in response.message.content


def test_video_block_fps_reaches_nim_when_no_sampling_is_set(llm: NemoVLM, wire: WireLog) -> None:
    response = llm.chat(user(TextBlock(text="x"), VideoBlock(video=MP4, fps=2)))
    assert wire.last()["media_io_kwargs"] == {"video": {"fps": 2.0}}
    assert "8 frames sampled (fps 2)" in response.message.content


def test_model_video_fps_wins_over_the_blocks_hint(nim_url: str, wire: WireLog) -> None:
    llm = NemoVLM(model=NANO12, base_url=nim_url, video_fps=1.0)
    llm.chat(user(TextBlock(text="x"), VideoBlock(video=MP4, fps=2)))
    assert wire.last()["media_io_kwargs"] == {"video": {"fps": 1.0}}


def test_max_num_tiles_reaches_nim_as_mm_processor_kwargs(nim_url: str, wire: WireLog) -> None:
    NemoVLM(model=NANO12, base_url=nim_url, max_num_tiles=4).chat(user(TextBlock(text="x")))
    assert wire.last()["mm_processor_kwargs"] == {"max_num_tiles": 4}


def test_video_to_llama_nano_vl_is_refused_before_any_request(nim_url: str, wire: WireLog) -> None:
    llm = NemoVLM(model=LLAMA8, base_url=nim_url)
    with pytest.raises(UnsupportedInputError, match="video"):
        llm.chat(user(TextBlock(text="x"), VideoBlock(video=MP4)))
    assert wire.bodies() == []


def test_audio_block_is_refused_with_what_to_send_instead(llm: NemoVLM) -> None:
    with pytest.raises(UnsupportedInputError, match="AudioBlock is not supported"):
        llm.chat(user(TextBlock(text="x"), AudioBlock(audio=b"RIFF0000WAVE", format="wav")))


def test_an_image_in_an_assistant_message_is_refused(llm: NemoVLM) -> None:
    history = [
        ChatMessage(role="user", content="hi"),
        ChatMessage(role="assistant", blocks=[ImageBlock(image=PNG)]),
        ChatMessage(role="user", content="and?"),
    ]
    with pytest.raises(UnsupportedInputError, match="user message"):
        llm.chat(history)


def test_thinking_blocks_in_history_are_not_sent_back(llm: NemoVLM, wire: WireLog) -> None:
    history = [
        ChatMessage(role="user", content="hi"),
        ChatMessage(
            role="assistant",
            blocks=[ThinkingBlock(content="private thoughts"), TextBlock(text="Hello!")],
        ),
        ChatMessage(role="user", content="and?"),
    ]
    llm.chat(history)
    assert wire.last()["messages"][1] == {"role": "assistant", "content": "Hello!"}


def test_system_and_developer_roles_become_system_messages(llm: NemoVLM, wire: WireLog) -> None:
    llm.chat(
        [
            ChatMessage(role="developer", content="Be brief."),
            ChatMessage(role="user", content="hi"),
        ]
    )
    assert wire.last()["messages"][0] == {"role": "system", "content": "Be brief."}


# --- reasoning out ---------------------------------------------------------------------


def test_thinking_block_carries_reasoning_not_text(nim_url: str) -> None:
    llm = NemoVLM(model=GEMMA, base_url=nim_url)
    message = llm.chat(user(TextBlock(text="Why?"))).message
    thinking = [b for b in message.blocks if isinstance(b, ThinkingBlock)]
    assert len(thinking) == 1
    assert thinking[0].content and thinking[0].content.startswith("Reasoning (emulated)")
    assert message.content and message.content.startswith("[nemovlm emulator]")
    assert "Reasoning (emulated)" not in message.content


def test_think_tags_from_nano12_become_a_thinking_block(nim_url: str, wire: WireLog) -> None:
    llm = NemoVLM(model=NANO12, base_url=nim_url, reasoning=True)
    message = llm.chat(user(TextBlock(text="Why?"))).message
    assert "/think" in wire.last()["messages"][0]["content"]
    assert isinstance(message.blocks[0], ThinkingBlock)
    assert message.content and "<think>" not in message.content
    assert "</think>" not in message.content


def test_thinking_block_reports_reasoning_tokens(nim_url: str) -> None:
    message = NemoVLM(model=GEMMA, base_url=nim_url).chat(user(TextBlock(text="Why?"))).message
    thinking = message.blocks[0]
    assert isinstance(thinking, ThinkingBlock)
    assert thinking.num_tokens and thinking.num_tokens > 0


def test_reasoning_false_switches_diffusiongemma_off(nim_url: str, wire: WireLog) -> None:
    llm = NemoVLM(model=GEMMA, base_url=nim_url, reasoning=False)
    message = llm.chat(user(TextBlock(text="Why?"))).message
    assert wire.last()["chat_template_kwargs"] == {"thinking": False}
    assert not any(isinstance(b, ThinkingBlock) for b in message.blocks)


def test_stream_chat_sends_reasoning_as_thinking_delta(nim_url: str) -> None:
    llm = NemoVLM(model=NANO12, base_url=nim_url, reasoning=True)
    responses = list(llm.stream_chat(user(TextBlock(text="Why?"))))
    thought = "".join(r.additional_kwargs.get("thinking_delta", "") for r in responses)
    final = responses[-1].message
    assert isinstance(final.blocks[0], ThinkingBlock)
    assert thought.strip() == final.blocks[0].content
    assert all("<think>" not in (r.delta or "") for r in responses)
    assert all("Reasoning (emulated)" not in (r.delta or "") for r in responses)


async def test_astream_chat_sends_reasoning_as_thinking_delta(nim_url: str) -> None:
    llm = NemoVLM(model=GEMMA, base_url=nim_url)
    thought = ""
    async for response in await llm.astream_chat(user(TextBlock(text="Why?"))):
        thought += response.additional_kwargs.get("thinking_delta", "")
    assert thought.startswith("Reasoning (emulated)")


def test_complete_puts_reasoning_in_additional_kwargs_not_text(nim_url: str) -> None:
    response = NemoVLM(model=GEMMA, base_url=nim_url).complete("Why?")
    assert response.additional_kwargs["thinking"].startswith("Reasoning (emulated)")
    assert "Reasoning (emulated)" not in response.text


# --- streaming and completion ---------------------------------------------------------


def test_stream_chat_deltas_add_up_to_the_final_message(llm: NemoVLM) -> None:
    responses = list(llm.stream_chat(user(TextBlock(text="stream me"))))
    assert len(responses) > 3
    assert "".join(r.delta or "" for r in responses) == responses[-1].message.content


def test_stream_chat_messages_are_cumulative(llm: NemoVLM) -> None:
    contents = [r.message.content or "" for r in llm.stream_chat(user(TextBlock(text="x")))]
    assert all(later.startswith(earlier) for earlier, later in zip(contents, contents[1:]))


def test_stream_chat_ends_with_what_chat_returns(llm: NemoVLM) -> None:
    messages = user(TextBlock(text="same answer"))
    *_, last = llm.stream_chat(messages)
    assert last.message.content == llm.chat(messages).message.content


async def test_achat_returns_the_same_answer_as_chat(llm: NemoVLM) -> None:
    messages = user(TextBlock(text="async"), ImageBlock(image=PNG))
    response = await llm.achat(messages)
    assert response.message.content == llm.chat(messages).message.content


async def test_astream_chat_deltas_add_up_to_the_final_message(llm: NemoVLM) -> None:
    deltas, last = [], None
    async for last in await llm.astream_chat(user(TextBlock(text="async stream"))):
        deltas.append(last.delta or "")
    assert last is not None and "".join(deltas) == last.message.content


def test_complete_sends_the_prompt_as_one_user_message(llm: NemoVLM, wire: WireLog) -> None:
    response = llm.complete("Tell me something")
    assert wire.last()["messages"] == [{"role": "user", "content": "Tell me something"}]
    assert "text: Tell me something" in response.text


def test_stream_complete_text_grows_by_each_delta(llm: NemoVLM) -> None:
    responses = list(llm.stream_complete("grow"))
    assert "".join(r.delta or "" for r in responses) == responses[-1].text
    assert "text: grow" in responses[-1].text


async def test_acomplete_and_astream_complete_agree(llm: NemoVLM) -> None:
    whole = await llm.acomplete("agree")
    streamed = [r async for r in await llm.astream_complete("agree")]
    assert streamed[-1].text == whole.text


# --- usage ---------------------------------------------------------------------------


def test_token_counts_are_in_raw_and_additional_kwargs(llm: NemoVLM) -> None:
    response = llm.chat(user(TextBlock(text="count"), ImageBlock(image=PNG)))
    counts = response.additional_kwargs
    assert counts["prompt_tokens"] >= 256  # the emulator counts 256 per image
    assert counts["total_tokens"] == counts["prompt_tokens"] + counts["completion_tokens"]
    assert response.raw["usage"]["prompt_tokens"] == counts["prompt_tokens"]
    assert response.raw["model"] == NANO12


def test_streamed_token_counts_arrive_on_the_last_response(llm: NemoVLM) -> None:
    *_, last = llm.stream_chat(user(TextBlock(text="count")))
    assert last.additional_kwargs["completion_tokens"] > 0
    assert last.raw["finish_reason"] == "stop"


def test_token_counting_handler_sees_the_servers_counts(nim_url: str) -> None:
    counter = TokenCountingHandler()
    llm = NemoVLM(model=NANO12, base_url=nim_url, callback_manager=CallbackManager([counter]))
    response = llm.chat(user(TextBlock(text="count me"), ImageBlock(image=PNG)))
    assert counter.prompt_llm_token_count == response.additional_kwargs["prompt_tokens"]
    assert counter.completion_llm_token_count == response.additional_kwargs["completion_tokens"]


# --- options on the wire -------------------------------------------------------------


def test_sampling_settings_reach_the_wire(nim_url: str, wire: WireLog) -> None:
    llm = NemoVLM(model=NANO12, base_url=nim_url, temperature=0.2, top_p=0.9, max_tokens=64)
    llm.chat(user(TextBlock(text="x")), seed=7, stop=["END"])
    body = wire.last()
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.2, 0.9, 64)
    assert (body["seed"], body["stop"]) == (7, ["END"])


def test_call_kwargs_override_fields(llm: NemoVLM, wire: WireLog) -> None:
    llm.chat(user(TextBlock(text="x")), temperature=0.5)
    assert wire.last()["temperature"] == 0.5


def test_additional_kwargs_and_unknown_call_kwargs_go_to_the_wire(
    nim_url: str, wire: WireLog
) -> None:
    llm = NemoVLM(model=NANO12, base_url=nim_url, additional_kwargs={"top_k": 5})
    llm.chat(user(TextBlock(text="x")), repetition_penalty=1.1)
    body = wire.last()
    assert (body["top_k"], body["repetition_penalty"]) == (5, 1.1)


# --- errors --------------------------------------------------------------------------


def test_a_server_error_propagates_as_request_error_with_status(nim_url: str) -> None:
    llm = NemoVLM(
        model=NANO12,
        base_url=nim_url,
        max_retries=0,
        default_headers={"X-Emulator-Fault": "500"},
    )
    with pytest.raises(RequestError) as caught:
        llm.chat(user(TextBlock(text="x")))
    assert caught.value.status_code == 500


def test_an_empty_message_list_is_refused(llm: NemoVLM) -> None:
    with pytest.raises(UnsupportedInputError, match="empty"):
        llm.chat([])
