"""Idioms users bring from the ``openai`` SDK, ``ChatOpenAI`` and ``OpenAILike``, at the
core: the NIM backend over real HTTP to the emulator (adapters build on these).

Grouped as: errors are also the SDK's; several choices and logprobs; extra_body;
JSON mode; strict tools; reasoning=False everywhere; near-miss model ids; offline
token estimates.
"""

from __future__ import annotations

import json
import pickle
import socket
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from pydantic import SecretStr

from nemovlm.backends.fal import FalBackend
from nemovlm.backends.nim import NIMBackend
from nemovlm.emulator.fal import FalEmulator, use_fal_emulator
from nemovlm.errors import (
    IncompleteResponseError,
    RateLimitError,
    RequestError,
    RequestTimeoutError,
)
from nemovlm.messages import MediaPart, TextPart, ToolSpec, Turn
from nemovlm.options import RequestOptions, build_options
from nemovlm.profiles import get_profile
from nemovlm.tokens import estimate_text_tokens, estimate_tokens, image_tokens
from tests.conftest import WireLog

NANO_8B = "nvidia/llama-3.1-nemotron-nano-vl-8b-v1"
NANO_12B = "nvidia/nemotron-nano-12b-v2-vl"
GEMMA = "google/diffusiongemma-26b-a4b-it"
OTHER = "acme/some-new-vlm"
DIFFUSION = "fal-ai/nemotron-diffusion-vlm"


def backend(url: str, model: str = NANO_12B, **settings: Any) -> NIMBackend:
    return NIMBackend(get_profile(model), url, max_retries=0, **settings)


def ask(text: str = "Hello") -> list[Turn]:
    return [Turn("user", [TextPart(text)])]


def faulty(url: str, fault: str, **settings: Any) -> NIMBackend:
    return backend(url, default_headers={"X-Emulator-Fault": fault}, **settings)


# --- errors are also the openai SDK's ----------------------------------------------------


def test_a_429_is_both_our_rate_limit_error_and_openais(nim_url: str) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        faulty(nim_url, "429").complete(ask(), RequestOptions())
    error = info.value
    assert isinstance(error, RateLimitError)
    assert error.status_code == 429
    assert error.model == NANO_12B
    assert error.request_id and error.request_id.startswith("emu-req-")
    assert str(error).startswith("Emulated fault 429 (rate limited)")
    assert error.message == str(error)
    assert isinstance(error.__cause__, openai.RateLimitError)


@pytest.mark.parametrize(
    ("status", "sdk_class"),
    [
        ("400", openai.BadRequestError),
        ("401", openai.AuthenticationError),
        ("403", openai.PermissionDeniedError),
        ("404", openai.NotFoundError),
        ("409", openai.ConflictError),
        ("422", openai.UnprocessableEntityError),
        ("500", openai.InternalServerError),
        ("503", openai.InternalServerError),
    ],
)
def test_each_status_error_is_also_the_sdks_class_for_that_status(
    nim_url: str, status: str, sdk_class: type[Exception]
) -> None:
    with pytest.raises(RequestError) as info:
        faulty(nim_url, status).complete(ask(), RequestOptions())
    assert isinstance(info.value, sdk_class)
    assert isinstance(info.value, openai.APIStatusError)
    assert info.value.status_code == int(status)
    assert not isinstance(info.value, openai.RateLimitError)


async def test_a_streamed_429_is_openais_rate_limit_error_too(nim_url: str) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        async for _ in faulty(nim_url, "429").astream(ask(), RequestOptions()):
            pass
    assert isinstance(info.value, RateLimitError)


def test_an_unreachable_server_is_openais_connection_error(unused_port: int) -> None:
    with pytest.raises(openai.APIConnectionError) as info:
        backend(f"http://127.0.0.1:{unused_port}/v1").complete(ask(), RequestOptions())
    assert isinstance(info.value, RequestError)
    assert "check base_url" in str(info.value)


def test_a_timeout_is_openais_timeout_error_and_a_builtin_one(nim_url: str) -> None:
    with pytest.raises(openai.APITimeoutError) as info:
        faulty(nim_url, "slow:5", timeout=0.3).complete(ask(), RequestOptions())
    assert isinstance(info.value, RequestTimeoutError)
    assert isinstance(info.value, TimeoutError)
    assert "timeout=0.3" in str(info.value)


