"""Request settings in neutral form, and the checks that need only them and a profile.

Adapters fill ``RequestOptions`` from their own fields and call kwargs; backends read
it when mapping out. Checks that also need the conversation (video present, how many
images) live in ``nemovlm.pipeline``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from numbers import Real
from types import MappingProxyType
from typing import Any, Literal

from nemovlm.errors import UnsupportedInputError
from nemovlm.messages import ToolSpec
from nemovlm.profiles import ModelProfile

ImageTransport = Literal["parts", "img_tag"]
WIRE_RANGES: Mapping[str, tuple[float, float]] = MappingProxyType(
    {
        "max_tokens": (1, math.inf),
        "temperature": (0, math.inf),
        "top_p": (0, 1),
        "max_num_tiles": (1, math.inf),
    }
)
"""Inclusive ranges every request obeys, whatever the model; a profile's
``param_ranges`` (and ``max_video_frames``) narrow them for one model."""


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
    json_mode: bool = False
    """A JSON object answer without a schema: ``response_format: {"type":
    "json_object"}`` where the model takes ``response_format``, the prompt protocol
    elsewhere."""
    n: int | None = None
    """Choices to generate; each comes back in ``Reply.choices``. Not when streaming."""
    image_transport: ImageTransport = "parts"
    video_fps: float | None = None
    video_num_frames: int | None = None
    max_num_tiles: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Backend-specific parameters, passed through after the backend validates them."""


