"""Bad input is refused before any request leaves the process, with a message that says
what to change (issue 7).

One test per row of the table in ``docs/errors.md`` (the last test keeps the two in
step). Every test ends by showing that nothing reached either emulator: the NIM
emulator's request log and the fal emulator's queue and upload store are still empty.
Calls go through the LangChain classes, as a user's would; the refusals themselves
live in the core, so the LlamaIndex classes refuse the same way.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.tools import tool
from llama_index.core.base.llms.types import ChatMessage, ImageBlock, TextBlock

from langchain_nemovlm import ChatNemoFal, ChatNemoVLM
from llama_index_nemovlm import NemoVLM
from nemovlm.emulator.fal import FalEmulator, use_fal_emulator
from nemovlm.emulator.server import RunningServer
from nemovlm.errors import UnsupportedInputError
from nemovlm.samples import make_image, make_mp4

LLAMA8 = "nvidia/llama-3.1-nemotron-nano-vl-8b-v1"
NANO12 = "nvidia/nemotron-nano-12b-v2-vl"
GEMMA = "google/diffusiongemma-26b-a4b-it"
DIFFUSION = "fal-ai/nemotron-diffusion-vlm"
OMNI = "nvidia/nemotron-3-nano-omni/video"

PNG = make_image(64, 48, "png")
JPEG = make_image(64, 48, "jpeg")
GIF = make_image(32, 32, "gif")
MP4 = make_mp4(duration_s=2.0, width=320, height=240, fps=4.0)
MOV = make_mp4(duration_s=2.0, brand="qt  ")
WEBM = b"\x1a\x45\xdf\xa3" + bytes(20) + b"webm" + bytes(100)


# --- what left the process -------------------------------------------------------------


class Outbox:
    """Everything that reached an emulator: NIM requests, fal submissions and uploads."""

    def __init__(self, nim: RunningServer, fal: FalEmulator) -> None:
        self.nim, self.fal = nim, fal
        # One client for the whole module: building one per call costs a TLS context.
        self.http = httpx.Client()

    def clear(self) -> None:
        self.http.delete(f"{self.nim.url}/emulator/requests").raise_for_status()
        self.fal.state.requests.clear()
        self.fal.state.files.clear()

    def sent(self) -> list[Any]:
        nim = self.http.get(f"{self.nim.url}/emulator/requests").json()
        return [*nim, *self.fal.state.requests.values(), *self.fal.state.files.values()]


@pytest.fixture(scope="module")
def fal_emulator() -> Iterator[FalEmulator]:
    with use_fal_emulator() as emulator:
        yield emulator


@pytest.fixture(scope="module")
def module_outbox(nim_server: RunningServer, fal_emulator: FalEmulator) -> Iterator[Outbox]:
    box = Outbox(nim_server, fal_emulator)
    yield box
    box.http.close()


@pytest.fixture
def outbox(module_outbox: Outbox) -> Outbox:
    module_outbox.clear()
    return module_outbox


def nim(model: str, url: str, **kwargs: Any) -> ChatNemoVLM:
    return ChatNemoVLM(model=model, base_url=url, max_retries=0, **kwargs)


def fal(model: str, **kwargs: Any) -> ChatNemoFal:
    return ChatNemoFal(model=model, api_key="emulator-key", poll_interval=0.01, **kwargs)


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image(data: bytes = PNG, mime: str = "image/png") -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": data_url(data, mime)}}


def video(data: bytes = MP4) -> dict[str, Any]:
    return {"type": "video_url", "video_url": {"url": data_url(data, "video/mp4")}}


def ask(*media: dict[str, Any], text: str = "What is in it?") -> list[BaseMessage]:
    return [HumanMessage(content=[{"type": "text", "text": text}, *media])]


def refused(call: Any, match: str) -> str:
    """Run ``call``; it must raise ``UnsupportedInputError`` matching ``match``."""
    with pytest.raises(UnsupportedInputError, match=match) as info:
        call()
    return str(info.value)


# --- media the model cannot take -------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "match"),
    [(MOV, r"accepts video as mp4.*is mov.*Remux it to MP4"), (WEBM, r"is webm.*Convert it")],
    ids=["mov", "webm"],
)
def test_a_video_container_the_model_does_not_take_is_refused(
    nim_url: str, outbox: Outbox, data: bytes, match: str
) -> None:
    refused(lambda: nim(NANO12, nim_url).invoke(ask(video(data))), match)
    assert outbox.sent() == []


def test_an_image_format_the_model_does_not_take_is_refused_when_it_cannot_be_converted(
    nim_url: str, outbox: Outbox
) -> None:
    llm = nim(NANO12, nim_url, profile_overrides={"convert_images_to": None})
    refused(
        lambda: llm.invoke(ask(image(GIF, "image/gif"))),
        r"accepts images as jpeg, png; the image .* is gif\. Convert it",
    )
    assert outbox.sent() == []


def test_a_video_to_a_nim_model_without_video_is_refused(nim_url: str, outbox: Outbox) -> None:
    message = refused(lambda: nim(LLAMA8, nim_url).invoke(ask(video())), r"accepts no video input")
    assert NANO12 in message  # names models that do take video
    assert outbox.sent() == []


def test_a_video_to_the_diffusion_vlm_is_refused(outbox: Outbox) -> None:
    refused(lambda: fal(DIFFUSION).invoke(ask(image(), video())), r"accepts no video input")
    assert outbox.sent() == []


def test_an_image_to_the_omni_video_model_is_refused(outbox: Outbox) -> None:
    refused(lambda: fal(OMNI).invoke(ask(video(), image())), r"accepts no image input")
    assert outbox.sent() == []


# --- how many media ----------------------------------------------------------------------


def test_a_second_image_to_the_diffusion_vlm_is_refused(outbox: Outbox) -> None:
    refused(
        lambda: fal(DIFFUSION).invoke(ask(image(), image(JPEG, "image/jpeg"))),
        r"at most 1 image per request; this conversation has 2\. Send one image per call",
    )
    assert outbox.sent() == []


def test_an_image_from_an_earlier_turn_counts_towards_the_one_image(outbox: Outbox) -> None:
    history = [*ask(image()), AIMessage(content="A square."), *ask(image(JPEG, "image/jpeg"))]
    refused(lambda: fal(DIFFUSION).invoke(history), r"this conversation has 2")
    assert outbox.sent() == []


def test_a_second_video_to_omni_is_refused(outbox: Outbox) -> None:
    refused(lambda: fal(OMNI).invoke(ask(video(), video())), r"at most 1 video per request")
    assert outbox.sent() == []


def test_the_diffusion_vlm_without_an_image_is_refused(outbox: Outbox) -> None:
    refused(lambda: fal(DIFFUSION).invoke("What is this?"), r"needs exactly one image.*add an")
    assert outbox.sent() == []


def test_omni_without_a_video_is_refused(outbox: Outbox) -> None:
    refused(lambda: fal(OMNI).invoke("What happens?"), r"needs exactly one video.*add a video")
    assert outbox.sent() == []


# --- video sampling and limits ----------------------------------------------------------


def test_fps_and_num_frames_together_are_refused(nim_url: str, outbox: Outbox) -> None:
    llm = nim(NANO12, nim_url, video_fps=1.0, video_num_frames=4)
    refused(lambda: llm.invoke(ask(video())), r"mutually exclusive: set only one of them")
    assert outbox.sent() == []


def test_more_than_128_frames_are_refused(nim_url: str, outbox: Outbox) -> None:
    llm = nim(NANO12, nim_url, video_num_frames=129)
    refused(lambda: llm.invoke(ask(video())), r"between 1 and 128 .*got 129")
    assert outbox.sent() == []


def test_a_video_over_two_minutes_to_omni_is_refused(outbox: Outbox) -> None:
    long_video = video(make_mp4(duration_s=121.0, fps=1.0))
    refused(lambda: fal(OMNI).invoke(ask(long_video)), r"lasts 121\.00 s.*at most 120 s\. Trim it")
    assert outbox.sent() == []


def test_a_video_above_1080p_to_omni_is_refused(outbox: Outbox) -> None:
    uhd = video(make_mp4(width=3840, height=2160))
    refused(lambda: fal(OMNI).invoke(ask(uhd)), r"3840x2160.*up to 1080p\. Scale it down")
    assert outbox.sent() == []


# --- numeric settings --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"num_inference_steps": 100}, r"multiple of 16 .* such as 112"),
        ({"num_inference_steps": 8}, r"there are 16 blocks.*at least 16"),
        ({"max_tokens": 256, "block_length": 64, "num_inference_steps": 6}, r"4 blocks"),
        ({"inference_steps": 40}, r"inference_steps=40 .*multiple of 16"),
    ],
    ids=["not-a-multiple", "below-the-block-count", "own-block-length", "alias"],
)
def test_explicit_steps_that_break_the_step_rule_are_refused(
    outbox: Outbox, settings: dict[str, Any], match: str
) -> None:
    refused(lambda: fal(DIFFUSION).invoke(ask(image()), **settings), match)
    assert outbox.sent() == []


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("max_tokens", 0, r"max_tokens must be >= 1 \(got 0\)"),
        ("temperature", -0.5, r"temperature must be >= 0"),
        ("top_p", 1.5, r"top_p must be between 0 and 1 \(got 1\.5\)"),
        ("top_p", -0.1, r"top_p must be between 0 and 1"),
    ],
)
def test_out_of_range_settings_for_a_nim_model_are_refused(
    nim_url: str, outbox: Outbox, name: str, value: float, match: str
) -> None:
    refused(lambda: nim(NANO12, nim_url, **{name: value}).invoke("hi"), match)
    assert outbox.sent() == []


@pytest.mark.parametrize(
    ("model", "name", "value", "match"),
    [
        (DIFFUSION, "max_tokens", 8193, r"max_tokens must be between 1 and 8192"),
        (DIFFUSION, "threshold", 1.5, r"threshold must be between 0 and 1 .*got 1\.5"),
        (DIFFUSION, "threshold", -0.1, r"threshold must be between 0 and 1"),
        (DIFFUSION, "block_length", 4, r"block_length must be between 8 and 128 .*got 4"),
        (DIFFUSION, "block_length", 256, r"block_length must be between 8 and 128"),
        (DIFFUSION, "num_inference_steps", 2048, r"between 1 and 1024"),
        (OMNI, "max_tokens", 20_001, r"max_tokens must be between 1 and 20000"),
        (OMNI, "temperature", 2.5, r"temperature must be between 0 and 2"),
        (OMNI, "top_p", 1.1, r"top_p must be between 0 and 1"),
    ],
)
def test_out_of_range_settings_for_a_fal_app_are_refused(
    outbox: Outbox, model: str, name: str, value: float, match: str
) -> None:
    media = image() if model == DIFFUSION else video()
    refused(lambda: fal(model, **{name: value}).invoke(ask(media)), match)
    assert outbox.sent() == []


@pytest.mark.parametrize(("name", "value"), [("seed", 7), ("temperature", 0.5), ("top_p", 0.9)])
def test_a_setting_the_diffusion_vlm_does_not_take_is_refused(
    outbox: Outbox, name: str, value: float
) -> None:
    refused(
        lambda: fal(DIFFUSION, **{name: value}).invoke(ask(image())), rf"takes no {name}; remove"
    )
    assert outbox.sent() == []


# --- reasoning ------------------------------------------------------------------------------


def test_reasoning_asked_of_a_nim_model_that_cannot_reason_is_refused(
    nim_url: str, outbox: Outbox
) -> None:
    llm = nim(LLAMA8, nim_url, reasoning=True)
    refused(lambda: llm.invoke("hi"), r"cannot switch reasoning on or off; leave reasoning=None")
    assert outbox.sent() == []


def test_reasoning_asked_of_the_diffusion_vlm_is_refused(outbox: Outbox) -> None:
    refused(lambda: fal(DIFFUSION, reasoning=True).invoke(ask(image())), r"leave reasoning=None")
    assert outbox.sent() == []


def test_reasoning_with_video_on_nano_12b_is_refused(nim_url: str, outbox: Outbox) -> None:
    llm = nim(NANO12, nim_url, reasoning=True)
    refused(lambda: llm.invoke(ask(video())), r"does not reason over video.*drop reasoning=True")
    assert outbox.sent() == []


def test_include_reasoning_false_while_streaming_is_refused(nim_url: str, outbox: Outbox) -> None:
    llm = nim(GEMMA, nim_url, include_reasoning=False)
    refused(lambda: list(llm.stream("hi")), r"not supported when streaming.*use invoke\(\)")
    assert outbox.sent() == []


async def test_include_reasoning_false_while_streaming_async_is_refused(
    nim_url: str, outbox: Outbox
) -> None:
    llm = nim(GEMMA, nim_url, include_reasoning=False)
    with pytest.raises(UnsupportedInputError, match="not supported when streaming"):
        async for _ in llm.astream("hi"):
            pass
    assert outbox.sent() == []


def test_include_reasoning_false_on_a_model_without_the_switch_is_refused(
    nim_url: str, outbox: Outbox
) -> None:
    llm = nim(NANO12, nim_url, include_reasoning=False)
    refused(lambda: llm.invoke("hi"), r"no include_reasoning switch; leave include_reasoning")
    assert outbox.sent() == []


# --- tools ------------------------------------------------------------------------------------


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}"


def test_an_unknown_tool_choice_name_is_refused_when_binding(nim_url: str, outbox: Outbox) -> None:
    refused(
        lambda: nim(NANO12, nim_url).bind_tools([get_weather], tool_choice="get_wether"),
        r"tool_choice='get_wether' names no bound tool; bound tools: \['get_weather'\]",
    )
    assert outbox.sent() == []


def test_an_unknown_tool_choice_name_is_refused_per_call(nim_url: str, outbox: Outbox) -> None:
    bound = nim(NANO12, nim_url).bind_tools([get_weather])
    refused(lambda: bound.invoke("hi", tool_choice="lookup"), r"names no bound tool")
    assert outbox.sent() == []


# --- data URLs, empty lists, corrupt files -------------------------------------------------


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("data:image/png;base64", r"no ',' between header and data"),
        ("data:image/png,raw-bytes", r"not base64-encoded \(';base64' is missing"),
        ("data:image/png;base64,@@@@", r"not valid base64"),
        ("data:image/png;base64,", r"is empty"),
        ("data:image/png;base64,iVBORw0KG", r"length 9 is impossible"),
    ],
    ids=["no-comma", "not-base64", "bad-alphabet", "empty", "cut-short"],
)
def test_a_malformed_data_url_is_refused(
    nim_url: str, outbox: Outbox, url: str, match: str
) -> None:
    part = {"type": "image_url", "image_url": {"url": url}}
    refused(lambda: nim(NANO12, nim_url).invoke(ask(part)), match)
    assert outbox.sent() == []


def test_an_empty_message_list_is_refused_for_nim(nim_url: str, outbox: Outbox) -> None:
    refused(lambda: nim(NANO12, nim_url).invoke([]), r"empty: pass at least one message")
    assert outbox.sent() == []


def test_an_empty_message_list_is_refused_for_fal(outbox: Outbox) -> None:
    refused(lambda: fal(DIFFUSION).invoke([]), r"empty: pass at least one message")
    assert outbox.sent() == []


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (PNG[: len(PNG) // 2], r"cannot be decoded .*corrupt or truncated"),
        (JPEG[: len(JPEG) // 2], r"cannot be decoded|corrupt or truncated"),
        (PNG[:16] + bytes(200), r"cannot be decoded|corrupt or truncated"),
        (b"GIF89a" + bytes(10), r"cannot be decoded|corrupt or truncated"),
        (b"just some text, not a picture", r"not in an image format this package recognises"),
    ],
    ids=["truncated-png", "truncated-jpeg", "png-header-then-zeros", "gif-header-only", "text"],
)
def test_a_corrupt_image_is_refused(nim_url: str, outbox: Outbox, data: bytes, match: str) -> None:
    refused(lambda: nim(NANO12, nim_url).invoke(ask(image(data))), match)
    assert outbox.sent() == []


def test_a_corrupt_image_file_given_as_a_path_is_refused(
    nim_url: str, outbox: Outbox, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(PNG[: len(PNG) // 2])
    llm = NemoVLM(model=NANO12, base_url=nim_url, max_retries=0)
    message = ChatMessage(role="user", blocks=[ImageBlock(path=broken), TextBlock(text="What?")])
    refused(lambda: llm.chat([message]), rf"file {re.escape(str(broken))}.*corrupt or truncated")
    assert outbox.sent() == []


def test_a_corrupt_video_is_refused(nim_url: str, outbox: Outbox) -> None:
    cut = MP4[: len(MP4) // 3]
    refused(lambda: nim(NANO12, nim_url).invoke(ask(video(cut))), r"cannot be read")
    assert outbox.sent() == []


def test_a_corrupt_video_to_omni_is_refused_before_upload(outbox: Outbox) -> None:
    cut = MP4[: len(MP4) // 3]
    refused(lambda: fal(OMNI).invoke(ask(video(cut))), r"cannot be read")
    assert outbox.sent() == []


# --- the docs table --------------------------------------------------------------------------


def test_every_test_here_has_a_row_in_the_docs_table_and_back() -> None:
    docs = (Path(__file__).parents[1] / "docs" / "errors.md").read_text()
    section = docs.split("\n## Bad input\n", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(test_[a-z0-9_]+)`", section))
    here = {name for name in globals() if name.startswith("test_")}
    assert sorted(here - named) == [], "tests without a row in docs/errors.md"
    assert sorted(named - here) == [], "rows in docs/errors.md naming no test here"
