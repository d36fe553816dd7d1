"""The NIM emulator, spoken to by the real ``openai`` SDK over loopback HTTP.

Grouped as: routes; what the answer reports; each model's 400s; reasoning shapes;
tools and structured output; streaming and usage; faults; the request record.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from nemovlm.emulator import RunningServer, start_nim_emulator
from nemovlm.emulator.nim import BROKEN_TOOL_ARGUMENTS
from nemovlm.samples import make_image, make_mp4

NANO_8B = "nvidia/llama-3.1-nemotron-nano-vl-8b-v1"
NANO_12B = "nvidia/nemotron-nano-12b-v2-vl"
GEMMA = "google/diffusiongemma-26b-a4b-it"
OTHER = "acme/some-new-vlm"

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


# --- fixtures and helpers ------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    running = start_nim_emulator()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)


@pytest.fixture(scope="module")
def http(server: RunningServer) -> Iterator[httpx.Client]:
    """Plain HTTP, to see the exact wire shape and the emulator's own routes."""
    with httpx.Client(base_url=server.url) as plain:
        yield plain


@pytest.fixture
def aclient(server: RunningServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)


@pytest.fixture(scope="module")
def mp4() -> bytes:
    """2 s, 64x48, 10 fps: 20 frames."""
    return make_mp4(duration_s=2.0, width=64, height=48, fps=10)


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image_part(fmt: str = "png", width: int = 64, height: int = 48) -> dict[str, Any]:
    mime = {"png": "image/png", "jpeg": "image/jpeg", "gif": "image/gif", "webp": "image/webp"}
    url = data_url(make_image(width, height, fmt), mime[fmt])
    return {"type": "image_url", "image_url": {"url": url}}


def video_part(mp4: bytes) -> dict[str, Any]:
    return {"type": "video_url", "video_url": {"url": data_url(mp4, "video/mp4")}}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def user(*parts: dict[str, Any] | str) -> dict[str, Any]:
    if len(parts) == 1 and isinstance(parts[0], str):
        return {"role": "user", "content": parts[0]}
    return {"role": "user", "content": [text_part(p) if isinstance(p, str) else p for p in parts]}


def ask(client: openai.OpenAI, model: str, messages: list[Any], **kw: Any) -> Any:
    """The SDK call; messages are plain dicts, as the wire sees them."""
    return client.chat.completions.create(model=model, messages=messages, **kw)


def content_of(client: openai.OpenAI, model: str, messages: list[dict[str, Any]], **kw: Any) -> str:
    content = ask(client, model, messages, **kw).choices[0].message.content
    assert isinstance(content, str)
    return content


def bad_request(
    client: openai.OpenAI, model: str, messages: list[dict[str, Any]], **kw: Any
) -> str:
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, model, messages, **kw)
    return caught.value.message


def stream_chunks(
    client: openai.OpenAI, model: str, messages: list[dict[str, Any]], **kw: Any
) -> list[Any]:
    return list(ask(client, model, messages, stream=True, **kw))


def joined(chunks: list[Any], name: str = "content") -> str:
    return "".join(getattr(c.choices[0].delta, name, None) or "" for c in chunks if c.choices)


def raw_post(http: httpx.Client, body: dict[str, Any], **headers: str) -> httpx.Response:
    return http.post("/v1/chat/completions", json=body, headers=headers)


THINK = {"role": "system", "content": "/think"}


# --- routes --------------------------------------------------------------------------


def test_models_route_lists_the_three_nim_ids(client: openai.OpenAI) -> None:
    assert {m.id for m in client.models.list()} == {NANO_8B, NANO_12B, GEMMA}


@pytest.mark.parametrize("path", ["/v1/health/ready", "/v1/health/live"])
def test_health_routes_answer_200_json(http: httpx.Client, path: str) -> None:
    response = http.get(path)
    assert response.status_code == 200 and "message" in response.json()


def test_every_response_carries_a_request_id(http: httpx.Client) -> None:
    ok = raw_post(http, {"model": OTHER, "messages": [user("hi")]})
    refused = raw_post(http, {"model": OTHER, "messages": []})
    models = http.get("/v1/models")
    assert all(r.headers.get("x-request-id") for r in (ok, refused, models))


