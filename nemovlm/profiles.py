"""Facts about models: what each accepts on the wire and how it reasons.

A profile is data. Mapping code asks the profile (``profile.images_first``), never
``if model == ...``. Every field documents its default and, for the five known
models, the seed document it comes from (the models' API pages; ``docs/DESIGN.md``
summarises each one's wire contract). Unknown model ids
get ``GENERIC``: plain OpenAI-compatible parts, no quirks, so a new NIM needs no
release.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any, Literal

from typing_extensions import assert_never

from nemovlm.model_ids import warn_if_near_miss

Backend = Literal["nim", "fal"]
ReasoningSwitch = Literal["system_think", "chat_template_thinking", "fal_reasoning_mode"]
ToolMode = Literal["native", "prompt"]


@dataclass(frozen=True)
class StepSchedule:
    """A diffusion decoder's step schedule (seeds/fal-nemotron-diffusion-vlm.md): the
    answer is decoded in ``max_tokens / block_length`` blocks (a partial last block
    still takes one), and ``num_inference_steps`` must be a multiple of that block
    count, at least one step per block. Its upper bound is in ``param_ranges``."""

    default_steps: int = 256
    """Steps the app uses when none are sent; the core rounds it up to fit the rule."""
    default_block_length: int = 32
    """``block_length`` the app uses when none is sent."""
    default_max_tokens: int = 512
    """``max_tokens`` the blocks are counted for when neither the call nor the
    profile's ``default_max_tokens`` gives one (the diffusion app's 512)."""
    alias: str | None = "inference_steps"
    """Another name the app accepts for ``num_inference_steps``."""

    def blocks(self, max_tokens: int, block_length: int) -> int:
        """Blocks in the schedule; a partial last block still takes a block."""
        return math.ceil(max_tokens / block_length)


@dataclass(frozen=True)
class ModelProfile:
    model: str
    """The model id as the server knows it."""
    name: str = ""
    """Human-readable name."""
    backend: Backend = "nim"

    # --- media in ---------------------------------------------------------------
    image_formats: frozenset[str] | None = None
    """Image formats the server decodes (``"jpeg"``, ``"png"``, ``"gif"``...).
    ``None`` (default): anything, passed through untouched. Empty: no images."""
    convert_images_to: str | None = "png"
    """Format an unaccepted image is converted to client-side; ``None`` refuses it."""
    video_formats: frozenset[str] | None = None
    """Video containers accepted. ``None`` (default): anything. Empty: no video."""
    images_first: bool = False
    """Move media parts before text parts of a user message (order among media kept)."""
    img_tag: bool = False
    """The server understands ``<img src="..." />`` inside plain-text content."""
    max_images: int | None = None
    """Images per request; ``None`` (default) is no limit."""
    max_videos: int | None = None
    """Videos per request; ``None`` (default) is no limit."""
    requires: Literal["image", "video"] | None = None
    """A medium every request must carry (fal endpoints)."""
    video_sampling: bool | None = None
    """``media_io_kwargs.video.fps|num_frames`` are understood. ``None`` (default):
    not known, so the settings pass through; ``False``: they are refused."""
    max_video_frames: int = 128
    """Upper bound for ``video_num_frames``. Default 128, the one limit a seed states
    (seeds/nim-nemotron-nano-12b-v2-vl.md: "a maximum of 128 frames per video")."""
    tiles: bool | None = None
    """``mm_processor_kwargs.max_num_tiles`` is understood. ``None`` (default): not
    known, so the setting passes through; ``False``: it is refused."""
    tile_size: int | None = None
    """Side of one image tile in pixels, when the model tiles images."""
    max_tiles: int | None = None
    """Most tiles the model uses for one image; with ``tile_size`` it bounds the
    pixels worth sending (client-side downscale)."""
    tokens_per_tile: int = 256
    """Prompt tokens one image tile costs (one whole image, or one video frame, when the
    model does not tile), for offline estimates (``nemovlm.tokens``). Default 256: a
    512x512 tile is 1024 patches of 16 px merged 2x2, and the seed's example
    (seeds/nim-llama-3.1-nemotron-nano-vl-8b-v1.md: 3372 prompt tokens for one large
    4:3 image) is 13 tiles x 256 + 44; Gemma-family encoders also use 256 per image."""
    max_video_seconds: float | None = None
    max_video_height: int | None = None
    hosted_inline_budget: int = 180_000
    """Base64 characters of media one request may carry inline on NVIDIA's hosted
    catalog (all media together); larger media go up as NVCF assets. 180,000 where the
    model's catalog reference says nothing (the Nano VL 8B reference: "180KB")."""

    # --- reasoning --------------------------------------------------------------
    reasoning: ReasoningSwitch | None = None
    """How reasoning is switched; ``None``: the model cannot be switched."""
    reasoning_default: bool = False
    """Whether the model reasons when nothing is asked."""
    reasoning_with_video: bool = True
    """``False``: reasoning is not supported when the request carries a video."""
    include_reasoning_param: bool = False
    """``include_reasoning: false`` hides the trace (non-streaming only)."""

    # --- tools and structured output -------------------------------------------
    tools: ToolMode = "native"
    """``native``: OpenAI ``tools``; ``prompt``: the core's prompt protocol."""
    json_schema: bool = False
    """``response_format: {"type": "json_schema"}`` is honoured."""

    # --- limits and prices ------------------------------------------------------
    context_window: int = 128_000
    max_output_tokens: int | None = None
    price_per_1k_tokens: float | None = None
    """USD per 1000 tokens (input + output), when the seller publishes one."""
    param_ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    """Inclusive ranges of numeric request parameters, checked before sending; they
    narrow the ranges every request obeys (``nemovlm.options.WIRE_RANGES``)."""
    default_max_tokens: int | None = None
    """``max_tokens`` the server uses when none is sent; ``None`` (default): unknown."""

    # --- the request's own fields (fal apps) -------------------------------------
    sampling_params: frozenset[str] = frozenset({"seed", "temperature", "top_p"})
    """Generic sampling settings the server takes; fal refuses the rest before sending.
    Default: OpenAI's (``seed``, ``temperature``, ``top_p``); an unknown fal app: none."""
    media_field: str | None = None
    """The argument the one image or video goes in (``image_url``). ``None`` (default):
    ``<requires>_url`` when the app requires a medium, else no media argument."""
    system_field: str | None = None
    """The argument system text goes in (``system_prompt``). ``None`` (default): it is
    rendered at the top of the one prompt."""
    step_schedule: StepSchedule | None = None
    """The diffusion step rule the core applies to ``num_inference_steps``; ``None``
    (default): the model has none."""

    @property
    def accepts_images(self) -> bool:
        return self.image_formats is None or bool(self.image_formats)

    @property
    def accepts_video(self) -> bool:
        return self.video_formats is None or bool(self.video_formats)

    @property
    def can_reason(self) -> bool:
        return self.reasoning is not None

    @property
    def max_image_pixels(self) -> int | None:
        if self.tile_size and self.max_tiles:
            return self.tile_size * self.tile_size * self.max_tiles
        return None

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> ModelProfile:
        """A copy with some fields replaced; unknown names are an error."""
        if not overrides:
            return self
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"Unknown profile field(s) {unknown}; known fields: {sorted(known)}")
        return replace(self, **dict(overrides))