def test_a_stream_that_breaks_is_incomplete_and_openais_connection_error(nim_url: str) -> None:
    with pytest.raises(IncompleteResponseError) as info:
        list(faulty(nim_url, "break_stream").stream(ask(), RequestOptions()))
    assert isinstance(info.value, openai.APIConnectionError)


def test_a_retry_written_for_openai_errors_catches_ours(nim_url: str) -> None:
    # What with_retry(retry_if_exception_type=(openai.RateLimitError,)) relies on.
    calls = 0
    model = backend(
        nim_url,
        default_headers={
            "X-Emulator-Fault": "429",
            "X-Emulator-Fault-Times": "1",
            "X-Emulator-Fault-Key": f"retry-{id(object())}",
        },
    )
    while True:
        calls += 1
        try:
            reply = model.complete(ask("retried"), RequestOptions())
            break
        except openai.RateLimitError:
            assert calls == 1
    assert calls == 2 and "retried" in reply.text


def test_an_openai_twin_pickles_and_stays_both(nim_url: str) -> None:
    with pytest.raises(RateLimitError) as info:
        faulty(nim_url, "429").complete(ask(), RequestOptions())
    copy = pickle.loads(pickle.dumps(info.value))
    assert isinstance(copy, RateLimitError) and isinstance(copy, openai.RateLimitError)
    assert (copy.status_code, copy.request_id, str(copy)) == (
        429,
        info.value.request_id,
        str(info.value),
    )


@pytest.fixture(scope="module")
def fal_emulator() -> Iterator[FalEmulator]:
    with use_fal_emulator() as emulator:
        yield emulator


def test_a_fal_422_is_openais_unprocessable_entity_error(fal_emulator: FalEmulator) -> None:
    # fal errors get the SDK's class for their status too, so one retry/fallback setting
    # serves both backends.
    fal_emulator.state.faults.clear()
    fal_emulator.inject_fault("422")
    fal = FalBackend(get_profile(DIFFUSION), SecretStr("emulator-key"), poll_interval=0.01)
    image = MediaPart("image", data=_png())
    with pytest.raises(openai.UnprocessableEntityError) as info:
        fal.complete([Turn("user", [TextPart("?"), image])], RequestOptions())
    assert isinstance(info.value, RequestError)
    assert info.value.status_code == 422
    assert "injected validation error" in str(info.value)


def test_a_failed_fal_result_is_openais_internal_server_error(fal_emulator: FalEmulator) -> None:
    fal_emulator.state.faults.clear()
    fal_emulator.inject_fault("failed")
    fal = FalBackend(get_profile(DIFFUSION), SecretStr("emulator-key"), poll_interval=0.01)
    image = MediaPart("image", data=_png())
    with pytest.raises(openai.InternalServerError) as info:
        fal.complete([Turn("user", [TextPart("?"), image])], RequestOptions())
    assert isinstance(info.value, RequestError) and info.value.status_code == 500


def _png() -> bytes:
    from nemovlm.samples import make_image

    return make_image(32, 32, "png")


@pytest.fixture
def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


