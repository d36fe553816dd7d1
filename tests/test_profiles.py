"""Profiles: each model's facts from its seed, pinned so a change is deliberate."""

from __future__ import annotations

import pytest

from nemovlm.profiles import PROFILES, StepSchedule, get_profile

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
    assert {r[0] for r in WIRE_TABLE} == set(PROFILES) | {NEW_NIM, NEW_FAL}


NEW_NIM, NEW_FAL = "acme/new-vlm", "acme/new-fal-app"
SAMPLING = {"seed", "temperature", "top_p"}
DIFFUSION_STEPS = StepSchedule(default_steps=256, default_block_length=32, alias="inference_steps")

# The request's own fields and the tri-state rules (None: unknown, passed through).
WIRE_TABLE = [
    # model, media field, system field, sampling params, default max_tokens, step schedule,
    # video sampling, tiles, max video frames
    (LLAMA8, None, None, SAMPLING, None, None, False, False, 128),
    (NANO12, None, None, SAMPLING, None, None, True, True, 128),
    (GEMMA, None, None, SAMPLING, None, None, False, False, 128),
    (DIFFUSION, "image_url", None, set(), 512, DIFFUSION_STEPS, False, False, 128),
    (OMNI, "video_url", "system_prompt", {"temperature", "top_p"}, 1024, None, False, False, 128),
    (NEW_NIM, None, None, SAMPLING, None, None, None, None, 128),
    (NEW_FAL, None, None, set(), None, None, None, None, 128),
]  # fmt: skip


@pytest.mark.parametrize("row", WIRE_TABLE, ids=[r[0] for r in WIRE_TABLE])
def test_profile_states_its_wire_fields(row: tuple) -> None:  # type: ignore[type-arg]
    model, media, system, sampling, max_tokens, steps, video_sampling, tiles, frames = row
    p = get_profile(model, backend="fal" if model == NEW_FAL else "nim")
    assert (p.media_field, p.system_field) == (media, system)
    assert set(p.sampling_params) == sampling
    assert (p.default_max_tokens, p.step_schedule) == (max_tokens, steps)
    assert (p.video_sampling, p.tiles, p.max_video_frames) == (video_sampling, tiles, frames)


def test_diffusion_steps_range_up_to_1024_under_both_names() -> None:
    ranges = get_profile(DIFFUSION).param_ranges
    assert ranges["num_inference_steps"] == ranges["inference_steps"] == (1, 1024)


def test_a_partial_last_diffusion_block_still_takes_a_block() -> None:
    assert StepSchedule().blocks(max_tokens=512, block_length=32) == 16
    assert StepSchedule().blocks(max_tokens=500, block_length=32) == 16


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
