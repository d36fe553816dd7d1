"""fal argument mapping out: a prepared conversation and its options as a fal app's
arguments (``map_arguments``: ``_map_prompt``, ``_map_params`` with ``_map_steps``, the
diffusion step rule, and ``_plan_media``: inline data URL or an ``Upload``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nemovlm.errors import UnsupportedInputError
from nemovlm.media import PreparedMedia
from nemovlm.options import RequestOptions
from nemovlm.pipeline import PreparedConversation, PreparedTurn
from nemovlm.profiles import ModelProfile, StepSchedule


@dataclass
class Upload:
    """Media that must go up to fal's storage before the request is submitted."""

    field_name: str
    data: bytes | None = field(repr=False)
    path: Path | None
    mime_type: str
    file_name: str


def _media_field(profile: ModelProfile) -> str | None:
    """Where the one image or video goes: the profile's field, else ``<requires>_url``."""
    if profile.media_field is not None:
        return profile.media_field
    return f"{profile.requires}_url" if profile.requires else None


def map_arguments(
    profile: ModelProfile,
    prepared: PreparedConversation,
    options: RequestOptions,
    upload_threshold_bytes: int,
) -> tuple[dict[str, Any], Upload | None]:
    """The app's arguments, and the upload that will give the media its URL."""
    prompt, system = _map_prompt(prepared.turns, profile)
    arguments: dict[str, Any] = {"prompt": prompt}
    if system:
        assert profile.system_field is not None
        arguments[profile.system_field] = system
    upload: Upload | None = None
    media = prepared.images + prepared.videos
    media_field = _media_field(profile)
    if media and media_field:
        url, upload = _plan_media(media[0], media_field, upload_threshold_bytes)
        if url is not None:
            arguments[media_field] = url
    arguments.update(prepared.params)
    arguments.update(_map_params(options, profile))
    return arguments, upload


def _map_prompt(turns: list[PreparedTurn], profile: ModelProfile) -> tuple[str, str | None]:
    """The conversation as the app's one prompt (and system prompt, where it has one)."""
    system = "\n\n".join(t.text.strip() for t in turns if t.role == "system" and t.text.strip())
    rest = [t for t in turns if t.role != "system"]
    if len(rest) == 1 and rest[0].role == "user":
        prompt = rest[0].text.strip()
    else:
        # Earlier turns become a transcript the model reads as context.
        labels = {"user": "User", "assistant": "Assistant", "tool": "Tool result"}
        prompt = "\n\n".join(f"{labels[t.role]}: {t.text.strip()}" for t in rest if t.text.strip())
    if system and profile.system_field is None:
        prompt = f"{system}\n\n{prompt}" if prompt else system
        system = ""
    if not prompt:
        raise UnsupportedInputError(
            f"{profile.model} needs a text prompt with the media: add a text part "
            "(your question or instruction) to the message."
        )
    return prompt, system or None


def _plan_media(
    media: PreparedMedia, field_name: str, threshold: int
) -> tuple[str | None, Upload | None]:
    """The media's URL now, or the upload that will give one."""
    if media.url is not None:
        return media.url, None
    mime = media.mime_type or "application/octet-stream"
    name = f"{media.kind}.{media.format or 'bin'}"
    if media.path is not None:
        # A local file goes up from disk, never as base64 inside the JSON request.
        return None, Upload(field_name, None, media.path, mime, media.path.name)
    assert media.data is not None
    if len(media.data) > threshold:
        return None, Upload(field_name, media.data, None, mime, name)
    return media.as_url(), None


def _map_params(options: RequestOptions, profile: ModelProfile) -> dict[str, Any]:
    model = profile.model
    for name in ("seed", "temperature", "top_p"):
        documented = name in profile.sampling_params or name in profile.param_ranges
        if getattr(options, name) is not None and not documented:
            raise UnsupportedInputError(f"{model} on fal takes no {name}; remove {name}.")
    params: dict[str, Any] = {}
    for name in ("max_tokens", "temperature", "top_p"):
        value = getattr(options, name)
        if value is not None:
            params[name] = value
    extra = dict(options.extra)
    schedule = profile.step_schedule
    if schedule is not None:
        max_tokens = options.max_tokens or profile.default_max_tokens or schedule.default_max_tokens
        extra = _map_steps(extra, max_tokens, schedule, profile)
    params.update(extra)
    return params


def _map_steps(
    extra: dict[str, Any], max_tokens: int, schedule: StepSchedule, profile: ModelProfile
) -> dict[str, Any]:
    """Apply the diffusion step rule: an explicit ``num_inference_steps`` (or its alias)
    must be a multiple of the block count, at least one step per block; when omitted,
    the default is rounded up to the nearest such multiple. The range itself was checked
    with the other options (``param_ranges``)."""
    model = profile.model
    block_length = extra.get("block_length", schedule.default_block_length)
    blocks = schedule.blocks(max_tokens, block_length)
    steps = extra.pop("num_inference_steps", None)
    alias = schedule.alias
    aliased = extra.pop(alias, None) if alias else None
    if steps is not None and aliased is not None and steps != aliased:
        raise UnsupportedInputError(
            f"num_inference_steps={steps} and its alias {alias}={aliased} disagree; "
            "set only num_inference_steps."
        )
    name = "num_inference_steps" if steps is not None or alias is None else alias
    steps = steps if steps is not None else aliased
    if steps is None:
        steps = math.ceil(schedule.default_steps / blocks) * blocks
    elif steps < blocks or steps % blocks:
        nearest = max(blocks, math.ceil(steps / blocks) * blocks)
        most = profile.param_ranges.get("num_inference_steps", (1, math.inf))[1]
        hint = f" such as {nearest}" if nearest <= most else ""
        raise UnsupportedInputError(
            f"{name}={steps} does not fit the diffusion schedule of {model}: with "
            f"max_tokens={max_tokens} and block_length={block_length} there are "
            f"{blocks} blocks, so the steps must be a multiple of {blocks} (at least "
            f"{blocks}). Pick a multiple{hint}, or change max_tokens or block_length."
        )
    extra["num_inference_steps"] = steps
    return extra
