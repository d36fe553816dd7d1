"""Video checked against a model: ``prepare_video`` (the size against
``MediaPolicy.max_video_bytes`` before anything is read or decoded, sniff the
container, measure an MP4/MOV with ``read_video_info``, then duration and resolution
limits). Video is never converted client-side; a local file stays on disk."""

from __future__ import annotations

from pathlib import Path

from nemovlm.errors import UnsupportedInputError
from nemovlm.media.formats import (
    IMAGE_FORMATS,
    ISO_BMFF_FORMATS,
    MIME_TYPES,
    VIDEO_FORMATS,
    format_from_url,
    normalize_formats,
    sniff_format,
)
from nemovlm.media.mp4 import VideoInfo, read_video_info
from nemovlm.media.prepared import PreparedMedia, model_label, refuse_kind
from nemovlm.media.sources import (
    MediaPolicy,
    parse_data_url,
    refuse_url_scheme,
    scheme_of,
    stat_file,
)
from nemovlm.messages import MediaPart
from nemovlm.profiles import ModelProfile


def prepare_video(part: MediaPart, profile: ModelProfile, policy: MediaPolicy) -> PreparedMedia:
    if not profile.accepts_video:
        raise refuse_kind(part, profile)
    formats = normalize_formats(profile.video_formats)
    data: bytes | None = None
    path: Path | None = None
    if part.url is not None:
        scheme = scheme_of(part.url)
        if scheme in ("http", "https"):
            url_format = format_from_url(part.url)
            if formats is not None and url_format in VIDEO_FORMATS and url_format not in formats:
                # Video is never converted client-side, so a known mismatch fails now.
                raise _refuse_video_format(part, profile, url_format, formats)
            return PreparedMedia.passed_through("video", part.url)
        if scheme != "data":
            raise refuse_url_scheme(part)
        # base64 is 4/3 of the bytes: refuse an oversized URL before decoding it.
        _check_video_size(len(part.url) * 3 // 4, part, policy)
        _, data = parse_data_url(part.url, part.describe())
        _check_video_size(len(data), part, policy)
        head = data
    elif part.data is not None:
        data = head = part.data
        _check_video_size(len(data), part, policy)
    else:
        assert part.path is not None
        path = part.path.expanduser().resolve()
        _check_video_size(stat_file(path, part).st_size, part, policy)
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
    if fmt in ISO_BMFF_FORMATS:
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
        mime_type=MIME_TYPES[fmt],
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
        if fmt in ISO_BMFF_FORMATS and "mp4" in formats
        else f" Convert it to {' or '.join(sorted(formats))} first."
    )
    return UnsupportedInputError(
        f"{model_label(profile)} accepts video as {', '.join(sorted(formats))}; "
        f"the {part.describe()} is {fmt}." + hint
    )


def _check_video_size(size: int, part: MediaPart, policy: MediaPolicy) -> None:
    cap = policy.max_video_bytes
    if size > cap:
        raise UnsupportedInputError(
            f"The {part.describe()} is {size / 1e6:.1f} MB; the client sends at most "
            f"{cap / 1e6:.1f} MB of video itself (MediaPolicy.max_video_bytes, "
            "max_video_bytes on the chat models), as a request carries it base64-encoded, "
            "a third larger, and held in memory. Trim or re-encode it, pass it as an "
            "http(s) URL the server can fetch, or raise the limit."
        )


def _check_video_limits(info: VideoInfo, part: MediaPart, profile: ModelProfile) -> None:
    limit_s = profile.max_video_seconds
    if limit_s is not None and info.duration_s > limit_s:
        raise UnsupportedInputError(
            f"The {part.describe()} lasts {info.duration_s:.2f} s; {model_label(profile)} "
            f"accepts at most {limit_s:g} s. Trim it first."
        )
    limit_h = profile.max_video_height
    # "1080p" names the short side, so a portrait 1080x1920 phone video qualifies.
    if limit_h is not None and min(info.width, info.height) > limit_h:
        raise UnsupportedInputError(
            f"The {part.describe()} is {info.width}x{info.height}; {model_label(profile)} "
            f"accepts up to {limit_h}p. Scale it down first."
        )
