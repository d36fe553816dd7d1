"""Profiles: each model's facts from its seed, pinned so a change is deliberate."""

from __future__ import annotations

import pytest

from nemovlm.profiles import PROFILES, get_profile

LLAMA8 = "nvidia/llama-3.1-nemotron-nano-vl-8b-v1"
NANO12 = "nvidia/nemotron-nano-12b-v2-vl"
GEMMA = "google/diffusiongemma-26b-a4b-it"
DIFFUSION = "fal-ai/nemotron-diffusion-vlm"
OMNI = "nvidia/nemotron-3-nano-omni/video"

TABLE = [
    # model, backend, images, video, images_first, img_tag, reasoning, default, tools, json
    (LLAMA8, "nim", {"jpeg", "png"}, set(), True, True, None, False, "prompt", False),
    (NANO12, "nim", {"jpeg", "png"}, {"mp4"}, False, False, "system_think", False, "native", True),
    (GEMMA, "nim", {"gif", "jpeg", "png"}, {"mp4"}, False, False, "chat_template_thinking", True,
     "native", True),
    (DIFFUSION, "fal", None, set(), False, False, None, False, "prompt", False),
    (OMNI, "fal", set(), {"mp4"}, False, False, "fal_reasoning_mode", False, "prompt", False),
]  # fmt: skip


@pytest.mark.parametrize("row", TABLE, ids=[r[0] for r in TABLE])
def test_profile_matches_its_seed(row: tuple) -> None:  # type: ignore[type-arg]
    model, backend, images, video, first, tag, switch, default, tools, json_schema = row
    p = get_profile(model)
    assert p.backend == backend
    assert (set(p.image_formats) if p.image_formats is not None else None) == images
    assert set(p.video_formats or ()) == video
    assert (p.images_first, p.img_tag) == (first, tag)
    assert (p.reasoning, p.reasoning_default) == (switch, default)
    assert (p.tools, p.json_schema) == (tools, json_schema)


def test_every_known_model_is_in_the_table() -> None:
    assert {r[0] for r in TABLE} == set(PROFILES)


def test_fal_limits_come_from_the_seeds() -> None:
    diffusion, omni = get_profile(DIFFUSION), get_profile(OMNI)
    assert (diffusion.max_images, diffusion.requires) == (1, "image")
    assert diffusion.param_ranges["block_length"] == (8, 128)
    assert (omni.max_videos, omni.requires) == (1, "video")
    assert (omni.max_video_seconds, omni.max_video_height) == (120.0, 1080)
    assert (diffusion.price_per_1k_tokens, omni.price_per_1k_tokens) == (0.005, 0.006)


def test_nano12_reasoning_is_not_for_video() -> None:
    assert get_profile(NANO12).reasoning_with_video is False


def test_unknown_nim_model_gets_a_plain_openai_profile() -> None:
    p = get_profile("acme/new-vlm")
    assert (p.model, p.backend, p.tools) == ("acme/new-vlm", "nim", "native")
    assert p.image_formats is None and not p.images_first and p.reasoning is None


def test_unknown_fal_app_gets_prompted_tools() -> None:
    p = get_profile("acme/new-fal-app", backend="fal")
    assert (p.backend, p.tools) == ("fal", "prompt")


def test_overrides_replace_fields_and_reject_unknown_names() -> None:
    assert get_profile(NANO12, {"max_tiles": 6}).max_tiles == 6
    with pytest.raises(ValueError, match="Unknown profile field"):
        get_profile(NANO12, {"max_tilez": 6})
