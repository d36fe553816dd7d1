"""NVIDIA's hosted API catalog: when a request is "hosted", and what that changes.

The catalog (``https://integrate.api.nvidia.com/v1``) speaks the same chat API as a
local NIM, with rules a local NIM does not have (``/work/shared/HOSTED.md`` lists the
public sources):

- inline media (base64) have a per-request budget, ``profile.hosted_inline_budget``;
  larger media go up as NVCF assets (``nemovlm.backends.assets``);
- a system message only first, roles alternating, system and assistant content as
  strings.

Flow, for a hosted ``NIMBackend`` call: ``_map_catalog_turns`` (the message rules) ->
``plan_media`` (per ``hosted_media``: which media stay inline and which go up; ``fit``
shrinks images instead) -> ``nemovlm.backends.assets`` uploads the planned media and
swaps them for ``data:<mime>;asset_id,<id>`` with ``with_media``.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal
from urllib.parse import urlsplit

from PIL import Image

from nemovlm.errors import UnsupportedInputError
from nemovlm.media import PreparedMedia
from nemovlm.messages import TextPart
from nemovlm.pipeline import PreparedConversation, PreparedPart, PreparedTurn
from nemovlm.profiles import ModelProfile
from nemovlm.secrets import SecretURL

__all__ = [
    "ASSET_REFERENCES_HEADER",
    "CATALOG_HOST",
    "DEFAULT_ASSETS_URL",
    "HostedMedia",
    "HostedSettings",
    "MediaPlan",
    "base64_chars",
    "decide_hosted",
    "default_assets_url",
    "plan_media",
]

HostedMedia = Literal["auto", "upload", "fit"]

CATALOG_HOST = "integrate.api.nvidia.com"
"""The host of NVIDIA's hosted API catalog; a base URL on it is hosted."""
DEFAULT_ASSETS_URL = "https://api.nvcf.nvidia.com/v2/nvcf/assets"
ASSET_REFERENCES_HEADER = "NVCF-INPUT-ASSET-REFERENCES"
_HOSTED_MEDIA = ("auto", "upload", "fit")


def decide_hosted(hosted: bool | None, base_url: str | None) -> bool:
    """``hosted`` when set; else whether ``base_url`` (resolved the documented way:
    the argument, ``NVIDIA_BASE_URL``, the catalog) is on the catalog's host."""
    if hosted is not None:
        return hosted
    from nemovlm.backends.nim import resolve_base_url

    return urlsplit(resolve_base_url(base_url)).hostname == CATALOG_HOST


def default_assets_url() -> str:
    """``NVCF_ASSETS_URL``, else NVIDIA's NVCF assets endpoint."""
    return os.environ.get("NVCF_ASSETS_URL") or DEFAULT_ASSETS_URL


@dataclass(frozen=True)
class HostedSettings:
    """How a backend talks to the catalog (the adapters' ``assets_url`` and ``hosted_media``)."""

    assets_url: str = DEFAULT_ASSETS_URL
    media: HostedMedia = "auto"
    """``auto``: inline while the request's media fit the budget, the rest uploaded;
    ``upload``: every local medium uploaded; ``fit``: never upload, shrink to fit."""

    def __post_init__(self) -> None:
        # A password in the URL stays out of this dataclass's repr and of errors.
        object.__setattr__(self, "assets_url", SecretURL(self.assets_url))
        if self.media not in _HOSTED_MEDIA:
            raise UnsupportedInputError(
                f"hosted_media={self.media!r} is not understood: use 'auto' (inline while "
                "it fits, else upload), 'upload' (always upload) or 'fit' (never upload)."
            )
        scheme = urlsplit(self.assets_url).scheme
        if scheme not in ("http", "https"):
            raise UnsupportedInputError(
                f"assets_url {self.assets_url!r} is not an http(s) URL: give the NVCF assets "
                f"endpoint, e.g. {DEFAULT_ASSETS_URL}."
            )


# --- the catalog's message rules ---------------------------------------------------