def test_completion_id_is_numbered_and_model_is_echoed(client: openai.OpenAI) -> None:
    completion = ask(client, OTHER, [user("hi")])
    assert completion.id.startswith("chatcmpl-emu-") and completion.model == OTHER


# --- what the answer reports ---------------------------------------------------------


def test_answer_says_it_is_the_emulator_and_echoes_the_user_text(client: openai.OpenAI) -> None:
    content = content_of(client, NANO_12B, [user("What is the capital of France?")])
    assert content.startswith("[nemovlm emulator]")
    assert "What is the capital of France?" in content and NANO_12B in content


def test_answer_echoes_only_the_first_200_characters(client: openai.OpenAI) -> None:
    text = "a" * 199 + "bc"
    content = content_of(client, OTHER, [user(text)])
    assert "a" * 199 + "b" in content and "a" * 199 + "bc" not in content


def test_answer_reports_the_order_of_the_parts(client: openai.OpenAI) -> None:
    first = content_of(client, NANO_12B, [user(image_part(), "Describe.")])
    second = content_of(client, NANO_12B, [user("Describe.", image_part())])
    assert "parts: image, text" in first and "parts: text, image" in second


def test_answer_reports_each_image_format_and_size(client: openai.OpenAI) -> None:
    content = content_of(
        client, NANO_12B, [user(image_part("png", 64, 48), image_part("jpeg", 30, 20), "?")]
    )
    assert "image 1: png 64x48" in content and "image 2: jpeg 30x20" in content


def test_answer_counts_images_across_the_conversation(client: openai.OpenAI) -> None:
    messages = [
        user(image_part(), "What is this?"),
        {"role": "assistant", "content": "A square."},
        user(image_part("jpeg"), "And this?"),
    ]
    assert "images in conversation: 2" in content_of(client, NANO_12B, messages)


def test_answer_reports_max_num_tiles(client: openai.OpenAI) -> None:
    content = content_of(
        client,
        NANO_12B,
        [user(image_part(), "?")],
        extra_body={"mm_processor_kwargs": {"max_num_tiles": 3}},
    )
    assert "max_num_tiles: 3" in content