WEATHER = ToolSpec(
    "get_weather",
    "Weather for a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


# --- the emulator takes what vLLM takes ------------------------------------------------


@pytest.fixture(scope="module")
def sdk(nim_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=nim_url, api_key="x", max_retries=0)


def test_the_emulator_answers_n_choices_each_its_own(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(
        model=NANO_12B, messages=[{"role": "user", "content": "count me"}], n=3
    )
    assert [c.index for c in completion.choices] == [0, 1, 2]
    texts = [c.message.content or "" for c in completion.choices]
    assert all("[nemovlm emulator]" in t and "text: count me" in t for t in texts)
    assert [t.splitlines()[-1] for t in texts] == [f"choice: {i} of 3" for i in (1, 2, 3)]


def test_the_emulator_streams_n_choices_by_index(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model=NANO_12B, messages=[{"role": "user", "content": "hi"}], n=2, stream=True
    )
    texts = ["", ""]
    finished = set()
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished.add(choice.index)
    assert finished == {0, 1}
    assert texts[0].endswith("choice: 1 of 2") and texts[1].endswith("choice: 2 of 2")


def test_the_emulator_gives_logprobs_in_openais_shape(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(
        model=NANO_12B,
        messages=[{"role": "user", "content": "hi"}],
        logprobs=True,
        top_logprobs=3,
    )
    choice = completion.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    tokens = choice.logprobs.content
    assert "".join(t.token for t in tokens) == choice.message.content
    first = tokens[0]
    assert first.logprob <= 0 and first.bytes == list(first.token.encode())
    assert len(first.top_logprobs) == 3 and first.top_logprobs[0].token == first.token
    assert [t.logprob for t in first.top_logprobs] == sorted(
        (t.logprob for t in first.top_logprobs), reverse=True
    )


def test_the_emulator_streams_logprobs_with_each_chunk(sdk: openai.OpenAI) -> None:
    args: dict[str, Any] = {"model": NANO_12B, "messages": [{"role": "user", "content": "hi"}]}
    whole = sdk.chat.completions.create(**args, logprobs=True)
    streamed = []
    for chunk in sdk.chat.completions.create(**args, logprobs=True, stream=True):
        for choice in chunk.choices:
            if choice.delta.content:
                assert choice.logprobs is not None
                assert "".join(t.token for t in choice.logprobs.content or []) == (
                    choice.delta.content
                )
                streamed += choice.logprobs.content or []
    assert whole.choices[0].logprobs is not None
    assert streamed == whole.choices[0].logprobs.content


def test_the_emulator_refuses_top_logprobs_without_logprobs(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="`logprobs` must be set to true"):
        sdk.chat.completions.create(
            model=NANO_12B, messages=[{"role": "user", "content": "hi"}], top_logprobs=2
        )


def test_the_emulator_takes_strict_tools(sdk: openai.OpenAI) -> None:
    tool: Any = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": WEATHER.parameters, "strict": True},
    }
    completion = sdk.chat.completions.create(
        model=NANO_12B, messages=[{"role": "user", "content": "Paris?"}], tools=[tool]
    )
    assert completion.choices[0].message.tool_calls


def test_the_emulator_lists_its_models(sdk: openai.OpenAI) -> None:
    ids = {m.id for m in sdk.models.list()}
    assert {NANO_8B, NANO_12B, GEMMA} <= ids


# --- several choices and logprobs in the core --------------------------------------------


def test_n_choices_come_back_as_replies_of_their_own(nim_url: str, wire: WireLog) -> None:
    reply = backend(nim_url).complete(ask("three ways"), RequestOptions(n=3))
    assert wire.last()["n"] == 3
    assert len(reply.choices) == 3 and reply.all_choices == reply.choices
    assert [c.text.splitlines()[-1] for c in reply.choices] == [
        "choice: 1 of 3",
        "choice: 2 of 3",
        "choice: 3 of 3",
    ]
    assert reply.text == reply.choices[0].text
    assert reply.usage is not None and reply.usage.output_tokens > 0


def test_each_choice_has_its_own_tool_call(nim_url: str) -> None:
    reply = backend(nim_url).complete(
        ask("Weather in Paris?"), RequestOptions(n=2, tools=(WEATHER,))
    )
    ids = [c.tool_calls[0].id for c in reply.choices]
    assert len(set(ids)) == 2
    assert all(c.tool_calls[0].name == "get_weather" for c in reply.choices)


def test_each_choice_splits_its_own_reasoning(nim_url: str) -> None:
    reply = backend(nim_url).complete(ask("why?"), RequestOptions(n=2, reasoning=True))
    for choice in reply.choices:
        assert choice.reasoning and "Reasoning (emulated)" in choice.reasoning
        assert "<think>" not in choice.text and "</think>" not in choice.text


def test_a_single_answer_has_no_choices_list(nim_url: str, wire: WireLog) -> None:
    reply = backend(nim_url).complete(ask(), RequestOptions())
    assert reply.choices == [] and reply.all_choices == [reply]
    assert "n" not in wire.last() and reply.logprobs is None


def test_n_above_one_is_refused_when_streaming(nim_url: str, wire: WireLog) -> None:
    with pytest.raises(ValueError, match=r"n=2 is not supported when streaming"):
        list(backend(nim_url).stream(ask(), RequestOptions(n=2)))
    assert wire.bodies() == []


def test_logprobs_come_back_on_the_reply(nim_url: str) -> None:
    options = build_options(RequestOptions(), {"logprobs": True, "top_logprobs": 2})
    reply = backend(nim_url).complete(ask("hi"), options)
    assert reply.logprobs is not None
    assert "".join(t["token"] for t in reply.logprobs) == reply.text
    assert all(len(t["top_logprobs"]) == 2 for t in reply.logprobs)


def test_logprobs_come_with_each_streamed_delta(nim_url: str) -> None:
    options = build_options(RequestOptions(), {"logprobs": True})
    deltas = list(backend(nim_url).stream(ask("hi"), options))
    with_text = [d for d in deltas if d.text]
    assert with_text and all(d.logprobs for d in with_text)
    for d in with_text:
        assert "".join(t["token"] for t in d.logprobs or []) == d.text
    whole = backend(nim_url).complete(ask("hi"), options)
    assert [t for d in deltas for t in d.logprobs or []] == whole.logprobs


# --- extra_body --------------------------------------------------------------------------


def test_extra_body_is_merged_into_the_body_never_sent_as_a_key(
    nim_url: str, wire: WireLog
) -> None:
    options = build_options(
        RequestOptions(
            extra={"extra_body": {"mm_processor_kwargs": {"max_num_tiles": 2}, "top_k": 5}}
        ),
        {"extra_body": {"top_k": 7}},
    )
    reply = backend(nim_url).complete(ask(), options)
    body = wire.last()
    assert "extra_body" not in body
    assert body["top_k"] == 7  # the call's key wins over the constructor's
    assert body["mm_processor_kwargs"] == {"max_num_tiles": 2}
    assert "max_num_tiles: 2" in reply.text  # the emulator read it


def test_extra_body_inside_model_kwargs_is_merged_too(nim_url: str, wire: WireLog) -> None:
    options = build_options(
        RequestOptions(), None, extra={"extra_body": {"top_k": 3}, "min_p": 0.1}
    )
    backend(nim_url).complete(ask(), options)
    body = wire.last()
    assert "extra_body" not in body and (body["top_k"], body["min_p"]) == (3, 0.1)


def test_extra_body_keys_win_over_the_request_as_in_the_sdk(nim_url: str, wire: WireLog) -> None:
    options = build_options(RequestOptions(temperature=0.2), {"extra_body": {"temperature": 0.9}})
    backend(nim_url).complete(ask(), options)
    assert wire.last()["temperature"] == 0.9


def test_extra_body_that_is_not_a_dict_is_refused() -> None:
    with pytest.raises(ValueError, match="extra_body must be a dict"):
        build_options(RequestOptions(), {"extra_body": "top_k=7"})


# --- JSON mode -----------------------------------------------------------------------------


def test_json_mode_sends_json_object_where_the_model_takes_response_format(
    nim_url: str, wire: WireLog
) -> None:
    reply = backend(nim_url).complete(ask("a cat"), RequestOptions(json_mode=True))
    assert wire.last()["response_format"] == {"type": "json_object"}
    assert isinstance(json.loads(reply.text), dict)


def test_json_mode_uses_the_prompt_protocol_elsewhere(nim_url: str, wire: WireLog) -> None:
    reply = backend(nim_url, NANO_8B).complete(ask("a cat"), RequestOptions(json_mode=True))
    body = wire.last()
    assert "response_format" not in body
    assert "<response_format>json_object</response_format>" in body["messages"][0]["content"]
    assert json.loads(reply.text)["emulator"] == "nemovlm"


def test_an_openai_json_object_response_format_becomes_json_mode(
    nim_url: str, wire: WireLog
) -> None:
    options = build_options(RequestOptions(), {"response_format": {"type": "json_object"}})
    assert options.json_mode and options.json_schema is None
    backend(nim_url, GEMMA).complete(ask(), options)
    assert wire.last()["response_format"] == {"type": "json_object"}


def test_json_mode_and_a_schema_together_are_refused(nim_url: str) -> None:
    options = RequestOptions(json_mode=True, json_schema={"name": "x", "schema": {}})
    with pytest.raises(ValueError, match="json_mode and json_schema are exclusive"):
        backend(nim_url).complete(ask(), options)


# --- strict tools ----------------------------------------------------------------------------


def test_strict_reaches_every_tool_never_the_top_level(nim_url: str, wire: WireLog) -> None:
    other = ToolSpec("get_time", "Time in a city", {"type": "object", "properties": {}})
    options = build_options(RequestOptions(), {"tools": [WEATHER, other], "strict": True})
    backend(nim_url).complete(ask("Paris?"), options)
    body = wire.last()
    assert "strict" not in body
    assert [t["function"]["strict"] for t in body["tools"]] == [True, True]


def test_a_tool_without_strict_sends_none(nim_url: str, wire: WireLog) -> None:
    backend(nim_url).complete(ask("Paris?"), RequestOptions(tools=(WEATHER,)))
    assert "strict" not in wire.last()["tools"][0]["function"]


def test_strict_goes_into_the_prompt_for_prompt_tools(nim_url: str, wire: WireLog) -> None:
    options = build_options(RequestOptions(), {"tools": [WEATHER], "strict": True})
    reply = backend(nim_url, NANO_8B).complete(ask("Paris?"), options)
    system = wire.last()["messages"][0]["content"]
    tools = json.loads(system.split("<tools>")[1].split("</tools>")[0])
    assert tools[0]["strict"] is True
    assert reply.tool_calls and reply.tool_calls[0].name == "get_weather"


# --- reasoning=False everywhere ----------------------------------------------------------------


@pytest.mark.parametrize("model", [NANO_8B, OTHER])
def test_reasoning_false_on_a_model_that_cannot_reason_is_a_no_op(
    nim_url: str, wire: WireLog, model: str
) -> None:
    reply = backend(nim_url, model).complete(ask("hi"), RequestOptions(reasoning=False))
    assert "hi" in reply.text and reply.reasoning is None
    body = wire.last()
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert "chat_template_kwargs" not in body


def test_reasoning_true_on_a_model_that_cannot_reason_is_refused(
    nim_url: str, wire: WireLog
) -> None:
    with pytest.raises(ValueError, match=r"cannot switch reasoning on or off"):
        backend(nim_url, NANO_8B).complete(ask(), RequestOptions(reasoning=True))
    assert wire.bodies() == []


# --- near-miss model ids -----------------------------------------------------------------------


@pytest.fixture
def fresh_warnings() -> Iterator[None]:
    """Each test sees the once-per-id warnings afresh (they are per process)."""
    from nemovlm import model_ids

    model_ids._warned.clear()
    yield
    model_ids._warned.clear()


@pytest.mark.usefixtures("fresh_warnings")
def test_a_near_miss_model_id_warns_naming_the_closest_and_still_works(nim_url: str) -> None:
    with pytest.warns(UserWarning, match=r"did you mean 'nvidia/nemotron-nano-12b-v2-vl'\?"):
        profile = get_profile("nvidia/nemotron-nano-12b-vl")
    reply = NIMBackend(profile, nim_url, max_retries=0).complete(ask("hi"), RequestOptions())
    assert "nvidia/nemotron-nano-12b-vl received parts: text" in reply.text


@pytest.mark.usefixtures("fresh_warnings")
def test_a_near_miss_warns_once(recwarn: pytest.WarningsRecorder) -> None:
    get_profile("nvidia/Nemotron-Nano-12B-v2-VL")
    get_profile("nvidia/Nemotron-Nano-12B-v2-VL")
    near = [w for w in recwarn if "did you mean" in str(w.message)]
    assert len(near) == 1 and "'nvidia/nemotron-nano-12b-v2-vl'" in str(near[0].message)


@pytest.mark.usefixtures("fresh_warnings")
@pytest.mark.parametrize(
    "model", [NANO_12B, OTHER, "nvidia/nemotron-nano-9b-v2", "meta/llama-3.2-11b-vision-instruct"]
)
def test_known_and_plainly_other_ids_do_not_warn(
    model: str, recwarn: pytest.WarningsRecorder
) -> None:
    get_profile(model)
    assert not [w for w in recwarn if "did you mean" in str(w.message)]


@pytest.mark.usefixtures("fresh_warnings")
def test_a_near_miss_of_a_fal_app_warns_too() -> None:
    with pytest.warns(UserWarning, match="'fal-ai/nemotron-diffusion-vlm'"):
        get_profile("fal-ai/nemotron-diffusion-vl", backend="fal")


# --- token estimates, offline -------------------------------------------------------------------

SEED_QUESTION = 'How many times more "FP16Tensor Core" does H100 SXM have than H100 NVL?'
SEED_ANSWER = (
    "The H100 SXM has 1,979 FP16 Tensor Cores, while the H100 NVL has 1,671 FP16 Tensor "
    "Cores. To find out how many times more FP16 Tensor Cores the H100 SXM has compared to "
    "the H100 NVL, we divide the number of FP16 Tensor Cores in the H100 SXM by the number "
    "in the H100 NVL:\n\n1,979 / 1,671 ≈ 1.18\n\nTherefore, the H100 SXM has approximately "
    "1.18 times more FP16 Tensor Cores than the H100 NVL."
)


def seed_chart() -> MediaPart:
    from nemovlm.samples import make_image

    return MediaPart("image", data=make_image(2048, 1536, "png"))


def test_the_estimate_matches_the_seeds_image_example() -> None:
    # seeds/nim-llama-3.1-nemotron-nano-vl-8b-v1.md: a large chart and this question
    # cost 3372 prompt tokens (13 tiles of 256, and the text).
    turns = [Turn("user", [seed_chart(), TextPart(SEED_QUESTION)])]
    estimate = estimate_tokens(turns, get_profile(NANO_8B))
    assert abs(estimate - 3372) / 3372 < 0.02


def test_the_estimate_matches_the_seeds_multi_turn_example() -> None:
    turns = [
        Turn("user", [seed_chart(), TextPart(SEED_QUESTION)]),
        Turn("assistant", [TextPart(SEED_ANSWER)]),
        Turn("user", [TextPart("Please extract the table in the image as HTML")]),
    ]
    estimate = estimate_tokens(turns, get_profile(NANO_8B))
    assert abs(estimate - 3517) / 3517 < 0.03


@pytest.mark.parametrize(
    ("size", "tiles"),
    [((2048, 1536), 13), ((512, 512), 1), ((1024, 1024), 5), ((2000, 500), 5)],
)
def test_an_image_counts_the_tiles_the_model_cuts_it_into(
    size: tuple[int, int], tiles: int
) -> None:
    assert image_tokens(size, get_profile(NANO_12B)) == tiles * 256


def test_max_num_tiles_lowers_the_image_count() -> None:
    part = seed_chart()
    profile = get_profile(NANO_12B)
    full = estimate_tokens([Turn("user", [part])], profile)
    fewer = estimate_tokens(
        [Turn("user", [part])], profile, options=RequestOptions(max_num_tiles=6)
    )
    assert full - fewer == (13 - 7) * 256  # a 3x2 grid and its thumbnail


def test_a_remote_image_counts_as_the_largest_grid_without_a_download() -> None:
    # Nothing listens on port 9: a download would fail the test.
    remote = MediaPart("image", url="http://127.0.0.1:9/chart.png")
    text_only = estimate_tokens([ask("what is it?")[0]], get_profile(NANO_12B))
    with_image = estimate_tokens(
        [Turn("user", [remote, TextPart("what is it?")])], get_profile(NANO_12B)
    )
    assert with_image - text_only == 13 * 256


def test_a_model_without_a_tiling_counts_a_flat_image() -> None:
    turns = [Turn("user", [seed_chart()])]
    assert (
        estimate_tokens(turns, get_profile(GEMMA))
        - estimate_tokens([Turn("user", [])], get_profile(GEMMA))
        == 256
    )


def test_a_profiles_tokens_per_tile_prices_each_tile_and_frame() -> None:
    profile = get_profile(NANO_12B, {"tokens_per_tile": 100})
    assert image_tokens((2048, 1536), profile) == 13 * 100
    assert image_tokens((512, 512), get_profile(GEMMA, {"tokens_per_tile": 64})) == 64


def test_a_video_counts_its_sampled_frames() -> None:
    from nemovlm.samples import make_mp4

    video = MediaPart("video", data=make_mp4(duration_s=2.0, width=64, height=48, fps=10))
    profile = get_profile(NANO_12B)
    empty = estimate_tokens([Turn("user", [])], profile)
    default = estimate_tokens([Turn("user", [video])], profile) - empty
    seven = estimate_tokens(
        [Turn("user", [video])], profile, options=RequestOptions(video_num_frames=7)
    )
    assert default == 4 * 256  # 2 s at the default 2 frames per second
    assert seven - empty == 7 * 256


def test_text_estimates_grow_with_the_text_and_tools_count() -> None:
    profile = get_profile(NANO_12B)
    short = estimate_tokens(ask("hi"), profile)
    long = estimate_tokens(ask("hi " * 100), profile)
    with_tool = estimate_tokens(ask("hi"), profile, tools=(WEATHER,))
    assert short < with_tool and long - short == 99
    assert estimate_text_tokens("The quick brown fox jumps over the lazy dog.") == 10


def test_a_conversation_trimmed_by_the_estimate_is_what_the_server_receives(
    nim_url: str, wire: WireLog
) -> None:
    # The LangChain trim_messages(token_counter=...) idea, on the core: keep the latest
    # turns that fit a budget, then send them.
    profile = get_profile(NANO_12B)
    history = [Turn("user" if i % 2 == 0 else "assistant", [TextPart(f"turn {i} " * 20)])
               for i in range(9)]  # fmt: skip
    kept: list[Turn] = []
    for turn in reversed(history):
        if estimate_tokens([turn, *kept], profile) > 150:
            break
        kept.insert(0, turn)
    assert 0 < len(kept) < len(history)
    backend(nim_url).complete(kept, RequestOptions())
    assert [m["content"] for m in wire.last()["messages"]] == [t.text for t in kept]


# --- available models ---------------------------------------------------------------------------


def test_available_models_lists_what_the_server_serves(nim_url: str, nim_server: Any) -> None:
    import httpx

    httpx.delete(nim_server.url + "/emulator/requests")
    model = backend(nim_url, api_key=SecretStr("sk-listing-key"))
    served = model.available_models()
    assert {m.id for m in served} == {NANO_8B, NANO_12B, GEMMA}
    assert all(m.known and m.owned_by for m in served)
    [record] = httpx.get(nim_server.url + "/emulator/requests").json()
    assert record["path"] == "/v1/models" and record["bearer"] is True
    assert "sk-listing-key" not in json.dumps(record)


async def test_available_models_async(nim_url: str) -> None:
    served = await backend(nim_url, OTHER).aavailable_models()
    assert NANO_12B in {m.id for m in served}


def test_available_models_from_a_dead_server_is_openais_connection_error(
    unused_port: int,
) -> None:
    with pytest.raises(openai.APIConnectionError):
        backend(f"http://127.0.0.1:{unused_port}/v1").available_models()


def test_strict_in_model_kwargs_reaches_the_tools_not_the_top_level(
    nim_url: str, wire: WireLog
) -> None:
    options = build_options(RequestOptions(), {"tools": [WEATHER]}, extra={"strict": False})
    backend(nim_url).complete(ask("Paris?"), options)
    body = wire.last()
    assert "strict" not in body and body["tools"][0]["function"]["strict"] is False


def test_n_above_one_on_fal_is_refused_before_anything_is_queued(
    fal_emulator: FalEmulator,
) -> None:
    fal_emulator.state.requests.clear()
    fal = FalBackend(get_profile(DIFFUSION), SecretStr("emulator-key"), poll_interval=0.01)
    turns = [Turn("user", [TextPart("?"), MediaPart("image", data=_png())])]
    with pytest.raises(ValueError, match="answers with one choice"):
        fal.complete(turns, RequestOptions(n=2))
    assert not fal_emulator.state.requests