def _map_catalog_turns(turns: Sequence[PreparedTurn], profile: ModelProfile) -> list[PreparedTurn]:
    """The catalog's message rules: one system message, first (all system text merged
    in order); consecutive user or assistant messages merged so roles alternate.
    (System and assistant content go out as strings in every mode.)"""
    systems = [t for t in turns if t.role == "system"]
    out: list[PreparedTurn] = []
    if systems:
        text = "\n\n".join(t.text for t in systems if t.text)
        out.append(PreparedTurn("system", [TextPart(text)]))
    for turn in turns:
        if turn.role == "system":
            continue
        last = out[-1] if out else None
        if last is not None and last.role == turn.role and turn.role in ("user", "assistant"):
            out[-1] = _merge(last, turn, profile)
        else:
            out.append(turn)
    return out


def _merge(first: PreparedTurn, second: PreparedTurn, profile: ModelProfile) -> PreparedTurn:
    if first.role == "assistant" or not (first.media or second.media):
        text = "\n\n".join(t for t in (first.text, second.text) if t)
        return PreparedTurn(
            first.role,
            [TextPart(text)],
            [*first.tool_calls, *second.tool_calls],
            first.tool_call_id,
            first.name,
        )
    parts: list[PreparedPart] = [*first.parts]
    if first.text and second.text:
        parts.append(TextPart("\n\n"))
    parts += second.parts
    if profile.images_first:
        parts = [p for p in parts if isinstance(p, PreparedMedia)] + [
            p for p in parts if isinstance(p, TextPart)
        ]
    return PreparedTurn("user", parts, [], first.tool_call_id, first.name)


# --- which media go inline ---------------------------------------------------------


def base64_chars(size: int) -> int:
    """Characters of base64 for ``size`` bytes."""
    return 4 * math.ceil(size / 3)


@dataclass
class _Medium:
    """One distinct medium of a request, and how often the request carries it."""

    media: PreparedMedia
    count: int = 1

    @property
    def chars(self) -> int:
        size = self.media.size
        return base64_chars(size) * self.count if size is not None else 0


@dataclass
class MediaPlan:
    """What a hosted request does with its media."""

    turns: list[PreparedTurn]
    uploads: dict[Hashable, PreparedMedia] = field(default_factory=dict)
    """Distinct media to upload as assets, by content key."""
    keys: dict[int, Hashable] = field(default_factory=dict)
    """Content key of every local medium in ``turns`` (by ``id``)."""
    inline_chars: int = 0
    """Base64 characters the request still carries inline."""


def _key(media: PreparedMedia) -> Hashable | None:
    if media.data is not None:
        return ("bytes", hashlib.blake2b(media.data, digest_size=20).digest())
    if media.path is not None:
        return ("file", str(media.path))
    return None  # an http(s) URL: the catalog fetches it, no base64 sent


def plan_media(
    prepared: PreparedConversation, profile: ModelProfile, settings: HostedSettings
) -> MediaPlan:
    """The catalog's rules applied, and the media split into inline and uploaded.

    The same medium carried by several turns is one upload; inline, each carrying
    counts against the budget. ``auto`` uploads the largest media first until the
    rest fits; ``fit`` re-encodes images (JPEG where the model takes it) and
    downscales them, each to its share of the budget, and refuses what cannot fit.
    """
    turns = _map_catalog_turns(prepared.turns, profile)
    media: dict[Hashable, _Medium] = {}
    keys: dict[int, Hashable] = {}
    for turn in turns:
        for part in turn.media:
            key = _key(part)
            if key is None:
                continue
            keys[id(part)] = key
            if key in media:
                media[key].count += 1
            else:
                media[key] = _Medium(part)
    budget = profile.hosted_inline_budget
    total = sum(m.chars for m in media.values())
    plan = MediaPlan(turns, keys=keys)
    if settings.media == "upload":
        plan.uploads = {k: m.media for k, m in media.items()}
        return plan
    if settings.media == "fit":
        if total > budget:
            shrunk = _fit(media, total, budget, profile)
            plan.turns = with_media(turns, keys, shrunk)
            plan.keys = {id(m): k for k, m in shrunk.items()}
            plan.keys.update({i: k for i, k in keys.items() if k not in shrunk})
            total = sum(base64_chars(m.size or 0) * media[k].count for k, m in shrunk.items())
        plan.inline_chars = total
        return plan
    for key, medium in sorted(media.items(), key=lambda item: -item[1].chars):
        if total <= budget:
            break
        plan.uploads[key] = medium.media
        total -= medium.chars
    plan.inline_chars = total
    return plan