def test_remote_image_is_described_without_being_fetched(client: openai.OpenAI) -> None:
    part = {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png"}}
    content = content_of(client, NANO_12B, [user(part, "?")])
    assert "remote image (not fetched by the emulator)" in content


def test_loopback_image_url_is_fetched_and_decoded(client: openai.OpenAI) -> None:
    png = make_image(40, 30, "png")

    async def serve(request: Request) -> Response:
        return Response(png, media_type="image/png")

    with RunningServer(Starlette(routes=[Route("/cat.png", serve)])) as files:
        part = {"type": "image_url", "image_url": {"url": files.url + "/cat.png"}}
        content = content_of(client, NANO_12B, [user(part, "?")])
    assert "image 1: png 40x30" in content


def test_video_is_sampled_at_2_fps_by_default(client: openai.OpenAI, mp4: bytes) -> None:
    content = content_of(client, NANO_12B, [user(video_part(mp4), "What happens?")])
    assert "4 frames sampled (default 2 fps)" in content and "64x48" in content


def test_video_sampling_follows_num_frames(client: openai.OpenAI, mp4: bytes) -> None:
    content = content_of(
        client,
        NANO_12B,
        [user(video_part(mp4), "?")],
        extra_body={"media_io_kwargs": {"video": {"num_frames": 7}}},
    )
    assert "7 frames sampled (num_frames 7)" in content


def test_video_sampling_follows_fps(client: openai.OpenAI, mp4: bytes) -> None:
    content = content_of(
        client,
        NANO_12B,
        [user(video_part(mp4), "?")],
        extra_body={"media_io_kwargs": {"video": {"fps": 5}}},
    )
    assert "10 frames sampled (fps 5)" in content


def test_nano_8b_reads_img_tags_in_text_as_images(client: openai.OpenAI) -> None:
    url = image_part("jpeg", 32, 16)["image_url"]["url"]
    content = content_of(client, NANO_8B, [user(f'<img src="{url}" /> What is this?')])
    assert "parts: image, text" in content and "image 1: jpeg 32x16" in content
    assert "text: What is this?" in content


def test_other_models_leave_img_tags_as_text(client: openai.OpenAI) -> None:
    content = content_of(client, NANO_12B, [user('<img src="x.png" /> What is this?')])
    assert "parts: text" in content and "images in conversation: 0" in content


def test_nano_8b_reply_carries_null_reasoning_content_and_empty_tool_calls(
    http: httpx.Client,
) -> None:
    message = raw_post(http, {"model": NANO_8B, "messages": [user("hi")]}).json()["choices"][0][
        "message"
    ]
    assert message["reasoning_content"] is None and message["tool_calls"] == []


def test_other_models_reply_without_the_8b_null_fields(http: httpx.Client) -> None:
    message = raw_post(http, {"model": NANO_12B, "messages": [user("hi")]}).json()["choices"][0][
        "message"
    ]
    assert "reasoning_content" not in message and "tool_calls" not in message


def test_unknown_model_id_is_served_as_a_generic_vlm(client: openai.OpenAI, mp4: bytes) -> None:
    content = content_of(
        client,
        OTHER,
        [user(image_part("webp"), video_part(mp4), "?")],
        tools=[WEATHER_TOOL],
        tool_choice="none",
    )
    assert "image 1: webp 64x48" in content and "video 1: mp4" in content


# --- each model's 400s ----------------------------------------------------------------


def test_error_body_has_message_type_and_code(http: httpx.Client) -> None:
    error = raw_post(http, {"model": NANO_12B, "messages": []}).json()["error"]
    assert error["type"] == "BadRequestError" and error["code"] == 400 and error["message"]


def test_empty_messages_is_a_400(client: openai.OpenAI) -> None:
    assert "messages" in bad_request(client, NANO_12B, [])


def test_unknown_role_is_a_400(client: openai.OpenAI) -> None:
    assert "'bot'" in bad_request(client, NANO_12B, [{"role": "bot", "content": "hi"}])


def test_fps_and_num_frames_together_is_a_400(client: openai.OpenAI, mp4: bytes) -> None:
    message = bad_request(
        client,
        NANO_12B,
        [user(video_part(mp4), "?")],
        extra_body={"media_io_kwargs": {"video": {"fps": 1, "num_frames": 2}}},
    )
    assert "not both" in message


def test_more_than_128_frames_is_a_400(client: openai.OpenAI, mp4: bytes) -> None:
    message = bad_request(
        client,
        NANO_12B,
        [user(video_part(mp4), "?")],
        extra_body={"media_io_kwargs": {"video": {"num_frames": 129}}},
    )
    assert "128" in message


def test_num_frames_above_the_videos_own_count_is_a_400(client: openai.OpenAI, mp4: bytes) -> None:
    message = bad_request(
        client,
        NANO_12B,
        [user(video_part(mp4), "?")],
        extra_body={"media_io_kwargs": {"video": {"num_frames": 21}}},
    )
    assert "own frame count (20)" in message


def test_fps_above_the_videos_own_fps_is_a_400(client: openai.OpenAI, mp4: bytes) -> None:
    message = bad_request(
        client,
        NANO_12B,
        [user(video_part(mp4), "?")],
        extra_body={"media_io_kwargs": {"video": {"fps": 12}}},
    )
    assert "own frame rate (10 fps)" in message


@pytest.mark.parametrize("model", [NANO_8B, NANO_12B])
def test_gif_is_a_400_for_the_nano_models(client: openai.OpenAI, model: str) -> None:
    assert "GIF is not supported" in bad_request(client, model, [user(image_part("gif"), "?")])


def test_gif_is_accepted_by_diffusiongemma(client: openai.OpenAI) -> None:
    content = content_of(
        client,
        GEMMA,
        [user(image_part("gif"), "?")],
        extra_body={"chat_template_kwargs": {"thinking": False}},
    )
    assert "image 1: gif 64x48" in content


def test_image_format_is_read_from_the_bytes_not_the_mime_type(client: openai.OpenAI) -> None:
    url = data_url(make_image(8, 8, "webp"), "image/png")
    message = bad_request(
        client, NANO_12B, [user({"type": "image_url", "image_url": {"url": url}})]
    )
    assert "WEBP is not supported" in message


def test_undecodable_image_bytes_is_a_400(client: openai.OpenAI) -> None:
    url = data_url(b"definitely not an image", "image/png")
    message = bad_request(
        client, NANO_12B, [user({"type": "image_url", "image_url": {"url": url}})]
    )
    assert "could not be decoded" in message


@pytest.mark.parametrize("url", ["data:image/png;base64", "data:image/png;base64,%%%not-b64"])
def test_malformed_data_url_is_a_400(client: openai.OpenAI, url: str) -> None:
    message = bad_request(
        client, NANO_12B, [user({"type": "image_url", "image_url": {"url": url}})]
    )
    assert "malformed data URL" in message


def test_video_to_nano_8b_is_a_400(client: openai.OpenAI, mp4: bytes) -> None:
    message = bad_request(client, NANO_8B, [user(video_part(mp4), "?")])
    assert "video input is not supported" in message


def test_tools_to_nano_8b_is_a_400(client: openai.OpenAI) -> None:
    message = bad_request(client, NANO_8B, [user("Weather in Paris?")], tools=[WEATHER_TOOL])
    assert "tool calling is not enabled for this model" in message


def test_think_with_video_on_nano_12b_is_a_400(client: openai.OpenAI, mp4: bytes) -> None:
    message = bad_request(client, NANO_12B, [THINK, user(video_part(mp4), "?")])
    assert "reasoning is not supported with video input" in message


def test_include_reasoning_false_while_streaming_is_a_400_on_diffusiongemma(
    client: openai.OpenAI,
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, GEMMA, [user("hi")], stream=True, extra_body={"include_reasoning": False})
    assert "not supported for streaming" in caught.value.message


# --- reasoning -----------------------------------------------------------------------


def test_nano_12b_does_not_reason_without_think(client: openai.OpenAI) -> None:
    completion = ask(client, NANO_12B, [user("hi")])
    assert "<think>" not in completion.choices[0].message.content
    assert completion.usage.completion_tokens_details is None


def test_nano_12b_reasons_inside_think_tags_by_default(client: openai.OpenAI) -> None:
    content = content_of(client, NANO_12B, [THINK, user(image_part(), "What is it?")])
    assert content.startswith('<think>\nReasoning (emulated): the user asked "What is it?"')
    assert "I see 1 image" in content
    assert content.split("</think>\n\n", 1)[1].startswith("[nemovlm emulator]")


def test_streamed_think_tags_are_split_across_chunks(client: openai.OpenAI) -> None:
    chunks = stream_chunks(client, NANO_12B, [THINK, user("hi")])
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert "".join(pieces).startswith("<think>\nReasoning (emulated)")
    # Seven-character pieces cannot hold the eight-character closing tag.
    assert "</think>" in "".join(pieces) and not any("</think>" in p for p in pieces)


def test_closing_tag_only_style_drops_the_opening_tag(client: openai.OpenAI) -> None:
    content = content_of(
        client,
        NANO_12B,
        [THINK, user("hi")],
        extra_headers={"X-Emulator-Reasoning-Style": "closing_tag_only"},
    )
    assert content.startswith("Reasoning (emulated)") and "\n</think>\n\n[nemovlm" in content


def test_closing_tag_only_style_streams_without_the_opening_tag(client: openai.OpenAI) -> None:
    chunks = stream_chunks(
        client,
        NANO_12B,
        [THINK, user("hi")],
        extra_headers={"X-Emulator-Reasoning-Style": "closing_tag_only"},
    )
    text = joined(chunks)
    assert text.startswith("Reasoning (emulated)") and "<think>" not in text
    assert "\n</think>\n\n[nemovlm emulator]" in text


def test_reasoning_content_style_fills_the_message_field(client: openai.OpenAI) -> None:
    message = (
        ask(
            client,
            NANO_12B,
            [THINK, user("hi")],
            extra_headers={"X-Emulator-Reasoning-Style": "reasoning_content"},
        )
        .choices[0]
        .message
    )
    assert message.reasoning_content.startswith("Reasoning (emulated)")
    assert message.content.startswith("[nemovlm emulator]")


def test_reasoning_content_style_streams_in_the_delta_field(client: openai.OpenAI) -> None:
    chunks = stream_chunks(
        client,
        NANO_12B,
        [THINK, user("hi")],
        extra_headers={"X-Emulator-Reasoning-Style": "reasoning_content"},
    )
    assert joined(chunks, "reasoning_content").startswith("Reasoning (emulated)")
    assert joined(chunks).startswith("[nemovlm emulator]")


def test_diffusiongemma_reasons_by_default_in_message_reasoning(client: openai.OpenAI) -> None:
    message = ask(client, GEMMA, [user("hi")]).choices[0].message
    assert message.reasoning.startswith("Reasoning (emulated)")
    assert message.content.startswith("[nemovlm emulator]")


def test_diffusiongemma_streams_reasoning_in_delta_reasoning(client: openai.OpenAI) -> None:
    chunks = stream_chunks(client, GEMMA, [user("hi")])
    assert joined(chunks, "reasoning").startswith("Reasoning (emulated)")
    assert joined(chunks).startswith("[nemovlm emulator]")


def test_diffusiongemma_thinking_false_turns_reasoning_off(http: httpx.Client) -> None:
    body = {"model": GEMMA, "messages": [user("hi")], "chat_template_kwargs": {"thinking": False}}
    completion = raw_post(http, body).json()
    assert "reasoning" not in completion["choices"][0]["message"]
    assert "completion_tokens_details" not in completion["usage"]


def test_diffusiongemma_include_reasoning_false_hides_the_trace_but_counts_it(
    http: httpx.Client,
) -> None:
    body = {"model": GEMMA, "messages": [user("hi")], "include_reasoning": False}
    completion = raw_post(http, body).json()
    assert "reasoning" not in completion["choices"][0]["message"]
    assert completion["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0


def test_usage_reports_reasoning_tokens(client: openai.OpenAI) -> None:
    completion = ask(client, GEMMA, [user("hi")])
    reasoning = completion.choices[0].message.reasoning
    details = completion.usage.completion_tokens_details
    assert details.reasoning_tokens == math.ceil(len(reasoning) / 4)


# --- tools and structured output ------------------------------------------------------


def test_native_tool_call_synthesizes_arguments_from_the_schema(client: openai.OpenAI) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "book",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "nights": {"type": "integer"},
                    "budget": {"type": "number"},
                    "breakfast": {"type": "boolean"},
                    "guests": {"type": "array", "items": {"type": "string"}},
                    "extras": {"type": "object"},
                    "room": {"type": "string", "enum": ["double", "single"]},
                    "note": {"type": "string"},
                },
                "required": ["city", "nights", "budget", "breakfast", "guests", "extras", "room"],
            },
        },
    }
    choice = ask(client, NANO_12B, [user("Book a hotel in Paris")], tools=[tool]).choices[0]
    call = choice.message.tool_calls[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert call.function.name == "book"
    assert json.loads(call.function.arguments) == {
        "city": "Paris",
        "nights": 1,
        "budget": 1.5,
        "breakfast": True,
        "guests": [],
        "extras": {},
        "room": "double",
    }


def function_tool(name: str, **properties: str) -> dict[str, Any]:
    schema = {
        "type": "object",
        "properties": {key: {"type": kind} for key, kind in properties.items()},
        "required": list(properties),
    }
    return {"type": "function", "function": {"name": name, "parameters": schema}}


def test_tool_arguments_take_the_first_number_in_the_user_text(client: openai.OpenAI) -> None:
    tool = function_tool("magic_function", input="integer", scale="number")
    messages = [user("What is the value of magic_function(3)? Use the tool.")]
    call = ask(client, NANO_12B, messages, tools=[tool]).choices[0].message.tool_calls[0]
    assert json.loads(call.function.arguments) == {"input": 3, "scale": 3}


def test_tool_arguments_take_a_quoted_phrase_unescaped(http: httpx.Client) -> None:
    body = {
        "model": GEMMA,
        "messages": [user("Create a customer named '你好啊集团' (Hello Group)")],
        "tools": [function_tool("unicode_customer", customer_name="string")],
    }
    call = raw_post(http, body).json()["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["arguments"] == '{"customer_name": "你好啊集团"}'


def test_named_tool_choice_picks_that_tool(client: openai.OpenAI) -> None:
    other = {"type": "function", "function": {"name": "get_time", "parameters": {}}}
    completion = ask(
        client,
        GEMMA,
        [user("What time is it?")],
        tools=[WEATHER_TOOL, other],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    assert completion.choices[0].message.tool_calls[0].function.name == "get_time"


def test_tool_choice_none_answers_in_text(client: openai.OpenAI) -> None:
    completion = ask(client, NANO_12B, [user("hi")], tools=[WEATHER_TOOL], tool_choice="none")
    assert completion.choices[0].message.tool_calls is None
    assert completion.choices[0].message.content.startswith("[nemovlm emulator]")


def test_tool_result_is_quoted_in_the_answer(client: openai.OpenAI) -> None:
    messages = [
        user("Weather in Paris?"),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "22C and sunny"},
    ]
    content = content_of(client, NANO_12B, messages, tools=[WEATHER_TOOL])
    assert content == "[nemovlm emulator] Tool result received: 22C and sunny"


def test_streamed_tool_call_arrives_as_openai_chunks(client: openai.OpenAI) -> None:
    chunks = stream_chunks(client, NANO_12B, [user("Weather in Paris?")], tools=[WEATHER_TOOL])
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    head, rest = deltas[0], deltas[1:]
    assert (head.index, head.type, head.function.name, head.function.arguments) == (
        0,
        "function",
        "get_weather",
        "",
    )
    assert head.id and len(rest) > 1 and all(d.id is None for d in rest)
    assert json.loads("".join(d.function.arguments for d in rest)) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_prompt_protocol_tools_get_a_json_tool_call_reply(client: openai.OpenAI) -> None:
    parameters = WEATHER_TOOL["function"]["parameters"]  # type: ignore[index]
    tools = json.dumps([{"name": "get_weather", "description": "", "parameters": parameters}])
    system = f"Tools:\n<tools>\n{tools}\n</tools>\n<tool_choice>auto</tool_choice>"
    messages = [{"role": "system", "content": system}, user("Weather in Paris?")]
    content = content_of(client, NANO_8B, messages)
    call = {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert json.loads(content) == {"tool_calls": [call]}


def test_prompt_protocol_tool_result_is_quoted_in_plain_text(client: openai.OpenAI) -> None:
    system = '<tools>[{"name": "get_weather", "parameters": {}}]</tools>'
    result = '<tool_result name="get_weather" id="call_1">\n22C and sunny\n</tool_result>'
    messages = [{"role": "system", "content": system}, user("Weather in Paris?"), user(result)]
    content = content_of(client, NANO_8B, messages)
    assert content == "[nemovlm emulator] Tool result received: 22C and sunny"


def test_prompt_protocol_json_schema_gets_a_json_reply(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    system = f"<json_schema>\n{json.dumps(schema)}\n</json_schema>"
    content = content_of(client, NANO_8B, [{"role": "system", "content": system}, user("Count.")])
    assert json.loads(content) == {"n": 1}


def test_json_schema_response_format_synthesizes_nested_objects(client: openai.OpenAI) -> None:
    schema = {
        "$defs": {
            "Item": {
                "type": "object",
                "properties": {"label": {"type": "string"}, "score": {"type": "number"}},
                "required": ["label", "score"],
            }
        },
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}},
            "kind": {"anyOf": [{"type": "null"}, {"type": "string", "enum": ["cat", "dog"]}]},
        },
        "required": ["items", "kind"],
    }
    content = content_of(
        client,
        NANO_12B,
        [user("List the objects")],
        response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema}},
    )
    assert json.loads(content) == {"items": [{"label": "objects", "score": 1.5}], "kind": "cat"}


