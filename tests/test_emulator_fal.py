"""The fal emulator, driven through the real fal-client over TLS.

Grouped: the queue protocol, uploads, auth, each refused input (422), the apps'
answers (Omni reasoning, length, the prompt protocol) and injected faults.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import fal_client
import httpx
import pytest
from PIL import Image

from nemovlm.emulator.fal import (
    BROKEN_TOOL_CALL,
    FalEmulator,
    use_fal_emulator,
)
from nemovlm.samples import make_mp4

DIFFUSION_APP = "fal-ai/nemotron-diffusion-vlm"
OMNI_APP = "nvidia/nemotron-3-nano-omni/video"
FAST = 0.01  # poll interval: the emulator is local


@pytest.fixture(scope="module")
def emulator() -> Iterator[FalEmulator]:
    with use_fal_emulator() as emu:
        yield emu


@pytest.fixture(scope="module")
def client(emulator: FalEmulator) -> fal_client.SyncClient:
    return fal_client.SyncClient(key="test-key")


def png(width: int = 64, height: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


IMAGE = data_url(png(), "image/png")


def diffusion(**extra: Any) -> dict[str, Any]:
    return {"image_url": IMAGE, "prompt": "What is in the picture?", **extra}


def refused(client: fal_client.SyncClient, app: str, arguments: dict[str, Any]) -> list[Any]:
    with pytest.raises(fal_client.FalClientHTTPError) as info:
        client.subscribe(app, arguments, interval=FAST)
    assert info.value.status_code == 422
    detail = info.value.message
    assert isinstance(detail, list)
    return detail


# --- the queue protocol ----------------------------------------------------------------


def test_subscribe_answers_with_what_the_app_saw_and_says_it_is_an_emulator(
    client: fal_client.SyncClient,
) -> None:
    result = client.subscribe(DIFFUSION_APP, diffusion(), interval=FAST)
    assert result["output"] == (
        "[nemovlm emulator] fal-ai/nemotron-diffusion-vlm saw png 64x48 (data URL); "
        "prompt: 'What is in the picture?'"
    )


def test_diffusion_result_carries_usage_with_the_steps_used_and_timings(
    client: fal_client.SyncClient,
) -> None:
    result = client.subscribe(DIFFUSION_APP, diffusion(), interval=FAST)
    usage = result["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert (usage["num_inference_steps"], usage["block_length"]) == (256, 32)
    assert set(result["timings"]) == {"preprocess", "inference", "total"}


def test_a_request_is_queued_then_in_progress_with_logs_then_completed(
    client: fal_client.SyncClient,
) -> None:
    updates: list[fal_client.Status] = []
    client.subscribe(
        DIFFUSION_APP, diffusion(), with_logs=True, on_queue_update=updates.append, interval=FAST
    )
    assert [type(u).__name__ for u in updates] == ["Queued", "InProgress", "Completed"]
    queued, in_progress, completed = updates
    assert isinstance(queued, fal_client.Queued) and queued.position == 0
    assert isinstance(in_progress, fal_client.InProgress)
    assert in_progress.logs and "runner picked up" in in_progress.logs[0]["message"]
    assert isinstance(completed, fal_client.Completed) and completed.error is None
    assert "inference_time" in completed.metrics


def test_status_polled_without_logs_carries_none(client: fal_client.SyncClient) -> None:
    handle = client.submit(DIFFUSION_APP, diffusion())
    handle.status()
    in_progress = handle.status(with_logs=False)
    assert isinstance(in_progress, fal_client.InProgress) and in_progress.logs is None


def test_submit_returns_urls_under_owner_and_alias_without_the_subpath(
    client: fal_client.SyncClient, emulator: FalEmulator
) -> None:
    handle = client.submit(OMNI_APP, {"prompt": "hi", "video_url": "https://x.test/v.mp4"})
    expected = f"{emulator.url}/nvidia/nemotron-3-nano-omni/requests/{handle.request_id}"
    assert (handle.response_url, handle.status_url) == (expected, expected + "/status")
    assert handle.cancel_url == expected + "/cancel"


def test_result_can_be_fetched_later_by_request_id(client: fal_client.SyncClient) -> None:
    handle = client.submit(DIFFUSION_APP, diffusion(prompt="later"))
    result = client.result(DIFFUSION_APP, handle.request_id)
    assert result["output"].endswith("prompt: 'later'")


async def test_async_client_subscribes_too(emulator: FalEmulator) -> None:
    client = fal_client.AsyncClient(key="test-key")
    result = await client.subscribe(DIFFUSION_APP, diffusion(prompt="async"), interval=FAST)
    assert result["output"].endswith("prompt: 'async'")


def test_run_answers_synchronously(client: fal_client.SyncClient) -> None:
    result = client.run(DIFFUSION_APP, diffusion(prompt="now"))
    assert result["output"].endswith("prompt: 'now'")


def test_an_unknown_app_is_404(client: fal_client.SyncClient) -> None:
    with pytest.raises(fal_client.FalClientHTTPError) as info:
        client.submit("fal-ai/no-such-app", {"prompt": "x"})
    assert info.value.status_code == 404


def test_cancelling_a_queued_request_completes_it_with_an_error(
    client: fal_client.SyncClient,
) -> None:
    handle = client.submit(DIFFUSION_APP, diffusion())
    handle.cancel()
    status = handle.status()
    assert isinstance(status, fal_client.Completed)
    assert status.error == "Request was cancelled"
    with pytest.raises(fal_client.FalClientHTTPError):
        handle.get(interval=FAST)


def test_cancelling_a_completed_request_is_refused(client: fal_client.SyncClient) -> None:
    handle = client.submit(DIFFUSION_APP, diffusion())
    handle.get(interval=FAST)
    with pytest.raises(fal_client.FalClientHTTPError) as info:
        handle.cancel()
    assert info.value.status_code == 400


def test_a_client_timeout_cancels_a_slow_request(
    client: fal_client.SyncClient, emulator: FalEmulator
) -> None:
    emulator.inject_fault("slow")
    with pytest.raises(fal_client.FalClientTimeoutError) as info:
        client.subscribe(DIFFUSION_APP, diffusion(), interval=FAST, client_timeout=1.1)
    request_id = info.value.request_id
    assert request_id is not None and emulator.state.requests[request_id].cancelled


# --- uploads -----------------------------------------------------------------------------


def test_an_upload_is_served_back_at_the_url_it_returns(
    client: fal_client.SyncClient, emulator: FalEmulator
) -> None:
    url = client.upload(b"hello bytes", "text/plain", file_name="hello.txt")
    assert url.startswith(emulator.url) and url.endswith("/hello.txt")
    import ssl

    trust = ssl.create_default_context(cafile=str(emulator.ca_bundle))
    response = httpx.get(url, verify=trust)
    assert response.content == b"hello bytes"
    assert response.headers["content-type"].startswith("text/plain")


def test_the_app_reads_an_uploaded_image(client: fal_client.SyncClient, tmp_path: Any) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(png(32, 20))
    url = client.upload_file(path)
    result = client.subscribe(DIFFUSION_APP, diffusion(image_url=url), interval=FAST)
    assert "saw png 32x20 (uploaded file photo.png)" in result["output"]


def test_the_storage_fallback_upload_also_works(client: fal_client.SyncClient) -> None:
    url = client.upload(png(10, 10), "image/png", "small.png", repository="fal")
    result = client.subscribe(DIFFUSION_APP, diffusion(image_url=url), interval=FAST)
    assert "saw png 10x10 (uploaded file small.png)" in result["output"]


def test_a_remote_url_is_described_not_fetched(client: fal_client.SyncClient) -> None:
    args = diffusion(image_url="https://example.invalid/dog.png")
    result = client.subscribe(DIFFUSION_APP, args, interval=FAST)
    assert "remote URL https://example.invalid/dog.png, not fetched" in result["output"]


# --- auth --------------------------------------------------------------------------------


def test_a_request_without_a_key_is_401(emulator: FalEmulator) -> None:
    import ssl

    trust = ssl.create_default_context(cafile=str(emulator.ca_bundle))
    response = httpx.post(f"{emulator.url}/{DIFFUSION_APP}", json=diffusion(), verify=trust)
    assert response.status_code == 401
    assert "Authorization: Key" in response.json()["detail"]


def test_a_key_the_emulator_does_not_accept_is_401(emulator: FalEmulator) -> None:
    before = emulator.state.settings
    emulator.state.settings = replace(before, api_keys=frozenset({"the-right-key"}))
    try:
        with pytest.raises(fal_client.FalClientHTTPError) as info:
            fal_client.SyncClient(key="a-wrong-key").submit(DIFFUSION_APP, diffusion())
        assert info.value.status_code == 401
        accepted = fal_client.SyncClient(key="the-right-key").submit(DIFFUSION_APP, diffusion())
        assert accepted.request_id
    finally:
        emulator.state.settings = before


# --- refused inputs: 422 with FastAPI's detail list ---------------------------------------

DIFFUSION_REFUSALS = {
    "missing prompt": ({"image_url": IMAGE}, "prompt", "missing"),
    "missing image_url": ({"prompt": "hi"}, "image_url", "missing"),
    "max_tokens 0": (diffusion(max_tokens=0), "max_tokens", "greater_than_equal"),
    "max_tokens 8193": (diffusion(max_tokens=8193), "max_tokens", "less_than_equal"),
    "num_inference_steps 0": (
        diffusion(num_inference_steps=0),
        "num_inference_steps",
        "greater_than_equal",
    ),
    "num_inference_steps 1025": (
        diffusion(num_inference_steps=1025),
        "num_inference_steps",
        "less_than_equal",
    ),
    "inference_steps 1025": (
        diffusion(inference_steps=1025),
        "inference_steps",
        "less_than_equal",
    ),
    "block_length 7": (diffusion(block_length=7), "block_length", "greater_than_equal"),
    "block_length 129": (diffusion(block_length=129), "block_length", "less_than_equal"),
    "threshold -0.1": (diffusion(threshold=-0.1), "threshold", "greater_than_equal"),
    "threshold 1.5": (diffusion(threshold=1.5), "threshold", "less_than_equal"),
    "steps not divisible": (
        diffusion(num_inference_steps=100),
        "num_inference_steps",
        "value_error",
    ),
    "steps below blocks": (
        diffusion(max_tokens=1024, block_length=8, num_inference_steps=64),
        "num_inference_steps",
        "value_error",
    ),
    "alias steps not divisible": (
        diffusion(inference_steps=100),
        "inference_steps",
        "value_error",
    ),
}


@pytest.mark.parametrize(
    ("arguments", "field", "kind"), DIFFUSION_REFUSALS.values(), ids=DIFFUSION_REFUSALS.keys()
)
def test_diffusion_refuses_each_invalid_input_with_422(
    client: fal_client.SyncClient, arguments: dict[str, Any], field: str, kind: str
) -> None:
    detail = refused(client, DIFFUSION_APP, arguments)
    assert [(d["loc"], d["type"]) for d in detail] == [(["body", field], kind)]


def test_the_step_rule_error_names_both_numbers(client: fal_client.SyncClient) -> None:
    detail = refused(client, DIFFUSION_APP, diffusion(num_inference_steps=100))
    assert "num_inference_steps=100" in detail[0]["msg"] and "16 blocks" in detail[0]["msg"]


def test_explicit_steps_that_satisfy_the_rule_are_used(client: fal_client.SyncClient) -> None:
    args = diffusion(max_tokens=64, block_length=8, num_inference_steps=24)
    result = client.subscribe(DIFFUSION_APP, args, interval=FAST)
    assert result["usage"]["num_inference_steps"] == 24


@pytest.mark.parametrize(
    ("max_tokens", "block_length", "steps"), [(8192, 8, 1024), (1000, 8, 375), (512, 32, 256)]
)
def test_omitted_steps_default_to_256_rounded_up_to_fit_the_blocks(
    client: fal_client.SyncClient, max_tokens: int, block_length: int, steps: int
) -> None:
    args = diffusion(max_tokens=max_tokens, block_length=block_length)
    result = client.subscribe(DIFFUSION_APP, args, interval=FAST)
    assert result["usage"]["num_inference_steps"] == steps


def test_an_image_that_does_not_decode_is_422(client: fal_client.SyncClient) -> None:
    detail = refused(client, DIFFUSION_APP, diffusion(image_url=data_url(b"nope", "image/png")))
    assert detail[0]["loc"] == ["body", "image_url"]


def omni(**extra: Any) -> dict[str, Any]:
    return {"prompt": "What happens?", "video_url": "https://example.invalid/v.mp4", **extra}


OMNI_REFUSALS = {
    "missing prompt": ({"video_url": "https://x.test/v.mp4"}, "prompt", "missing"),
    "missing video_url": ({"prompt": "hi"}, "video_url", "missing"),
    "max_tokens 0": (omni(max_tokens=0), "max_tokens", "greater_than_equal"),
    "max_tokens 20001": (omni(max_tokens=20_001), "max_tokens", "less_than_equal"),
    "temperature -0.5": (omni(temperature=-0.5), "temperature", "greater_than_equal"),
    "temperature 2.5": (omni(temperature=2.5), "temperature", "less_than_equal"),
    "top_p 1.5": (omni(top_p=1.5), "top_p", "less_than_equal"),
    "reasoning_mode maybe": (omni(reasoning_mode="maybe"), "reasoning_mode", "literal_error"),
}


@pytest.mark.parametrize(
    ("arguments", "field", "kind"), OMNI_REFUSALS.values(), ids=OMNI_REFUSALS.keys()
)
def test_omni_refuses_each_invalid_input_with_422(
    client: fal_client.SyncClient, arguments: dict[str, Any], field: str, kind: str
) -> None:
    detail = refused(client, OMNI_APP, arguments)
    assert [(d["loc"], d["type"]) for d in detail] == [(["body", field], kind)]


def test_omni_reads_a_video_sent_as_a_data_url(client: fal_client.SyncClient) -> None:
    video = data_url(make_mp4(duration_s=2.0, width=64, height=48), "video/mp4")
    output = client.subscribe(OMNI_APP, omni(video_url=video), interval=FAST)["output"]
    assert "saw mp4 64x48, 2.0 s (data URL)" in output


def test_omni_reads_an_uploaded_video(client: fal_client.SyncClient) -> None:
    url = client.upload(make_mp4(duration_s=3.0, width=640, height=360), "video/mp4", "clip.mp4")
    output = client.subscribe(OMNI_APP, omni(video_url=url), interval=FAST)["output"]
    assert "saw mp4 640x360, 3.0 s (uploaded file clip.mp4)" in output


def test_omni_takes_a_portrait_1080p_video(client: fal_client.SyncClient) -> None:
    video = data_url(make_mp4(duration_s=1.0, width=1080, height=1920), "video/mp4")
    output = client.subscribe(OMNI_APP, omni(video_url=video), interval=FAST)["output"]
    assert "saw mp4 1080x1920" in output


@pytest.mark.parametrize(
    ("video", "words"),
    [
        (make_mp4(duration_s=121.0, width=64, height=48), "the maximum is 2 minutes"),
        (make_mp4(duration_s=1.0, width=2560, height=1440), "the maximum is 1080p"),
        (b"\x89PNG\r\n\x1a\n not a video", "not a readable mp4"),
    ],
    ids=["over 2 minutes", "above 1080p", "not an mp4"],
)
def test_omni_refuses_a_video_it_cannot_take(
    client: fal_client.SyncClient, video: bytes, words: str
) -> None:
    detail = refused(client, OMNI_APP, omni(video_url=data_url(video, "video/mp4")))
    assert detail[0]["loc"] == ["body", "video_url"] and words in detail[0]["msg"]


def test_a_failed_validation_shows_as_a_completed_request_with_an_error(
    client: fal_client.SyncClient,
) -> None:
    handle = client.submit(OMNI_APP, omni(top_p=2))
    statuses = list(handle.iter_events(interval=FAST))
    final = statuses[-1]
    assert isinstance(final, fal_client.Completed)
    assert final.error_type == "validation_error" and final.error


# --- the Omni app's answers ----------------------------------------------------------------


def test_omni_no_think_answers_directly_with_finish_reason_and_usage(
    client: fal_client.SyncClient,
) -> None:
    result = client.subscribe(OMNI_APP, omni(system_prompt="Be brief."), interval=FAST)
    assert result["output"].startswith("[nemovlm emulator] nvidia/nemotron-3-nano-omni/video saw")
    assert "system prompt: 'Be brief.'" in result["output"] and "<think>" not in result["output"]
    assert result["finish_reason"] == "stop"
    assert set(result["usage"]) == {"input_tokens", "output_tokens"}


def test_omni_think_mode_puts_reasoning_in_think_tags_before_the_answer(
    client: fal_client.SyncClient,
) -> None:
    output = client.subscribe(OMNI_APP, omni(reasoning_mode="think"), interval=FAST)["output"]
    reasoning, _, answer = output.partition("\n</think>\n\n")
    assert reasoning.startswith("<think>\n[nemovlm emulator] reasoning:")
    assert answer.startswith("[nemovlm emulator] nvidia/nemotron-3-nano-omni/video saw")


def test_omni_can_emit_only_the_closing_think_tag(
    client: fal_client.SyncClient, emulator: FalEmulator
) -> None:
    before = emulator.state.settings
    emulator.state.settings = replace(before, think_tags="close_only")
    try:
        output = client.subscribe(OMNI_APP, omni(reasoning_mode="think"), interval=FAST)["output"]
    finally:
        emulator.state.settings = before
    assert output.startswith("[nemovlm emulator] reasoning:") and "\n</think>\n\n" in output


def test_omni_stops_for_length_when_max_tokens_is_tiny(client: fal_client.SyncClient) -> None:
    result = client.subscribe(OMNI_APP, omni(max_tokens=3), interval=FAST)
    assert result["finish_reason"] == "length"
    assert result["usage"]["output_tokens"] == 3 and len(result["output"]) == 12


# --- the prompt protocol ---------------------------------------------------------------------

WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "detailed": {"type": "boolean"},
            "note": {"type": "string"},
        },
        "required": ["city", "days", "unit", "detailed"],
    },
}
CLOCK = {"name": "get_time", "description": "Time", "parameters": {"type": "object"}}


def tool_prompt(choice: str, question: str = "Weather in Paris") -> str:
    return (
        f"<tools>\n{json.dumps([WEATHER, CLOCK])}\n</tools>\n"
        f"<tool_choice>{choice}</tool_choice>\nuser: {question}"
    )


def test_a_tool_prompt_gets_exactly_a_tool_call_built_from_the_required_properties(
    client: fal_client.SyncClient,
) -> None:
    result = client.subscribe(DIFFUSION_APP, diffusion(prompt=tool_prompt("auto")), interval=FAST)
    assert json.loads(result["output"]) == {
        "tool_calls": [
            {
                "name": "get_weather",
                "arguments": {
                    "city": "Paris",  # strings come from the prompt's own words
                    "days": 1,
                    "unit": "celsius",
                    "detailed": True,
                },
            }
        ]
    }


def test_a_named_tool_choice_calls_that_tool(client: fal_client.SyncClient) -> None:
    result = client.subscribe(OMNI_APP, omni(system_prompt=tool_prompt("get_time")), interval=FAST)
    assert json.loads(result["output"]) == {"tool_calls": [{"name": "get_time", "arguments": {}}]}


def test_tool_choice_none_gets_a_plain_answer(client: fal_client.SyncClient) -> None:
    result = client.subscribe(DIFFUSION_APP, diffusion(prompt=tool_prompt("none")), interval=FAST)
    assert result["output"].startswith("[nemovlm emulator]")


def test_a_prompt_with_a_tool_result_gets_a_plain_answer(client: fal_client.SyncClient) -> None:
    prompt = tool_prompt("auto") + '\n<tool_result name="get_weather">\nSunny\n</tool_result>'
    result = client.subscribe(DIFFUSION_APP, diffusion(prompt=prompt), interval=FAST)
    assert result["output"].startswith("[nemovlm emulator]") and "Sunny" in result["output"]


def test_a_json_schema_prompt_gets_an_object_synthesised_from_it(
    client: fal_client.SyncClient,
) -> None:
    schema = {
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "score": {"type": "number"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "meta": {"type": "object"},
            "kind": {"$ref": "#/$defs/Kind"},
        },
        "required": ["title", "score", "tags", "meta", "kind"],
        "$defs": {"Kind": {"enum": ["cat", "dog"]}},
    }
    prompt = f"<json_schema>\n{json.dumps(schema)}\n</json_schema>\nDescribe it"
    result = client.subscribe(DIFFUSION_APP, diffusion(prompt=prompt), interval=FAST)
    assert json.loads(result["output"]) == {
        "title": "it",
        "score": 1.5,
        "tags": [],
        "meta": {},
        "kind": "cat",
    }


# --- injected faults ---------------------------------------------------------------------------


def test_an_injected_failure_makes_the_result_a_500(
    client: fal_client.SyncClient, emulator: FalEmulator
) -> None:
    emulator.inject_fault("failed")
    with pytest.raises(fal_client.FalClientHTTPError) as info:
        client.subscribe(DIFFUSION_APP, diffusion(), interval=FAST)
    assert info.value.status_code == 500 and "injected failure" in info.value.message


def test_an_injected_422_is_a_validation_error(
    client: fal_client.SyncClient, emulator: FalEmulator
) -> None:
    emulator.inject_fault("422")
    detail = refused(client, DIFFUSION_APP, diffusion())
    assert "injected validation error" in detail[0]["msg"]


def test_a_fault_marker_in_the_prompt_works_like_an_injected_fault(
    client: fal_client.SyncClient,
) -> None:
    with pytest.raises(fal_client.FalClientHTTPError) as info:
        client.subscribe(
            DIFFUSION_APP, diffusion(prompt="[emulator-fault:failed] hi"), interval=FAST
        )
    assert info.value.status_code == 500


def test_an_injected_bad_json_fault_cuts_the_output_mid_tool_call(
    client: fal_client.SyncClient, emulator: FalEmulator
) -> None:
    emulator.inject_fault("bad_json")
    result = client.subscribe(DIFFUSION_APP, diffusion(), interval=FAST)
    assert result["output"] == BROKEN_TOOL_CALL
