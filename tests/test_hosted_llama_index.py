"""NVIDIA's hosted catalog with NemoVLM and NemoVLMMultiModal (LlamaIndex): the same core
as ChatNemoVLM, so these pin the adapter's part: the settings, and that every call
path (sync, async, streaming, cancellation) uploads, uses and deletes its assets.
Over HTTP to the hosted-mode emulator."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from hosted_catalog import (
    KEY,
    PHOTO,
    SMALL,
    Catalog,
    asset_ids,
    b64,
    catalog,
    catalog_server,
    media_urls,
)
from llama_index.core.base.llms.types import ChatMessage, ImageBlock, TextBlock, VideoBlock
from llama_index.core.schema import ImageDocument

from llama_index_nemovlm import NemoVLM, NemoVLMMultiModal
from nemovlm.errors import RequestError, UnsupportedInputError
from nemovlm.hosted import DEFAULT_ASSETS_URL
from nemovlm.samples import make_mp4

__all__ = ["catalog", "catalog_server"]  # fixtures, imported for pytest

LLAMA8 = "nvidia/llama-3.1-nemotron-nano-vl-8b-v1"
NANO12 = "nvidia/nemotron-nano-12b-v2-vl"


def ask(image: bytes = PHOTO, text: str = "Read the receipt.") -> list[ChatMessage]:
    return [ChatMessage(role="user", blocks=[TextBlock(text=text), ImageBlock(image=image)])]


def hosted_llm(catalog: Catalog, model: str = NANO12, **extra: Any) -> NemoVLM:
    return NemoVLM(model=model, max_retries=0, **catalog.settings(**extra))


def test_the_catalogs_base_url_is_hosted_and_a_local_nim_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NVIDIA_BASE_URL", raising=False)
    assert NemoVLM(model=NANO12, api_key=KEY).is_hosted
    assert not NemoVLM(model=NANO12, base_url="http://localhost:8000/v1").is_hosted
    assert NemoVLM(model=NANO12, base_url="http://localhost:8000/v1", hosted=True).is_hosted
    assert NemoVLMMultiModal(model=NANO12, api_key=KEY).is_hosted


def test_assets_url_defaults_to_nvcf_assets_url_else_nvidias(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NVCF_ASSETS_URL", raising=False)
    assert NemoVLM(model=NANO12, api_key=KEY).backend.hosted.assets_url == DEFAULT_ASSETS_URL
    monkeypatch.setenv("NVCF_ASSETS_URL", "http://127.0.0.1:9/assets")
    assert (
        NemoVLM(model=NANO12, api_key=KEY).backend.hosted.assets_url == "http://127.0.0.1:9/assets"
    )


def test_chat_uploads_the_photo_and_deletes_it(catalog: Catalog) -> None:
    response = hosted_llm(catalog).chat(ask())
    assert "image 1: jpeg 800x600 (NVCF asset)" in str(response.message.content)
    (asset_id,) = asset_ids(catalog.last_chat())
    assert media_urls(catalog.last_chat()["body"]) == [f"data:image/jpeg;asset_id,{asset_id}"]
    assert catalog.live() == []


def test_auto_keeps_a_small_photo_inline(catalog: Catalog) -> None:
    hosted_llm(catalog).chat(ask(SMALL))
    assert catalog.calls() == [("POST", "chat")]


def test_upload_mode_uploads_a_small_photo(catalog: Catalog) -> None:
    hosted_llm(catalog, hosted_media="upload").chat(ask(SMALL))
    assert catalog.calls()[0] == ("POST", "create")
    assert catalog.live() == []


def test_fit_mode_sends_the_photo_inline_within_the_budget(catalog: Catalog) -> None:
    hosted_llm(catalog, hosted_media="fit").chat(ask())
    assert catalog.calls() == [("POST", "chat")]
    (url,) = media_urls(catalog.last_chat()["body"])
    assert len(url.split(",", 1)[1]) <= 180_000


def test_fit_mode_refuses_a_video_before_any_request(catalog: Catalog) -> None:
    llm = hosted_llm(catalog, hosted_media="fit", profile_overrides={"hosted_inline_budget": 100})
    video = VideoBlock(video=make_mp4(4.0, 320, 240, 8.0), video_mimetype="video/mp4")
    with pytest.raises(UnsupportedInputError, match="hosted_media='auto'"):
        llm.chat([ChatMessage(role="user", blocks=[TextBlock(text="Describe."), video])])
    assert catalog.calls() == []


def test_a_video_block_goes_up_as_a_video_asset(catalog: Catalog) -> None:
    llm = hosted_llm(catalog, profile_overrides={"hosted_inline_budget": 1000})
    video = VideoBlock(video=make_mp4(4.0, 320, 240, 8.0), video_mimetype="video/mp4")
    response = llm.chat([ChatMessage(role="user", blocks=[TextBlock(text="Describe."), video])])
    assert "(NVCF asset)" in str(response.message.content)
    assert media_urls(catalog.last_chat()["body"])[0].startswith("data:video/mp4;asset_id,")
    assert catalog.live() == []


def test_the_img_tag_transport_carries_the_asset_id(catalog: Catalog) -> None:
    hosted_llm(catalog, model=LLAMA8, image_transport="img_tag").chat(ask())
    content = catalog.last_chat()["body"]["messages"][-1]["content"]
    (asset_id,) = asset_ids(catalog.last_chat())
    assert f'<img src="data:image/jpeg;asset_id,{asset_id}" />' in content


def test_a_failed_create_names_the_step_and_sends_no_chat(catalog: Catalog) -> None:
    catalog.fail("create", 500)
    with pytest.raises(RequestError, match="Creating an NVCF asset"):
        hosted_llm(catalog).chat(ask())
    assert ("POST", "chat") not in catalog.calls()


def test_a_failed_upload_names_the_step_and_leaves_no_asset(catalog: Catalog) -> None:
    catalog.fail("upload", 500)
    with pytest.raises(RequestError, match="Uploading the image"):
        hosted_llm(catalog).chat(ask())
    assert catalog.live() == []


def test_a_413_says_what_to_change(catalog: Catalog) -> None:
    llm = hosted_llm(catalog, profile_overrides={"hosted_inline_budget": 10_000_000})
    with pytest.raises(RequestError, match="hosted_media='upload'"):
        llm.chat(ask())


def test_assets_are_deleted_after_a_server_error(catalog: Catalog) -> None:
    llm = hosted_llm(catalog, default_headers={"X-Emulator-Fault": "500"})
    with pytest.raises(RequestError):
        llm.chat(ask())
    assert catalog.live() == []


def test_stream_chat_uses_and_deletes_the_asset(catalog: Catalog) -> None:
    last = list(hosted_llm(catalog).stream_chat(ask()))[-1]
    assert "(NVCF asset)" in str(last.message.content)
    assert catalog.live() == []


def test_a_stream_closed_early_deletes_its_assets(catalog: Catalog) -> None:
    llm = hosted_llm(catalog, default_headers={"X-Emulator-Chunk-Size": "1"})
    stream = llm.stream_chat(ask())
    next(stream)
    assert len(catalog.live()) == 1
    stream.close()
    assert catalog.live() == []


def test_an_abandoned_stream_deletes_its_assets(catalog: Catalog) -> None:
    llm = hosted_llm(catalog, default_headers={"X-Emulator-Chunk-Size": "1"})
    stream = llm.stream_chat(ask())
    next(stream)
    del stream
    gc.collect()
    assert catalog.live(wait_empty=20) == []


async def test_achat_uploads_and_deletes(catalog: Catalog) -> None:
    response = await hosted_llm(catalog).achat(ask())
    assert "(NVCF asset)" in str(response.message.content)
    assert catalog.live() == []


async def test_astream_chat_uses_and_deletes_the_asset(catalog: Catalog) -> None:
    last = [r async for r in await hosted_llm(catalog).astream_chat(ask())][-1]
    assert "(NVCF asset)" in str(last.message.content)
    assert catalog.live() == []


async def test_an_async_stream_closed_early_deletes_its_assets(catalog: Catalog) -> None:
    llm = hosted_llm(catalog, default_headers={"X-Emulator-Chunk-Size": "1"})
    stream = await llm.astream_chat(ask())
    await stream.__anext__()
    assert len(catalog.live()) == 1
    await stream.aclose()  # type: ignore[attr-defined]
    assert await asyncio.to_thread(catalog.live, 20) == []


async def test_cancelling_achat_mid_call_deletes_its_assets(catalog: Catalog) -> None:
    catalog.hold()
    task = asyncio.create_task(hosted_llm(catalog).achat(ask()))
    assert await asyncio.to_thread(catalog.wait_held) == 1
    assert len(catalog.live()) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert catalog.live() == []


def test_system_messages_merge_first_and_roles_alternate(catalog: Catalog) -> None:
    messages = [
        ChatMessage(role="user", content="One."),
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content="Two."),
    ]
    hosted_llm(catalog).chat(messages)
    sent = catalog.last_chat()["body"]["messages"]
    assert [(m["role"], m["content"]) for m in sent] == [
        ("system", "Be brief."),
        ("user", "One.\n\nTwo."),
    ]


def test_multi_modal_complete_uploads_the_image_document(catalog: Catalog) -> None:
    mm = NemoVLMMultiModal(model=NANO12, max_retries=0, **catalog.settings())
    response = mm.complete("Describe", image_documents=[ImageDocument(image=b64(PHOTO))])
    assert "(NVCF asset)" in response.text
    assert catalog.live() == []


async def test_multi_modal_astream_complete_uploads_and_deletes(catalog: Catalog) -> None:
    mm = NemoVLMMultiModal(model=NANO12, max_retries=0, **catalog.settings())
    stream = await mm.astream_complete(
        "Describe", image_documents=[ImageDocument(image=b64(PHOTO))]
    )
    last = [r async for r in stream][-1]
    assert "(NVCF asset)" in last.text
    assert catalog.live() == []