def test_json_object_response_format_gets_a_json_object(client: openai.OpenAI) -> None:
    content = content_of(client, OTHER, [user("hi")], response_format={"type": "json_object"})
    assert isinstance(json.loads(content), dict)


def test_nano_8b_ignores_response_format(client: openai.OpenAI) -> None:
    content = content_of(client, NANO_8B, [user("hi")], response_format={"type": "json_object"})
    assert content.startswith("[nemovlm emulator]")


# --- streaming and usage ---------------------------------------------------------------


def test_stream_starts_with_the_assistant_role_and_matches_the_plain_answer(
    client: openai.OpenAI,
) -> None:
    messages = [user(image_part(), "What is it?")]
    chunks = stream_chunks(client, NANO_12B, messages)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert joined(chunks) == content_of(client, NANO_12B, messages)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_stream_sends_seven_character_pieces_by_default(client: openai.OpenAI) -> None:
    chunks = stream_chunks(client, NANO_12B, [user("hi")])
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert max(len(p) for p in pieces) == 7


def test_chunk_size_header_sets_the_piece_size(client: openai.OpenAI) -> None:
    chunks = stream_chunks(
        client, NANO_12B, [user("hi")], extra_headers={"X-Emulator-Chunk-Size": "3"}
    )
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert max(len(p) for p in pieces) == 3


