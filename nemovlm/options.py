"""Request settings in neutral form, and the checks that need only them and a profile.

Adapters fill ``RequestOptions`` from their own fields and call kwargs; backends read
it when mapping out. Checks that also need the conversation (video present, how many
images) live in ``nemovlm.pipeline``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from nemovlm.errors import UnsupportedInputError
from nemovlm.messages import ToolSpec
from nemovlm.profiles import ModelProfile

ImageTransport = Literal["parts", "img_tag"]
MAX_VIDEO_FRAMES = 128  # seeds/nim-nemotron-nano-12b-v2-vl.md: "a maximum of 128 frames"


@dataclass(frozen=True)
class RequestOptions:
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] | None = None
    seed: int | None = None
    reasoning: bool | None = None
    """``None``: the model's default; ``True``/``False``: switched the model's own way."""
    include_reasoning: bool = True
    """``False`` asks the server to leave the trace out (where the model allows it)."""
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str | None = None
    """``"auto"``, ``"none"``, ``"required"`` or the name of one tool."""
    json_schema: Mapping[str, Any] | None = None
    """Structured output: ``{"name": ..., "schema": {...}, "strict": bool}``."""
    image_transport: ImageTransport = "parts"
    video_fps: float | None = None
    video_num_frames: int | None = None
    max_num_tiles: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Backend-specific parameters, passed through after the backend validates them."""

    def merged(self, **changes: Any) -> RequestOptions:
        """A copy with the non-``None`` values of ``changes`` applied."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


_FIELDS = frozenset(
    {
        "max_tokens", "temperature", "top_p", "seed", "reasoning", "include_reasoning",
        "tools", "tool_choice", "json_schema", "image_transport", "video_fps",
        "video_num_frames", "max_num_tiles",
    }
)  # fmt: skip
# Keys the frameworks pass along for tracing; never wire parameters.
_DROPPED = frozenset({"ls_structured_output_format", "stream_options", "model"})


def build_options(
    defaults: RequestOptions,
    overrides: Mapping[str, Any] | None = None,
    *,
    extra: Mapping[str, Any] | None = None,
    stop: Sequence[str] | None = None,
) -> RequestOptions:
    """``defaults`` (a model's settings, ``nemovlm.settings``), then per-call overrides.

    Keys that name a ``RequestOptions`` field set it (``None`` in ``overrides`` keeps
    the setting); any other override key is a backend-specific parameter and lands in
    ``extra`` (after ``defaults.extra`` and ``extra``, e.g. ``model_kwargs``). ``tools``
    must already be ``ToolSpec``s; ``tool_choice`` is normalised against them.
    """
    values: dict[str, Any] = {}
    wire = {**defaults.extra, **(extra or {})}
    for key, value in (overrides or {}).items():
        if key in _FIELDS:
            if value is not None:
                values[key] = value
        elif key == "response_format" and value is not None:
            # Frameworks (LangChain's create_agent) pass OpenAI's response_format; the
            # core decides per model between response_format and the prompt protocol.
            values["json_schema"] = _json_schema_from_response_format(value)
        elif key not in _DROPPED:
            wire[key] = value
    if "tools" in values:
        values["tools"] = tuple(values["tools"])
    if "tool_choice" in values:
        from nemovlm.tools import normalize_tool_choice

        values["tool_choice"] = normalize_tool_choice(
            values["tool_choice"], values.get("tools", defaults.tools)
        )
    if stop:
        values["stop"] = tuple(stop)
    return replace(defaults, **values, extra=wire)


def _json_schema_from_response_format(value: Any) -> Mapping[str, Any]:
    kind = value.get("type") if isinstance(value, Mapping) else None
    if kind == "json_schema" and isinstance(value.get("json_schema"), Mapping):
        return value["json_schema"]
    if kind == "json_object":
        return {"name": "json_object", "schema": {"type": "object"}}
    raise UnsupportedInputError(
        f"response_format={value!r} is not understood: pass "
        '{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}} '
        'or {"type": "json_object"}.'
    )


def check_options(options: RequestOptions, profile: ModelProfile, *, stream: bool) -> None:
    """Refuse settings the model cannot take, before anything is sent."""
    model = profile.model
    for name in ("temperature", "top_p", "video_fps"):
        value = getattr(options, name)
        if value is not None and not math.isfinite(value):
            raise UnsupportedInputError(f"{name} must be a finite number (got {value}).")
    if options.video_fps is not None and options.video_num_frames is not None:
        raise UnsupportedInputError(
            "video_fps and video_num_frames are mutually exclusive: set only one of them."
        )
    if options.video_fps is not None and options.video_fps <= 0:
        raise UnsupportedInputError(f"video_fps must be > 0 (got {options.video_fps}).")
    if options.video_num_frames is not None:
        limit = profile.max_video_frames or MAX_VIDEO_FRAMES
        if not 1 <= options.video_num_frames <= limit:
            raise UnsupportedInputError(
                f"video_num_frames must be between 1 and {limit} for {model} "
                f"(got {options.video_num_frames})."
            )
    sampling = options.video_fps is not None or options.video_num_frames is not None
    if sampling and not profile.video_sampling and profile.model in _known():
        raise UnsupportedInputError(
            f"{model} does not take video sampling settings (video_fps / video_num_frames); "
            "remove them."
        )
    if options.max_num_tiles is not None:
        if options.max_num_tiles < 1:
            raise UnsupportedInputError(
                f"max_num_tiles must be >= 1 (got {options.max_num_tiles})."
            )
        if not profile.tiles and profile.model in _known():
            raise UnsupportedInputError(f"{model} does not take max_num_tiles; remove it.")
    if options.reasoning is not None and not profile.can_reason:
        raise UnsupportedInputError(
            f"{model} cannot switch reasoning on or off; leave reasoning=None."
        )
    if not options.include_reasoning:
        if not profile.include_reasoning_param:
            raise UnsupportedInputError(
                f"{model} has no include_reasoning switch; leave include_reasoning=True."
            )
        if stream:
            raise UnsupportedInputError(
                f"include_reasoning=False is not supported when streaming with {model}: "
                "use invoke() instead of stream(), or leave include_reasoning=True."
            )
    if options.image_transport == "img_tag" and not profile.img_tag:
        raise UnsupportedInputError(
            f"image_transport='img_tag' is only for models that read <img> tags in text "
            f"({_img_tag_models()}); {model} needs image_transport='parts'."
        )
    if options.tool_choice not in (None, "auto", "none", "required"):
        names = [t.name for t in options.tools]
        if options.tool_choice not in names:
            raise UnsupportedInputError(
                f"tool_choice={options.tool_choice!r} names no bound tool; "
                f"bound tools: {names or 'none'}."
            )
    for name, (lo, hi) in profile.param_ranges.items():
        value = getattr(options, name, None)
        if value is None:
            value = options.extra.get(name)
        if value is not None and not lo <= value <= hi:
            raise UnsupportedInputError(
                f"{name} must be between {_num(lo)} and {_num(hi)} for {model} (got {value})."
            )
    if options.max_tokens is not None and options.max_tokens < 1:
        raise UnsupportedInputError(f"max_tokens must be >= 1 (got {options.max_tokens}).")
    if options.temperature is not None and options.temperature < 0:
        raise UnsupportedInputError(f"temperature must be >= 0 (got {options.temperature}).")
    if options.top_p is not None and not 0 <= options.top_p <= 1:
        raise UnsupportedInputError(f"top_p must be between 0 and 1 (got {options.top_p}).")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _known() -> frozenset[str]:
    from nemovlm.profiles import PROFILES

    return frozenset(PROFILES)


def _img_tag_models() -> str:
    from nemovlm.profiles import PROFILES

    return ", ".join(p.model for p in PROFILES.values() if p.img_tag)
