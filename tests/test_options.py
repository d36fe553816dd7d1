"""Request options against a profile: a rule the profile states is applied, a rule it
leaves open (``None``) lets the setting through to the server, which has the last word.

Calls go over HTTP to the NIM emulator through the core's own backend."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from nemovlm.backends.nim import NIMBackend
from nemovlm.errors import UnsupportedInputError
from nemovlm.messages import MediaPart, TextPart, Turn
from nemovlm.options import RequestOptions
from nemovlm.profiles import get_profile
from nemovlm.samples import make_image

if TYPE_CHECKING:
    from tests.conftest import WireLog

GEMMA = "google/diffusiongemma-26b-a4b-it"
NEW = "acme/new-vlm"
PNG = make_image(64, 48, "png")


def backend(model: str, nim_url: str, **overrides: Any) -> NIMBackend:
    return NIMBackend(get_profile(model, overrides), nim_url)


def ask_image() -> list[Turn]:
    return [Turn("user", [TextPart("What is this?"), MediaPart("image", data=PNG)])]


def test_a_model_known_to_take_no_tiles_refuses_max_num_tiles(nim_url: str, wire: WireLog) -> None:
    with pytest.raises(UnsupportedInputError, match=f"{GEMMA} does not take max_num_tiles"):
        backend(GEMMA, nim_url).complete(ask_image(), RequestOptions(max_num_tiles=3))
    assert wire.bodies() == []


def test_an_unknown_model_passes_max_num_tiles_through(nim_url: str, wire: WireLog) -> None:
    backend(NEW, nim_url).complete(ask_image(), RequestOptions(max_num_tiles=3))
    assert wire.last()["mm_processor_kwargs"] == {"max_num_tiles": 3}


def test_a_model_known_to_take_no_video_sampling_refuses_video_fps(
    nim_url: str, wire: WireLog
) -> None:
    with pytest.raises(UnsupportedInputError, match="does not take video sampling settings"):
        backend(GEMMA, nim_url).complete(ask_image(), RequestOptions(video_fps=2.0))
    assert wire.bodies() == []


def test_a_profile_override_can_open_a_rule_a_known_model_closes(
    nim_url: str, wire: WireLog
) -> None:
    backend(GEMMA, nim_url, tiles=None).complete(ask_image(), RequestOptions(max_num_tiles=3))
    assert wire.last()["mm_processor_kwargs"] == {"max_num_tiles": 3}


def test_img_tag_refusal_says_how_to_switch_it_on(nim_url: str, wire: WireLog) -> None:
    with pytest.raises(UnsupportedInputError, match=r"image_transport='parts'.*img_tag"):
        backend(NEW, nim_url).complete(ask_image(), RequestOptions(image_transport="img_tag"))
    assert wire.bodies() == []


def test_a_setting_that_is_not_a_number_is_refused_by_name(nim_url: str, wire: WireLog) -> None:
    llm = backend(NEW, nim_url, param_ranges={"threshold": (0.0, 1.0)})
    with pytest.raises(UnsupportedInputError, match=r"threshold must be a number \(got 'high'\)"):
        llm.complete(ask_image(), RequestOptions(extra={"threshold": "high"}))
    assert wire.bodies() == []


def test_a_profile_range_narrows_the_one_every_request_obeys(nim_url: str, wire: WireLog) -> None:
    llm = backend(NEW, nim_url, param_ranges={"temperature": (0.0, 1.0)})
    with pytest.raises(UnsupportedInputError, match=f"between 0 and 1 for {NEW} \\(got 1.5\\)"):
        llm.complete(ask_image(), RequestOptions(temperature=1.5))
    backend(NEW, nim_url).complete(ask_image(), RequestOptions(temperature=1.5))
    assert wire.last()["temperature"] == 1.5
