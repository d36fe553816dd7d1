"""NVIDIA's hosted catalog with ChatNemoVLM: settings, NVCF assets, cleanup, message rules.

Every behaviour goes over HTTP to the NIM emulator in hosted mode (``--hosted``), which
plays the catalog: the asset API on itself, the 413 inline budget, 422 for assets and
message rules (``nemovlm.emulator.hosted``).
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import openai
import pytest
from hosted_catalog import (
    KEY,
    PHOTO,
    PHOTO_B,
    SMALL,
    Catalog,
    asset_ids,
    b64,
    catalog,
    catalog_server,
    media_urls,
)
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from langchain_nemovlm import ChatNemoVLM
from nemovlm.backends.assets import AssetCleanupWarning
from nemovlm.errors import (
    IncompleteResponseError,
    MissingCredentialsError,
    RequestError,
    UnsupportedInputError,
)
from nemovlm.hosted import DEFAULT_ASSETS_URL
from nemovlm.samples import make_image, make_mp4, make_photo

__all__ = ["catalog", "catalog_server"]  # fixtures, imported for pytest

LLAMA8 = "nvidia/llama-3.1-nemotron-nano-vl-8b-v1"
NANO12 = "nvidia/nemotron-nano-12b-v2-vl"
MP4 = make_mp4(duration_s=4.0, width=320, height=240, fps=8.0)


def photo_block(data: bytes = PHOTO, mime: str = "image/jpeg") -> dict[str, Any]:
    return {"type": "image", "base64": b64(data), "mime_type": mime}


def ask(*blocks: dict[str, Any], text: str = "Read the receipt.") -> list[HumanMessage]:
    return [HumanMessage(content=[{"type": "text", "text": text}, *blocks])]


def hosted_llm(catalog: Catalog, model: str = NANO12, **extra: Any) -> ChatNemoVLM:
    return ChatNemoVLM(model=model, max_retries=0, **catalog.settings(**extra))


# --- settings ----------------------------------------------------------------------


def test_the_catalogs_base_url_is_hosted_and_a_local_nim_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NVIDIA_BASE_URL", raising=False)
    assert ChatNemoVLM(model=NANO12, api_key=KEY).is_hosted
    assert ChatNemoVLM(model=NANO12, base_url="https://integrate.api.nvidia.com/v1").is_hosted
    assert not ChatNemoVLM(model=NANO12, base_url="http://localhost:8000/v1").is_hosted


def test_hosted_set_by_hand_wins_over_the_base_url() -> None:
    assert ChatNemoVLM(model=NANO12, base_url="http://localhost:8000/v1", hosted=True).is_hosted
    assert not ChatNemoVLM(model=NANO12, api_key=KEY, hosted=False).is_hosted


def test_nvidia_base_url_decides_when_no_base_url_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NVIDIA_BASE_URL", "http://127.0.0.1:8000/v1")
    assert not ChatNemoVLM(model=NANO12).is_hosted


def test_assets_url_defaults_to_nvcf_assets_url_else_nvidias(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NVCF_ASSETS_URL", raising=False)
    assert ChatNemoVLM(model=NANO12, api_key=KEY).backend.hosted.assets_url == DEFAULT_ASSETS_URL
    assert DEFAULT_ASSETS_URL == "https://api.nvcf.nvidia.com/v2/nvcf/assets"
    monkeypatch.setenv("NVCF_ASSETS_URL", "http://127.0.0.1:9/v2/nvcf/assets")
    assert (
        ChatNemoVLM(model=NANO12, api_key=KEY).backend.hosted.assets_url
        == "http://127.0.0.1:9/v2/nvcf/assets"
    )


def test_hosted_settings_on_a_local_nim_are_not_dropped_silently() -> None:
    llm = ChatNemoVLM(model=NANO12, base_url="http://localhost:8000/v1", hosted_media="upload")
    with pytest.warns(UserWarning, match="set hosted=True if it is"):
        assert llm.backend is not None


def test_an_unknown_hosted_media_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="hosted_media"):
        ChatNemoVLM(model=NANO12, hosted_media="sometimes")  # type: ignore[arg-type]


def test_the_inline_budget_is_a_profile_field_of_180000_characters_by_default() -> None:
    assert ChatNemoVLM(model="some/unknown-vlm").nemo_profile.hosted_inline_budget == 180_000
    assert ChatNemoVLM(model=LLAMA8).nemo_profile.hosted_inline_budget == 180_000


def test_a_local_nim_gets_media_inline_and_no_asset_calls(catalog: Catalog) -> None:
    llm = ChatNemoVLM(model=NANO12, base_url=catalog.base_url, api_key=KEY)
    with pytest.raises(RequestError) as raised:
        llm.invoke(ask(photo_block()))  # the catalog-playing emulator refuses it inline
    assert raised.value.status_code == 413
    assert catalog.calls() == [("POST", "chat")]


# --- the asset protocol ------------------------------------------------------------


def test_a_photo_over_the_budget_is_uploaded_used_and_deleted(catalog: Catalog) -> None:
    answer = hosted_llm(catalog).invoke(ask(photo_block()))
    assert "image 1: jpeg 800x600 (NVCF asset)" in answer.content
    assert catalog.calls() == [
        ("POST", "create"),
        ("PUT", "upload"),
        ("POST", "chat"),
        ("DELETE", "delete"),
    ]
    chat = catalog.last_chat()
    (asset_id,) = asset_ids(chat)
    assert media_urls(chat["body"]) == [f"data:image/jpeg;asset_id,{asset_id}"]
    assert catalog.live() == []


def test_the_api_key_goes_to_the_asset_api_and_never_to_the_presigned_url(
    catalog: Catalog,
) -> None:
    hosted_llm(catalog).invoke(ask(photo_block()))
    sent = {
        r["method"]: r["authorization_sent"] for r in catalog.records() if "chat" not in r["path"]
    }
    assert sent == {"POST": True, "PUT": False, "DELETE": True}


def test_the_upload_carries_the_content_type_and_description_of_the_create(
    catalog: Catalog,
) -> None:
    hosted_llm(catalog).invoke(ask(photo_block()))
    (put,) = [r for r in catalog.records() if r["method"] == "PUT"]
    assert put["headers"]["content-type"] == "image/jpeg"
    assert put["headers"]["x-amz-meta-nvcf-asset-description"] == f"nemovlm image for {NANO12}"


def test_auto_keeps_media_inline_while_they_fit(catalog: Catalog) -> None:
    answer = hosted_llm(catalog).invoke(ask(photo_block(SMALL)))
    assert "(NVCF asset)" not in answer.content
    assert catalog.calls() == [("POST", "chat")]
    assert media_urls(catalog.last_chat()["body"])[0].startswith("data:image/jpeg;base64,")


def test_auto_uploads_only_what_does_not_fit_beside_the_rest(catalog: Catalog) -> None:
    small_b = make_image(8, 8, "png")
    hosted_llm(catalog).invoke(ask(photo_block(PHOTO), photo_block(small_b, "image/png")))
    urls = media_urls(catalog.last_chat()["body"])
    assert [";asset_id," in u for u in urls] == [True, False]
    assert len(asset_ids(catalog.last_chat())) == 1


def test_two_media_that_fit_alone_but_not_together_go_one_up_one_inline(
    catalog: Catalog,
) -> None:
    other = make_photo(650, 480)
    hosted_llm(catalog).invoke(ask(photo_block(SMALL), photo_block(other)))
    urls = media_urls(catalog.last_chat()["body"])
    assert sorted(";asset_id," in u for u in urls) == [False, True]


def test_upload_mode_uploads_even_a_small_image(catalog: Catalog) -> None:
    hosted_llm(catalog, hosted_media="upload").invoke(
        ask(photo_block(make_image(8, 8, "png"), "image/png"))
    )
    (url,) = media_urls(catalog.last_chat()["body"])
    assert url.startswith("data:image/png;asset_id,")
    assert catalog.live() == []


def test_fit_mode_shrinks_the_photo_inline_and_never_uploads(catalog: Catalog) -> None:
    answer = hosted_llm(catalog, hosted_media="fit").invoke(ask(photo_block()))
    assert catalog.calls() == [("POST", "chat")]
    (url,) = media_urls(catalog.last_chat()["body"])
    assert url.startswith("data:image/jpeg;base64,")
    assert len(url.split(",", 1)[1]) <= 180_000
    assert "(NVCF asset)" not in answer.content


def test_fit_mode_refuses_a_video_it_cannot_shrink_before_any_request(catalog: Catalog) -> None:
    llm = hosted_llm(catalog, hosted_media="fit", profile_overrides={"hosted_inline_budget": 100})
    video = {"type": "video", "base64": b64(MP4), "mime_type": "video/mp4"}
    with pytest.raises(UnsupportedInputError, match="hosted_media='auto'"):
        llm.invoke(ask(video, text="Describe the clip."))
    assert catalog.calls() == []


def test_a_local_video_goes_up_as_a_video_asset(catalog: Catalog) -> None:
    llm = hosted_llm(catalog, profile_overrides={"hosted_inline_budget": 1000})
    video = {"type": "video", "base64": b64(MP4), "mime_type": "video/mp4"}
    answer = llm.invoke(ask(video, text="Describe the clip."))
    (url,) = media_urls(catalog.last_chat()["body"])
    assert url.startswith("data:video/mp4;asset_id,")
    assert "4.0s 320x240" in answer.content and "(NVCF asset)" in answer.content
    assert catalog.live() == []


def test_img_tag_transport_puts_the_asset_id_inside_the_tag(catalog: Catalog) -> None:
    llm = hosted_llm(catalog, model=LLAMA8, image_transport="img_tag")
    answer = llm.invoke(ask(photo_block()))
    content = catalog.last_chat()["body"]["messages"][-1]["content"]
    (asset_id,) = asset_ids(catalog.last_chat())
    assert f'<img src="data:image/jpeg;asset_id,{asset_id}" />' in content
    assert "(NVCF asset)" in answer.content


def test_the_same_image_in_several_turns_is_uploaded_once(catalog: Catalog) -> None:
    messages = [
        *ask(photo_block(), text="What is this?"),
        AIMessage("A receipt."),
        *ask(photo_block(), text="And the total?"),
    ]
    hosted_llm(catalog).invoke(messages)
    assert catalog.calls().count(("POST", "create")) == 1
    (asset_id,) = asset_ids(catalog.last_chat())
    assert media_urls(catalog.last_chat()["body"]) == [f"data:image/jpeg;asset_id,{asset_id}"] * 2


def test_several_uploads_of_one_request_run_concurrently(catalog: Catalog) -> None:
    catalog.barrier(2)  # each upload waits until two are in flight (10 s at most)
    hosted_llm(catalog).invoke(ask(photo_block(PHOTO), photo_block(PHOTO_B)))
    assert catalog.most_uploading() == 2
    assert len(asset_ids(catalog.last_chat())) == 2


async def test_several_async_uploads_of_one_request_run_concurrently(catalog: Catalog) -> None:
    catalog.barrier(2)
    await hosted_llm(catalog).ainvoke(ask(photo_block(PHOTO), photo_block(PHOTO_B)))
    assert catalog.most_uploading() == 2


def test_uploading_needs_a_key_and_says_so_before_any_request(catalog: Catalog) -> None:
    llm = ChatNemoVLM(
        model=NANO12, base_url=catalog.base_url, hosted=True, assets_url=catalog.assets_url
    )
    llm.api_key = None
    with pytest.raises(MissingCredentialsError, match="NVIDIA_API_KEY"):
        llm.invoke(ask(photo_block()))
    assert catalog.calls() == []


# --- errors name the step ----------------------------------------------------------


def test_a_failed_create_names_the_step_and_sends_no_chat(catalog: Catalog) -> None:
    catalog.fail("create", 503)
    with pytest.raises(RequestError, match="Creating an NVCF asset") as raised:
        hosted_llm(catalog).invoke(ask(photo_block()))
    assert raised.value.status_code == 503
    assert "Emulated failure creating the asset" in str(raised.value)
    assert ("POST", "chat") not in catalog.calls()


def test_a_failed_upload_names_the_step_and_deletes_the_created_asset(catalog: Catalog) -> None:
    catalog.fail("upload", 500)
    with pytest.raises(RequestError, match="Uploading the image") as raised:
        hosted_llm(catalog).invoke(ask(photo_block()))
    assert raised.value.status_code == 500
    assert ("POST", "chat") not in catalog.calls()
    assert catalog.live() == []


async def test_a_failed_async_upload_deletes_every_created_asset(catalog: Catalog) -> None:
    catalog.fail("upload", 500)
    with pytest.raises(RequestError, match="Uploading"):
        await hosted_llm(catalog).ainvoke(ask(photo_block(PHOTO), photo_block(PHOTO_B)))
    assert catalog.live() == []
    assert catalog.calls().count(("DELETE", "delete")) == 2


def test_an_unreachable_asset_api_is_an_error_naming_the_step(catalog: Catalog) -> None:
    llm = hosted_llm(catalog, assets_url="http://127.0.0.1:9/v2/nvcf/assets")
    with pytest.raises(RequestError, match="Creating an NVCF asset.*could not reach"):
        llm.invoke(ask(photo_block()))
    assert catalog.calls() == []


def test_a_413_says_to_upload_or_send_a_smaller_image(catalog: Catalog) -> None:
    # The client believes it fits; the catalog's own budget says otherwise.
    llm = hosted_llm(catalog, profile_overrides={"hosted_inline_budget": 10_000_000})
    with pytest.raises(RequestError, match="hosted_media='upload'") as raised:
        llm.invoke(ask(photo_block()))
    assert raised.value.status_code == 413
    assert "smaller images" in str(raised.value)


def test_a_422_for_an_unknown_asset_says_to_check_assets_url(catalog: Catalog) -> None:
    from nemovlm.emulator import start_nim_emulator

    with start_nim_emulator(hosted=True) as elsewhere:  # another account's asset store
        llm = hosted_llm(catalog, assets_url=elsewhere.url + "/v2/nvcf/assets")
        with pytest.raises(RequestError, match="assets_url / NVCF_ASSETS_URL") as raised:
            llm.invoke(ask(photo_block()))
        assert Catalog(elsewhere.url).live() == []
    assert raised.value.status_code == 422
    assert "does not exist" in str(raised.value)


def test_a_delete_that_fails_is_a_warning_naming_the_asset(catalog: Catalog) -> None:
    catalog.fail("delete", 500)
    with pytest.warns(AssetCleanupWarning, match="24 hours"):
        answer = hosted_llm(catalog).invoke(ask(photo_block()))
    assert "(NVCF asset)" in answer.content
    httpx_delete_leftovers(catalog)


LONG_KEY = "nvapi-" + "k7" * 30


def test_an_asset_api_echoing_the_key_in_a_401_does_not_leak_it(catalog: Catalog) -> None:
    catalog.fail("create", 401)
    llm = hosted_llm(catalog, api_key=LONG_KEY)
    with pytest.raises(RequestError, match="Creating an NVCF asset") as raised:
        llm.invoke(ask(photo_block()))
    assert "was refused" in str(raised.value) and "**********" in str(raised.value)
    assert LONG_KEY not in everything_about(raised.value)


async def test_an_async_asset_api_echoing_the_key_in_a_401_does_not_leak_it(
    catalog: Catalog,
) -> None:
    catalog.fail("create", 401)
    llm = hosted_llm(catalog, api_key=LONG_KEY)
    with pytest.raises(RequestError, match="was refused") as raised:
        await llm.ainvoke(ask(photo_block()))
    assert LONG_KEY not in everything_about(raised.value)


def test_a_delete_refused_with_the_key_echoed_warns_without_the_key(catalog: Catalog) -> None:
    catalog.fail("delete", 401)
    with pytest.warns(AssetCleanupWarning, match="was refused") as caught:
        hosted_llm(catalog, api_key=LONG_KEY).invoke(ask(photo_block()))
    assert all(LONG_KEY not in str(w.message) for w in caught)
    httpx_delete_leftovers(catalog)


def everything_about(error: BaseException) -> str:
    """An exception as a user or a log would see it: message, repr, chain, traceback."""
    import traceback

    chain = []
    seen: BaseException | None = error
    while seen is not None:
        chain += [str(seen), repr(seen), repr(getattr(seen, "__dict__", {}))]
        seen = seen.__cause__ or seen.__context__
    return "\n".join([*chain, *traceback.format_exception(error)])


def httpx_delete_leftovers(catalog: Catalog) -> None:
    import httpx

    for asset in catalog.live():
        httpx.delete(
            f"{catalog.assets_url}/{asset['assetId']}", headers={"Authorization": f"Bearer {KEY}"}
        )
    assert catalog.live() == []


# --- no asset outlives its call ------------------------------------------------------


def test_assets_are_deleted_after_a_server_error(catalog: Catalog) -> None:
    llm = hosted_llm(catalog, default_headers={"X-Emulator-Fault": "500"})
    with pytest.raises(RequestError) as raised:
        llm.invoke(ask(photo_block()))
    assert raised.value.status_code == 500
    assert ("POST", "chat") in catalog.calls()
    assert catalog.live() == []


def test_assets_are_deleted_after_an_exception_in_our_code(catalog: Catalog) -> None:
    llm = hosted_llm(catalog, default_headers={"X-Emulator-Fault": "no_choices"})
    with pytest.raises(IncompleteResponseError):
        llm.invoke(ask(photo_block()))
    assert catalog.live() == []


def test_assets_are_deleted_after_a_stream(catalog: Catalog) -> None:
    chunks = list(hosted_llm(catalog).stream(ask(photo_block())))
    assert "(NVCF asset)" in "".join(str(c.content) for c in chunks)
    assert catalog.live() == []


def test_a_stream_closed_early_deletes_its_assets(catalog: Catalog) -> None:
    llm = hosted_llm(catalog, default_headers={"X-Emulator-Chunk-Size": "1"})
    stream = llm.stream(ask(photo_block()))
    next(stream)
    assert len(catalog.live()) == 1
    stream.close()  # type: ignore[attr-defined]
    assert catalog.live() == []


def test_an_abandoned_stream_deletes_its_assets(catalog: Catalog) -> None:
    llm = hosted_llm(catalog, default_headers={"X-Emulator-Chunk-Size": "1"})
    stream = llm.stream(ask(photo_block()))
    next(stream)
    del stream
    gc.collect()
    assert catalog.live(wait_empty=20) == []


async def test_assets_are_deleted_after_an_async_call(catalog: Catalog) -> None:
    answer = await hosted_llm(catalog).ainvoke(ask(photo_block()))
    assert "(NVCF asset)" in answer.content
    assert catalog.live() == []


async def test_assets_are_deleted_after_an_async_server_error(catalog: Catalog) -> None:
    llm = hosted_llm(catalog, default_headers={"X-Emulator-Fault": "500"})
    with pytest.raises(RequestError):
        await llm.ainvoke(ask(photo_block()))
    assert catalog.live() == []


async def test_cancelling_the_task_mid_call_deletes_its_assets(catalog: Catalog) -> None:
    catalog.hold()  # the chat request waits at the emulator until released
    task = asyncio.create_task(hosted_llm(catalog).ainvoke(ask(photo_block())))
    assert await asyncio.to_thread(catalog.wait_held) == 1
    assert len(catalog.live()) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert catalog.live() == []


async def test_cancelling_the_task_mid_upload_deletes_the_created_asset(catalog: Catalog) -> None:
    catalog.barrier(2)  # the one upload waits at the emulator for a second that never comes
    task = asyncio.create_task(hosted_llm(catalog).ainvoke(ask(photo_block())))
    assert await asyncio.to_thread(catalog.wait_uploading) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert catalog.live() == []
    assert ("POST", "chat") not in catalog.calls()


async def test_cancelling_an_async_stream_mid_call_deletes_its_assets(catalog: Catalog) -> None:
    catalog.hold()

    async def consume() -> None:
        async for _ in hosted_llm(catalog).astream(ask(photo_block())):
            pass

    task = asyncio.create_task(consume())
    assert await asyncio.to_thread(catalog.wait_held) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert catalog.live() == []


async def test_an_async_stream_closed_early_deletes_its_assets(catalog: Catalog) -> None:
    llm = hosted_llm(catalog, default_headers={"X-Emulator-Chunk-Size": "1"})
    stream = llm.astream(ask(photo_block()))
    await stream.__anext__()
    assert len(catalog.live()) == 1
    await stream.aclose()  # type: ignore[attr-defined]
    # LangChain's astream does not close the generator it iterates, so ours is closed
    # by the event loop (its dropped-async-generator hook) in a task right after.
    assert await asyncio.to_thread(catalog.live, 20) == []


async def test_an_abandoned_async_stream_deletes_its_assets(catalog: Catalog) -> None:
    llm = hosted_llm(catalog, default_headers={"X-Emulator-Chunk-Size": "1"})
    stream = llm.astream(ask(photo_block()))
    await stream.__anext__()
    del stream
    gc.collect()
    # The event loop closes a dropped async generator in a task of its own.
    assert await asyncio.to_thread(catalog.live, 20) == []


# --- the catalog's message rules ---------------------------------------------------


def test_system_messages_merge_into_one_first_message(catalog: Catalog) -> None:
    messages = [
        SystemMessage("Be brief."),
        HumanMessage("Hi"),
        SystemMessage("Answer in English."),
        HumanMessage("What now?"),
    ]
    hosted_llm(catalog).invoke(messages)
    sent = catalog.last_chat()["body"]["messages"]
    assert [m["role"] for m in sent] == ["system", "user"]
    assert sent[0]["content"] == "Be brief.\n\nAnswer in English."


def test_consecutive_messages_of_one_role_merge_so_roles_alternate(catalog: Catalog) -> None:
    messages = [
        HumanMessage("First."),
        HumanMessage(content=[{"type": "text", "text": "Second."}, photo_block(SMALL)]),
        AIMessage("One."),
        AIMessage("Two."),
        HumanMessage("Third."),
    ]
    hosted_llm(catalog).invoke(messages)
    sent = catalog.last_chat()["body"]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert [p["type"] for p in sent[0]["content"]] == ["text", "text", "text", "image_url"]
    assert sent[1]["content"] == "One.\n\nTwo."


def test_system_and_assistant_content_go_as_strings(catalog: Catalog) -> None:
    messages = [
        SystemMessage(content=[{"type": "text", "text": "Be brief."}]),
        HumanMessage("Hi"),
        AIMessage(content=[{"type": "text", "text": "Hello."}]),
        HumanMessage("Bye"),
    ]
    hosted_llm(catalog).invoke(messages)
    sent = catalog.last_chat()["body"]["messages"]
    assert [type(m["content"]) for m in sent] == [str, str, str, str]


def test_the_message_rules_apply_on_the_catalog_only(catalog: Catalog, nim_url: str) -> None:
    from conftest import WireLog

    wire = WireLog(nim_url.removesuffix("/v1"))
    wire.clear()
    messages = [HumanMessage("First."), HumanMessage("Second.")]
    ChatNemoVLM(model=NANO12, base_url=nim_url).invoke(messages)
    assert [m["role"] for m in wire.last()["messages"]] == ["user", "user"]


# --- the emulator plays the catalog ------------------------------------------------


def emulator_client(catalog: Catalog) -> openai.OpenAI:
    return openai.OpenAI(base_url=catalog.base_url, api_key=KEY, max_retries=0)


def test_the_emulator_refuses_an_asset_not_listed_in_the_header(catalog: Catalog) -> None:
    asset_id = upload_by_hand(catalog)
    with pytest.raises(openai.UnprocessableEntityError, match="not listed"):
        emulator_client(catalog).chat.completions.create(
            model=NANO12, messages=[image_message(asset_id)]
        )
    delete_by_hand(catalog, asset_id)


def test_the_emulator_refuses_an_asset_created_but_not_uploaded(catalog: Catalog) -> None:
    import httpx

    created = httpx.post(
        catalog.assets_url,
        json={"contentType": "image/jpeg", "description": "d"},
        headers={"Authorization": f"Bearer {KEY}"},
    ).json()
    with pytest.raises(openai.UnprocessableEntityError, match="never uploaded"):
        emulator_client(catalog).chat.completions.create(
            model=NANO12,
            messages=[image_message(created["assetId"])],
            extra_headers={"NVCF-INPUT-ASSET-REFERENCES": created["assetId"]},
        )
    delete_by_hand(catalog, created["assetId"])


def test_the_emulator_takes_an_asset_latency_from_0_to_60_seconds(catalog: Catalog) -> None:
    import httpx

    hook = f"{catalog.url}/emulator/assets/latency"
    refused = httpx.post(hook, json={"seconds": -1})
    taken = httpx.post(hook, json={"seconds": 0})

    assert refused.status_code == 400
    assert "'seconds' must be a number from 0 to 60" in refused.json()["detail"]
    assert taken.json() == {"latency": 0.0}


def test_the_emulators_presigned_url_refuses_an_api_key(catalog: Catalog) -> None:
    import httpx

    created = httpx.post(
        catalog.assets_url,
        json={"contentType": "image/jpeg", "description": "d"},
        headers={"Authorization": f"Bearer {KEY}"},
    ).json()
    put = httpx.put(
        created["uploadUrl"],
        content=PHOTO,
        headers={
            "Content-Type": "image/jpeg",
            "x-amz-meta-nvcf-asset-description": "d",
            "Authorization": f"Bearer {KEY}",
        },
    )
    assert put.status_code == 400 and "Only one auth mechanism" in put.text
    delete_by_hand(catalog, created["assetId"])


def test_the_emulators_presigned_url_expires_after_an_hour(catalog: Catalog) -> None:
    import httpx

    created = httpx.post(
        catalog.assets_url,
        json={"contentType": "image/jpeg", "description": "d"},
        headers={"Authorization": f"Bearer {KEY}"},
    ).json()
    catalog.advance(3601)
    put = httpx.put(
        created["uploadUrl"],
        content=PHOTO,
        headers={"Content-Type": "image/jpeg", "x-amz-meta-nvcf-asset-description": "d"},
    )
    assert put.status_code == 403 and "expired" in put.text
    delete_by_hand(catalog, created["assetId"])


def test_the_emulator_deletes_assets_after_24_hours(catalog: Catalog) -> None:
    asset_id = upload_by_hand(catalog)
    assert [a["assetId"] for a in catalog.live()] == [asset_id]
    catalog.advance(24 * 3600 + 1)
    assert catalog.live() == []
    with pytest.raises(openai.UnprocessableEntityError, match="does not exist"):
        emulator_client(catalog).chat.completions.create(
            model=NANO12,
            messages=[image_message(asset_id)],
            extra_headers={"NVCF-INPUT-ASSET-REFERENCES": asset_id},
        )


def test_the_emulator_refuses_a_system_message_that_is_not_first(catalog: Catalog) -> None:
    with pytest.raises(openai.UnprocessableEntityError, match="very first message"):
        emulator_client(catalog).chat.completions.create(
            model=NANO12,
            messages=[{"role": "user", "content": "hi"}, {"role": "system", "content": "be brief"}],
        )


def test_the_emulator_refuses_two_user_messages_in_a_row(catalog: Catalog) -> None:
    with pytest.raises(openai.UnprocessableEntityError, match="alternating"):
        emulator_client(catalog).chat.completions.create(
            model=NANO12,
            messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
        )


def test_the_emulator_refuses_assistant_content_as_a_list(catalog: Catalog) -> None:
    with pytest.raises(openai.UnprocessableEntityError, match="object list format"):
        emulator_client(catalog).chat.completions.create(
            model=NANO12,
            messages=[
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": [{"type": "text", "text": "b"}]},
                {"role": "user", "content": "c"},
            ],
        )


def test_the_emulator_answers_413_over_the_inline_budget(catalog: Catalog) -> None:
    url = "data:image/jpeg;base64," + b64(PHOTO)
    with pytest.raises(openai.APIStatusError, match="limit") as raised:
        emulator_client(catalog).chat.completions.create(
            model=NANO12,
            messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
            ],
        )
    assert raised.value.status_code == 413


def image_message(asset_id: str) -> Any:
    url = f"data:image/jpeg;asset_id,{asset_id}"
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}


def upload_by_hand(catalog: Catalog) -> str:
    import httpx

    created = httpx.post(
        catalog.assets_url,
        json={"contentType": "image/jpeg", "description": "by hand"},
        headers={"Authorization": f"Bearer {KEY}"},
    ).json()
    httpx.put(
        created["uploadUrl"],
        content=PHOTO,
        headers={"Content-Type": "image/jpeg", "x-amz-meta-nvcf-asset-description": "by hand"},
    ).raise_for_status()
    asset_id: str = created["assetId"]
    return asset_id


def delete_by_hand(catalog: Catalog, asset_id: str) -> None:
    import httpx

    httpx.delete(f"{catalog.assets_url}/{asset_id}", headers={"Authorization": f"Bearer {KEY}"})