def test_include_usage_adds_a_final_chunk_with_usage_and_no_choices(
    client: openai.OpenAI,
) -> None:
    chunks = stream_chunks(client, NANO_12B, [user("hi")], stream_options={"include_usage": True})
    last = chunks[-1]
    assert last.choices == [] and last.usage.total_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])


def test_usage_counts_text_images_and_reply(client: openai.OpenAI) -> None:
    text = "Describe this image, please."
    completion = ask(client, NANO_12B, [user(image_part(), text)])
    usage = completion.usage
    assert usage.prompt_tokens == math.ceil(len(text) / 4) + 256
    assert usage.completion_tokens == math.ceil(len(completion.choices[0].message.content) / 4)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_usage_counts_64_tokens_per_sampled_video_frame(client: openai.OpenAI, mp4: bytes) -> None:
    usage = ask(client, NANO_12B, [user(video_part(mp4), "abcd")]).usage
    assert usage.prompt_tokens == 1 + 4 * 64


def test_max_tokens_cuts_the_answer_with_finish_reason_length(client: openai.OpenAI) -> None:
    choice = ask(client, NANO_12B, [user("hi")], max_tokens=3).choices[0]
    assert choice.finish_reason == "length" and choice.message.content == "[nemovlm emu"


async def test_async_client_gets_a_completion(aclient: openai.AsyncOpenAI) -> None:
    completion = await aclient.chat.completions.create(
        model=NANO_12B, messages=[{"role": "user", "content": "async hello"}]
    )
    assert "async hello" in (completion.choices[0].message.content or "")


