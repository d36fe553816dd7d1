"""NemoVLMMultiModal / NemoFalMultiModal: the ``MultiModalLLM`` interface image RAG query
engines call, over HTTP to the emulators, through the same mapping as ``NemoVLM``."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from llama_index.core.base.llms.types import ChatMessage, ImageBlock, TextBlock
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler
from llama_index.core.schema import ImageDocument, ImageNode
from pydantic import SecretStr

from llama_index_nemovlm import NemoFalMultiModal, NemoVLM, NemoVLMMultiModal
from nemovlm.emulator.fal import FalEmulator, start_fal_emulator
from nemovlm.samples import make_image

if TYPE_CHECKING:
    from tests.conftest import WireLog

LLAMA8 = "nvidia/llama-3.1-nemotron-nano-vl-8b-v1"
NANO12 = "nvidia/nemotron-nano-12b-v2-vl"
DIFFUSION_APP = "fal-ai/nemotron-diffusion-vlm"
PNG = make_image(64, 48, "png")
PNG_B64 = base64.b64encode(PNG).decode()


@pytest.fixture
def mm(nim_url: str) -> NemoVLMMultiModal:
    return NemoVLMMultiModal(model=NANO12, base_url=nim_url)


def test_complete_sends_image_documents_then_the_prompt(
    mm: NemoVLMMultiModal, wire: WireLog
) -> None:
    response = mm.complete("Describe", image_documents=[ImageDocument(image=PNG_B64)])
    parts = wire.last()["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["image_url", "text"]
    assert "image 1: png 64x48" in response.text


def test_image_node_path_and_url_are_both_understood(
    mm: NemoVLMMultiModal, wire: WireLog, tmp_path: Path
) -> None:
    picture = tmp_path / "p.png"
    picture.write_bytes(make_image(20, 10, "png"))
    nodes = [ImageNode(image_path=str(picture)), ImageNode(image_url="https://example.com/a.png")]
    response = mm.complete("Compare", image_documents=nodes)
    urls = [p["image_url"]["url"] for p in wire.last()["messages"][0]["content"][:2]]
    assert urls[0].startswith("data:image/png;base64,")
    assert urls[1] == "https://example.com/a.png"
    assert "image 1: png 20x10" in response.text


def test_image_blocks_are_accepted_as_image_documents(mm: NemoVLMMultiModal) -> None:
    response = mm.complete("x", image_documents=[ImageBlock(image=PNG)])
    assert "image 1: png 64x48" in response.text


def test_multi_modal_answer_equals_the_chat_llms(nim_url: str, mm: NemoVLMMultiModal) -> None:
    llm = NemoVLM(model=NANO12, base_url=nim_url)
    chat = llm.chat([ChatMessage(role="user", blocks=[ImageBlock(image=PNG), TextBlock(text="q")])])
    assert mm.complete("q", image_documents=[ImageDocument(image=PNG_B64)]).text == (
        chat.message.content
    )


def test_settings_are_shared_with_the_inner_llm(nim_url: str, wire: WireLog) -> None:
    mm = NemoVLMMultiModal(model=LLAMA8, base_url=nim_url, temperature=0.3, max_tokens=50)
    mm.complete("x", image_documents=[ImageDocument(image=PNG_B64)])
    body = wire.last()
    assert (body["model"], body["temperature"], body["max_tokens"]) == (LLAMA8, 0.3, 50)
    assert mm.llm is mm.llm


def test_stream_complete_grows_to_the_whole_answer(mm: NemoVLMMultiModal) -> None:
    responses = list(mm.stream_complete("x", image_documents=[ImageDocument(image=PNG_B64)]))
    assert len(responses) > 2
    assert "".join(r.delta or "" for r in responses) == responses[-1].text


def test_chat_and_stream_chat_take_chat_messages(mm: NemoVLMMultiModal) -> None:
    messages = [ChatMessage(role="user", blocks=[ImageBlock(image=PNG), TextBlock(text="hi")])]
    whole = mm.chat(messages)
    *_, last = mm.stream_chat(messages)
    assert last.message.content == whole.message.content


async def test_async_twins_answer_like_the_sync_ones(mm: NemoVLMMultiModal) -> None:
    docs = [ImageDocument(image=PNG_B64)]
    whole = await mm.acomplete("async", image_documents=docs)
    completions = [r async for r in await mm.astream_complete("async", image_documents=docs)]
    assert completions[-1].text == whole.text
    messages = [ChatMessage(role="user", content="async chat")]
    chat = await mm.achat(messages)
    streamed = [r async for r in await mm.astream_chat(messages)]
    assert streamed[-1].message.content == chat.message.content


def test_callbacks_see_the_token_counts(nim_url: str) -> None:
    counter = TokenCountingHandler()
    mm = NemoVLMMultiModal(
        model=NANO12, base_url=nim_url, callback_manager=CallbackManager([counter])
    )
    response = mm.complete("x", image_documents=[ImageDocument(image=PNG_B64)])
    assert counter.prompt_llm_token_count == response.additional_kwargs["prompt_tokens"]


def test_metadata_says_how_many_images_a_request_takes(nim_url: str) -> None:
    assert (
        NemoFalMultiModal(model=DIFFUSION_APP, api_key=SecretStr("k")).metadata.num_input_files == 1
    )
    meta = NemoVLMMultiModal(model=NANO12, base_url=nim_url).metadata
    assert meta.is_chat_model and meta.context_window == 128_000


@pytest.fixture(scope="module")
def fal_emulator() -> Iterator[FalEmulator]:
    emu = start_fal_emulator()
    undo = emu.aim_fal_client()
    try:
        yield emu
    finally:
        undo()
        emu.stop()


def test_fal_multi_modal_sends_its_one_image_document(fal_emulator: FalEmulator) -> None:
    mm = NemoFalMultiModal(model=DIFFUSION_APP, api_key=SecretStr("k"), poll_interval=0.01)
    response = mm.complete("What is it?", image_documents=[ImageDocument(image=PNG_B64)])
    assert response.text == (
        "[nemovlm emulator] fal-ai/nemotron-diffusion-vlm saw png 64x48 (data URL); "
        "prompt: 'What is it?'"
    )