_JPEG_PNG = frozenset({"jpeg", "png"})
_MP4 = frozenset({"mp4"})
_NONE: frozenset[str] = frozenset()

GENERIC = ModelProfile(model="", name="OpenAI-compatible model")

PROFILES: Mapping[str, ModelProfile] = MappingProxyType(
    {
        p.model: p
        for p in (
            # seeds/nim-llama-3.1-nemotron-nano-vl-8b-v1.md
            ModelProfile(
                model="nvidia/llama-3.1-nemotron-nano-vl-8b-v1",
                name="Llama 3.1 Nemotron Nano VL 8B v1",
                image_formats=_JPEG_PNG,
                video_formats=_NONE,
                images_first=True,  # "put the image before any text part"
                img_tag=True,  # "Text-only support": <img src=...> in text content
                video_sampling=False,
                tiles=False,
                tools="prompt",  # not in NIM's tool-calling list
                # Model card: 512x512 tiles, up to 12 per image (+ thumbnail).
                tile_size=512,
                max_tiles=12,
                context_window=16_384,
            ),
            # seeds/nim-nemotron-nano-12b-v2-vl.md
            ModelProfile(
                model="nvidia/nemotron-nano-12b-v2-vl",
                name="Nemotron Nano 12B v2 VL",
                image_formats=_JPEG_PNG,
                video_formats=_MP4,
                video_sampling=True,
                max_video_frames=128,  # "maximum of 128 frames per video"
                tiles=True,
                # Model card: dynamic tiling, 512x512 tiles, up to 12 per image.
                tile_size=512,
                max_tiles=12,
                reasoning="system_think",  # "/think" in the system prompt
                reasoning_default=False,
                reasoning_with_video=False,  # "For video inputs, reasoning is not supported"
                tools="native",
                json_schema=True,
                context_window=128_000,
            ),
            # seeds/nim-diffusiongemma-26b-a4b-it.md
            ModelProfile(
                model="google/diffusiongemma-26b-a4b-it",
                name="DiffusionGemma 26B A4B IT",
                image_formats=frozenset({"gif", "jpeg", "png"}),
                video_formats=_MP4,
                video_sampling=False,
                tiles=False,
                reasoning="chat_template_thinking",
                reasoning_default=True,  # "It is turned on by default"
                include_reasoning_param=True,
                tools="native",
                json_schema=True,
                context_window=128_000,
            ),
            # seeds/fal-nemotron-diffusion-vlm.md
            ModelProfile(
                model="fal-ai/nemotron-diffusion-vlm",
                name="Nemotron Diffusion VLM 8B (fal)",
                backend="fal",
                image_formats=None,  # fal fetches the URL; the seed names no format list
                video_formats=_NONE,
                max_images=1,
                requires="image",
                video_sampling=False,
                tiles=False,
                tools="prompt",
                max_output_tokens=8192,
                price_per_1k_tokens=0.005,
                param_ranges={
                    "max_tokens": (1, 8192),
                    "num_inference_steps": (1, 1024),
                    "inference_steps": (1, 1024),
                    "block_length": (8, 128),
                    "threshold": (0.0, 1.0),
                },
                default_max_tokens=512,
                sampling_params=frozenset(),  # the schema has no seed/temperature/top_p
                media_field="image_url",
                step_schedule=StepSchedule(),  # 256 steps, block_length 32
            ),
            # seeds/fal-nemotron-3-nano-omni-video.md
            ModelProfile(
                model="nvidia/nemotron-3-nano-omni/video",
                name="Nemotron 3 Nano Omni, video (fal)",
                backend="fal",
                image_formats=_NONE,
                video_formats=_MP4,
                max_videos=1,
                requires="video",
                max_video_seconds=120.0,  # "max 2 minutes"
                max_video_height=1080,  # "up to 1080p"
                video_sampling=False,
                tiles=False,
                reasoning="fal_reasoning_mode",
                reasoning_default=False,  # reasoning_mode defaults to no_think
                tools="prompt",
                max_output_tokens=20_000,
                price_per_1k_tokens=0.006,
                param_ranges={
                    "max_tokens": (1, 20_000),
                    "temperature": (0.0, 2.0),
                    "top_p": (0.0, 1.0),
                },
                default_max_tokens=1024,
                sampling_params=frozenset({"temperature", "top_p"}),
                media_field="video_url",
                system_field="system_prompt",
            ),
        )
    }
)


def get_profile(
    model: str, overrides: Mapping[str, Any] | None = None, *, backend: Backend = "nim"
) -> ModelProfile:
    """The profile for ``model``: a known one, else a generic one for ``backend``
    (OpenAI-compatible on NIM; on fal, an app this package does not know yet, which
    has no native tools and takes no sampling settings until its profile says so)."""
    base = PROFILES.get(model)
    if base is None:
        warn_if_near_miss(model, PROFILES)
        base = replace(GENERIC, model=model, name=model, backend=backend)
        if backend == "fal":
            base = replace(base, tools="prompt", sampling_params=frozenset())
        elif backend != "nim":
            assert_never(backend)
    return base.with_overrides(overrides)