_FIELDS = frozenset(
    {
        "max_tokens", "temperature", "top_p", "seed", "reasoning", "include_reasoning",
        "tools", "tool_choice", "json_schema", "json_mode", "image_transport", "video_fps",
        "video_num_frames", "max_num_tiles", "n",
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
    ``extra`` (after ``defaults.extra`` and ``extra``, e.g. ``model_kwargs``), except
    ``response_format``, read as a call's wherever it is given. ``tools``
    must already be ``ToolSpec``s; ``tool_choice`` is normalised against them.

    ``extra_body`` (in the settings, in ``extra`` or in ``overrides``) is merged into
    ``extra`` as the ``openai`` SDK merges it into the request body: its keys go in
    the body beside the others and win over them; the settings' keys first, then the
    call's. ``strict`` (an override, or in ``extra``) applies to every tool
    (``ToolSpec.strict``); it never goes on the wire as a key of its own.
    """
    values: dict[str, Any] = {}
    wire = {**defaults.extra, **(extra or {})}
    bodies = [wire.pop("extra_body", None)]
    strict = wire.pop("strict", None)  # a tool setting, never a top-level wire key
    calls = dict(overrides or {})
    if "response_format" in wire:
        # model_kwargs / additional_kwargs={"response_format": ...}, as OpenAI users
        # write it: read the model's own way too, a call's own winning.
        calls.setdefault("response_format", wire.pop("response_format"))
    for key, value in calls.items():
        if key in _FIELDS:
            if value is not None:
                values[key] = value
        elif key == "response_format" and value is not None:
            # Frameworks (LangChain's create_agent) pass OpenAI's response_format; the
            # core decides per model between response_format and the prompt protocol.
            if _is_json_object(value):
                values["json_mode"] = True
            else:
                values["json_schema"] = _json_schema_from_response_format(value)
        elif key == "extra_body":
            bodies.append(value)
        elif key == "strict":
            strict = value
        elif key not in _DROPPED:
            wire[key] = value
    for body in bodies:
        if body is None:
            continue
        if not isinstance(body, Mapping):
            raise UnsupportedInputError(
                f"extra_body must be a dict of request body fields, not {type(body).__name__}."
            )
        wire.update(body)
    if "tools" in values:
        values["tools"] = tuple(values["tools"])
    if strict is not None:
        if not isinstance(strict, bool):
            raise UnsupportedInputError(f"strict must be True or False (got {strict!r}).")
        values["tools"] = tuple(replace(t, strict=strict) for t in values.get("tools", ()))
    if "tool_choice" in values:
        from nemovlm.tools import normalize_tool_choice

        values["tool_choice"] = normalize_tool_choice(
            values["tool_choice"], values.get("tools", defaults.tools)
        )
    if stop:
        values["stop"] = tuple(stop)
    return replace(defaults, **values, extra=wire)


def _is_json_object(value: Any) -> bool:
    return isinstance(value, Mapping) and value.get("type") == "json_object"


def _json_schema_from_response_format(value: Any) -> Mapping[str, Any]:
    kind = value.get("type") if isinstance(value, Mapping) else None
    if kind == "json_schema" and isinstance(value.get("json_schema"), Mapping):
        return value["json_schema"]
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
    _check_ranges(options, profile)
    sampling = options.video_fps is not None or options.video_num_frames is not None
    if sampling and profile.video_sampling is False:
        raise UnsupportedInputError(
            f"{model} does not take video sampling settings (video_fps / video_num_frames); "
            "remove them."
        )
    if options.max_num_tiles is not None and profile.tiles is False:
        raise UnsupportedInputError(f"{model} does not take max_num_tiles; remove it.")
    # reasoning=False on a model that never reasons is already true: one shared
    # configuration then works across models. Only asking it to reason is an error.
    if options.reasoning and not profile.can_reason:
        raise UnsupportedInputError(
            f"{model} cannot switch reasoning on or off; leave reasoning=None (or False): "
            "this model does not reason."
        )
    if options.json_mode and options.json_schema is not None:
        raise UnsupportedInputError(
            "json_mode and json_schema are exclusive: ask for JSON mode (any JSON object) "
            "or for a schema, not both."
        )
    if options.n is not None:
        if isinstance(options.n, bool) or not isinstance(options.n, int) or options.n < 1:
            raise UnsupportedInputError(f"n must be a whole number >= 1 (got {options.n!r}).")
        if options.n > 1 and stream:
            raise UnsupportedInputError(
                f"n={options.n} is not supported when streaming: use invoke() instead of "
                "stream(), or leave n=1."
            )
        if options.n > 1 and profile.backend == "fal":
            raise UnsupportedInputError(
                f"{model} on fal answers with one choice: leave n=1, or call it n times."
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
            f"(their profile says img_tag=True); {model} needs image_transport='parts', or "
            "profile_overrides={'img_tag': True} if its server does read <img> tags."
        )
    if options.tool_choice not in (None, "auto", "none", "required"):
        names = [t.name for t in options.tools]
        if options.tool_choice not in names:
            raise UnsupportedInputError(
                f"tool_choice={options.tool_choice!r} names no bound tool; "
                f"bound tools: {names or 'none'}."
            )


def _check_ranges(options: RequestOptions, profile: ModelProfile) -> None:
    """Every numeric setting against its range: the model's own where its profile has
    one (named in the message), else the range every request obeys."""
    own = {**profile.param_ranges, "video_num_frames": (1, profile.max_video_frames)}
    ranges = [(name, lo, hi, f" for {profile.model}") for name, (lo, hi) in own.items()]
    ranges += [(name, lo, hi, "") for name, (lo, hi) in WIRE_RANGES.items() if name not in own]
    for name, lo, hi, where in ranges:
        value = getattr(options, name, None)
        if value is None and where:
            # A model's own parameters (diffusion steps...) arrive as extra arguments.
            value = options.extra.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, Real):
            raise UnsupportedInputError(f"{name} must be a number (got {value!r}).")
        if lo <= float(value) <= hi:
            continue
        if math.isinf(hi):
            raise UnsupportedInputError(f"{name} must be >= {_num(lo)}{where} (got {value}).")
        raise UnsupportedInputError(
            f"{name} must be between {_num(lo)} and {_num(hi)}{where} (got {value})."
        )


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)
