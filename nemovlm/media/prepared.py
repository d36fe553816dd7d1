"""``PreparedMedia``, what ``prepare_media`` hands a backend, and the refusal both
kinds of media share (a model that takes no images, or no video)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from typing_extensions import assert_never

from nemovlm.errors import UnsupportedInputError
from nemovlm.media.formats import MIME_TYPES, format_from_url
from nemovlm.media.mp4 import VideoInfo
from nemovlm.media.sources import to_data_url
from nemovlm.messages import MediaKind, MediaPart
from nemovlm.profiles import PROFILES, ModelProfile


@dataclass(frozen=True)
class PreparedMedia:
    """One medium, checked against a model and ready for the wire.

    Exactly one of ``url`` (an http(s) URL passed through untouched), ``data`` (bytes
    to send inline) or ``path`` (a local video left on disk) is set.
    """

    kind: MediaKind
    url: str | None
    data: bytes | None = field(repr=False)
    path: Path | None
    mime_type: str | None
    format: str | None
    width: int | None = None
    height: int | None = None
    video: VideoInfo | None = None

    @classmethod
    def passed_through(cls, kind: MediaKind, url: str) -> PreparedMedia:
        """An http(s) URL the server fetches itself, typed from its extension."""
        url_format = format_from_url(url)
        mime_type = MIME_TYPES.get(url_format) if url_format else None
        return cls(kind, url, None, None, mime_type, url_format)

    def as_url(self) -> str:
        """The http(s) URL, else a base64 ``data:`` URL of the bytes or the file."""
        if self.url is not None:
            return self.url
        mime = self.mime_type or "application/octet-stream"
        if self.data is not None:
            return self._data_url
        if self.path is not None:
            return to_data_url(self.path.read_bytes(), mime)
        raise ValueError("PreparedMedia holds neither url, data nor path.")

    @functools.cached_property
    def _data_url(self) -> str:
        # Kept: a cached image goes out once per turn and per call, encoded only once.
        return to_data_url(self.data or b"", self.mime_type or "application/octet-stream")

    @property
    def size(self) -> int | None:
        """Bytes of ``data`` or of the file at ``path``; ``None`` for a URL."""
        if self.data is not None:
            return len(self.data)
        if self.path is not None:
            return self.path.stat().st_size
        return None


def model_label(profile: ModelProfile) -> str:
    return f"Model '{profile.model}'" if profile.model else "This model"


def _accepts_summary(profile: ModelProfile) -> str:
    bits = ["text"]
    for word, formats, accepted in (
        ("images", profile.image_formats, profile.accepts_images),
        ("video", profile.video_formats, profile.accepts_video),
    ):
        if accepted:
            bits.append(f"{word} ({', '.join(sorted(formats))})" if formats else word)
    return ", ".join(bits)


def _accepts(profile: ModelProfile, kind: MediaKind) -> bool:
    if kind == "image":
        return profile.accepts_images
    if kind == "video":
        return profile.accepts_video
    assert_never(kind)


def refuse_kind(part: MediaPart, profile: ModelProfile) -> UnsupportedInputError:
    takers = [p.model for p in PROFILES.values() if _accepts(p, part.kind)]
    hint = f" Models that take {part.kind}s include {', '.join(takers[:3])}." if takers else ""
    return UnsupportedInputError(
        f"{model_label(profile)} accepts no {part.kind} input (it accepts "
        f"{_accepts_summary(profile)}); remove the {part.describe()} or use another model." + hint
    )