def with_media(
    turns: Sequence[PreparedTurn],
    keys: Mapping[int, Hashable],
    swap: Mapping[Hashable, PreparedMedia],
) -> list[PreparedTurn]:
    """``turns`` with each medium whose key is in ``swap`` replaced by its swap."""
    out = []
    for turn in turns:
        parts: list[PreparedPart] = []
        for part in turn.parts:
            key = keys.get(id(part)) if isinstance(part, PreparedMedia) else None
            parts.append(swap[key] if key is not None and key in swap else part)
        out.append(replace(turn, parts=parts))
    return out


def _fit(
    media: Mapping[Hashable, _Medium], total: int, budget: int, profile: ModelProfile
) -> dict[Hashable, PreparedMedia]:
    for medium in media.values():
        if medium.media.kind == "video":
            raise UnsupportedInputError(
                f"hosted_media='fit' keeps media inline, and a video of "
                f"{_mb(medium.media.size or 0)} cannot be shrunk to the hosted budget of "
                f"{budget:,} base64 characters for {profile.model}: set hosted_media='auto' "
                "(the default) so it goes up as an NVCF asset."
            )
    shrunk = {}
    for key, medium in media.items():
        share = budget * medium.chars / total / medium.count
        # Bytes whose base64 fits the share (the data URL's header is not counted).
        target = int(share * 3 / 4) - 3
        shrunk[key] = _shrink(medium.media, target, budget, profile)
    return shrunk


_MIN_SIDE = 32
_FIT_QUALITY = 85


def _shrink(media: PreparedMedia, target: int, budget: int, profile: ModelProfile) -> PreparedMedia:
    data = (
        media.data if media.data is not None else (media.path.read_bytes() if media.path else b"")
    )
    formats = profile.image_formats
    fmt = "jpeg" if formats is None or "jpeg" in formats else "png"
    if formats is not None and fmt not in formats:
        raise UnsupportedInputError(
            f"hosted_media='fit' re-encodes images as JPEG or PNG, and {profile.model} takes "
            "neither: set hosted_media='auto' to upload it as an NVCF asset."
        )
    with Image.open(io.BytesIO(data)) as opened:
        image = opened.convert("RGBA") if fmt == "jpeg" and _has_alpha(opened) else opened.copy()
    if fmt == "jpeg" and image.mode == "RGBA":
        flat = Image.new("RGB", image.size, (255, 255, 255))
        flat.paste(image, mask=image.getchannel("A"))
        image = flat
    elif fmt == "jpeg" and image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    current = image
    for _ in range(12):
        encoded = _encode(current, fmt)
        if len(encoded) <= target:
            return PreparedMedia(
                kind="image",
                url=None,
                data=encoded,
                path=None,
                mime_type=f"image/{fmt}",
                format=fmt,
                width=current.width,
                height=current.height,
            )
        scale = min(0.9, math.sqrt(target / len(encoded)))
        size = (math.floor(current.width * scale), math.floor(current.height * scale))
        if min(size) < _MIN_SIDE:
            break
        current = image.resize(size, Image.Resampling.LANCZOS)
    raise UnsupportedInputError(
        f"hosted_media='fit' could not shrink the image ({media.width}x{media.height}) to "
        f"its share of the hosted budget ({budget:,} base64 characters per request for "
        f"{profile.model}): send fewer or smaller images, or set hosted_media='auto' "
        "(the default) so large media go up as NVCF assets."
    )


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "jpeg":
        image.save(buffer, "JPEG", quality=_FIT_QUALITY, optimize=True)
    else:
        image.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def _mb(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB"