async def test_async_client_streams(aclient: openai.AsyncOpenAI) -> None:
    stream = await aclient.chat.completions.create(
        model=GEMMA, messages=[{"role": "user", "content": "async hello"}], stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert "async hello" in text


# --- faults --------------------------------------------------------------------------


def fault(name: str, **more: str) -> dict[str, str]:
    return {"X-Emulator-Fault": name, **{f"X-Emulator-{k}": v for k, v in more.items()}}


def test_fault_429_sends_retry_after_0(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        ask(client, NANO_12B, [user("hi")], extra_headers=fault("429"))
    assert caught.value.response.headers["retry-after"] == "0"
    assert "429" in caught.value.message


def test_fault_503_sends_the_requested_retry_after(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        ask(client, NANO_12B, [user("hi")], extra_headers=fault("503", **{"Retry-After": "7"}))
    assert caught.value.status_code == 503
    assert caught.value.response.headers["retry-after"] == "7"


def test_fault_500_is_a_server_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        ask(client, NANO_12B, [user("hi")], extra_headers=fault("500"))
    assert caught.value.status_code == 500


def test_fault_break_stream_raises_while_iterating(client: openai.OpenAI) -> None:
    stream = ask(client, NANO_12B, [user("hi")], stream=True, extra_headers=fault("break_stream"))
    received = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in stream:
            received.append(chunk)
    assert 0 < len(received) < 5


def test_fault_malformed_json_gives_an_unparseable_200(http: httpx.Client) -> None:
    response = raw_post(
        http, {"model": NANO_12B, "messages": [user("hi")]}, **fault("malformed_json")
    )
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()


def test_fault_no_choices_gives_empty_choices(client: openai.OpenAI) -> None:
    completion = ask(client, NANO_12B, [user("hi")], extra_headers=fault("no_choices"))
    assert completion.choices == []


def test_fault_bad_tool_args_sends_arguments_that_are_not_json(client: openai.OpenAI) -> None:
    completion = ask(
        client,
        NANO_12B,
        [user("Weather?")],
        tools=[WEATHER_TOOL],
        extra_headers=fault("bad_tool_args"),
    )
    assert completion.choices[0].message.tool_calls[0].function.arguments == BROKEN_TOOL_ARGUMENTS


def test_fault_slow_delays_the_answer(client: openai.OpenAI) -> None:
    # No clock in the assertions: a short delay still ends in an answer, and an endless
    # one (until the client hangs up) can only end in the client's timeout.
    answered = ask(client, NANO_12B, [user("hi")], extra_headers=fault("slow:0.05"))
    assert answered.choices[0].finish_reason == "stop"
    impatient = client.with_options(timeout=0.2, max_retries=0)
    with pytest.raises(openai.APITimeoutError):
        ask(impatient, NANO_12B, [user("hi")], extra_headers=fault("slow:inf"))


def test_unknown_fault_is_a_400_that_lists_the_known_ones(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, NANO_12B, [user("hi")], extra_headers=fault("teapot"))
    assert "break_stream" in caught.value.message


def test_fault_times_applies_to_the_first_n_requests_per_key(client: openai.OpenAI) -> None:
    headers = fault("503", **{"Fault-Times": "2", "Fault-Key": "fails-twice"})
    outcomes = []
    for _ in range(3):
        try:
            ask(client, NANO_12B, [user("hi")], extra_headers=headers)
            outcomes.append("ok")
        except openai.InternalServerError:
            outcomes.append("503")
    assert outcomes == ["503", "503", "ok"]


def test_fault_times_counts_each_key_apart(client: openai.OpenAI) -> None:
    first = fault("429", **{"Fault-Times": "1", "Fault-Key": "key-a"})
    second = fault("429", **{"Fault-Times": "1", "Fault-Key": "key-b"})
    with pytest.raises(openai.RateLimitError):
        ask(client, NANO_12B, [user("hi")], extra_headers=first)
    with pytest.raises(openai.RateLimitError):
        ask(client, NANO_12B, [user("hi")], extra_headers=second)


# --- request record ------------------------------------------------------------------


def test_recorded_requests_show_the_body_as_sent(client: openai.OpenAI, http: httpx.Client) -> None:
    http.delete("/emulator/requests")
    ask(client, NANO_8B, [user(image_part(), "What is it?")])
    recorded = http.get("/emulator/requests").json()
    assert len(recorded) == 1
    parts = recorded[0]["body"]["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["image_url", "text"]


def test_recorded_requests_leave_out_the_authorization_header(
    client: openai.OpenAI, http: httpx.Client
) -> None:
    ask(client, NANO_12B, [user("hi")])
    headers = http.get("/emulator/requests").json()[-1]["headers"]
    assert "authorization" not in headers and headers["content-type"] == "application/json"


def test_deleting_recorded_requests_clears_them(client: openai.OpenAI, http: httpx.Client) -> None:
    ask(client, NANO_12B, [user("hi")])
    http.delete("/emulator/requests")
    assert http.get("/emulator/requests").json() == []
