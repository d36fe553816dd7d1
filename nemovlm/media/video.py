"""Video checked against a model: ``_prepare_video`` (sniff the container, measure
an MP4/MOV with ``read_video_info``, then duration and resolution limits). Video is
never converted client-side; a local file stays on disk."""

from __future__ import annotations

from pathlib import Path

from nemovlm.errors import UnsupportedInputError
from nemovlm.media.formats import (
    _ISO_BMFF,
    _MIME,
    IMAGE_FORMATS,
    VIDEO_FORMATS,
    _format_from_url,
    _normalize_formats,
    sniff_format,
)
from nemovlm.media.mp4 import VideoInfo, read_video_info
from nemovlm.media.prepared import PreparedMedia, _model_label, _refuse_kind
from nemovlm.media.sources import _parse_data_url, _refuse_url_scheme, _scheme_of, _stat_file
from nemovlm.messages import MediaPart
from nemovlm.profiles import ModelProfile


def _prepare_video(part: MediaPart, profile: ModelProfile) -> PreparedMedia:
    if not profile.accepts_video:
        raise _refuse_kind(part, profile)
    formats = _normalize_formats(profile.video_formats)
    data: bytes | None = None
    path: Path | None = None
    if part.url is not None:
        scheme = _scheme_of(part.url)
        if scheme in ("http", "https"):
            url_format = _format_from_url(part.url)
            if formats is not None and url_format in VIDEO_FORMATS and url_format not in formats:
                # Video is never converted client-side, so a known mismatch fails now.
                raise _refuse_video_format(part, profile, url_format, formats)
            return PreparedMedia(
                kind="video",
                url=part.url,
                data=None,
                path=None,
                mime_type=_MIME.get(url_format) if url_format else None,
                format=url_format,
            )
        if scheme != "data":
            raise _refuse_url_scheme(part)
        _, data = _parse_data_url(part.url, part.describe())
        head = data
    elif part.data is not None:
        data = head = part.data
    else:
        assert part.path is not None
        path = part.path.expanduser().resolve()
        _stat_file(path, part)
        try:
            with open(path, "rb") as file:
                head = file.read(4096)
        except OSError as exc:
            raise UnsupportedInputError(f"Cannot read the {part.describe()}: {exc}.") from exc
    fmt = sniff_format(head)
    if fmt is None:
        raise UnsupportedInputError(
            f"The {part.describe()} is not in a video container this package recognises "
            "(MP4, MOV, WebM, MKV, AVI, MPEG-TS); it may be corrupt or not a video."
        )
    if fmt not in VIDEO_FORMATS:
        raise UnsupportedInputError(
            f"The {part.describe()} holds {fmt} data, not a video"
            + ("; send an image as an image part." if fmt in IMAGE_FORMATS else ".")
        )
    if formats is not None and fmt not in formats:
        raise _refuse_video_format(part, profile, fmt, formats)
    info: VideoInfo | None = None
    if fmt in _ISO_BMFF:
        source: bytes | Path
        if data is not None:
            source = data
        else:
            assert path is not None
            source = path
        try:
            info = read_video_info(source)
        except UnsupportedInputError as exc:
            raise UnsupportedInputError(f"The {part.describe()} cannot be read: {exc}") from exc
        _check_video_limits(info, part, profile)
    return PreparedMedia(
        kind="video",
        url=None,
        data=data,
        path=path,
        mime_type=_MIME[fmt],
        format=fmt,
        width=info.width if info else None,
        height=info.height if info else None,
        video=info,
    )


def _refuse_video_format(
    part: MediaPart, profile: ModelProfile, fmt: str, formats: frozenset[str]
) -> UnsupportedInputError:
    hint = (
        " Remux it to MP4 first, e.g. `ffmpeg -i in.mov -c copy out.mp4`."
        if fmt in _ISO_BMFF and "mp4" in formats
        else f" Convert it to {' or '.join(sorted(formats))} first."
    )
    return UnsupportedInputError(
        f"{_model_label(profile)} accepts video as {', '.join(sorted(formats))}; "
        f"the {part.describe()} is {fmt}." + hint
    )


def _check_video_limits(info: VideoInfo, part: MediaPart, profile: ModelProfile) -> None:
    limit_s = profile.max_video_seconds
    if limit_s is not None and info.duration_s > limit_s:
        raise UnsupportedInputError(
            f"The {part.describe()} lasts {info.duration_s:.2f} s; {_model_label(profile)} "
            f"accepts at most {limit_s:g} s. Trim it first."
        )
    limit_h = profile.max_video_height
    # "1080p" names the short side, so a portrait 1080x1920 phone video qualifies.
    if limit_h is not None and min(info.width, info.height) > limit_h:
        raise UnsupportedInputError(
            f"The {part.describe()} is {info.width}x{info.height}; {_model_label(profile)} "
            f"accepts up to {limit_h}p. Scale it down first."
        )
