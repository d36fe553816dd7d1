"""Images and video on their way to a model: where they come from, what they really
are, and whether (and in what shape) the model can take them.

Input flow (module in brackets):
  ``media_from_string``  a string found inside message content -> ``MediaPart``
                         (http(s) kept as a URL; ``data:`` URLs validated; local paths
                         only from ``MediaPolicy.allowed_dirs``)              [sources]
  ``media_from_base64``  base64 from a framework block -> ``MediaPart(data=...)`` [sources]
  ``read_media_file``    a file the caller chose to send -> ``MediaFile`` (bytes, MIME
                         type and kind, all from its content)                 [sources]
  ``prepare_media``      ``MediaPart`` + ``ModelProfile`` + ``MediaPolicy`` -> ``PreparedMedia``
    images: ``prepare_image`` [images] -> cache lookup [cache] -> ``_process_image_bytes``
            (``sniff_format`` [formats], decode, convert to ``profile.convert_images_to``,
            refuse more than ``max_decode_pixels`` from the header, decode, downscale to
            the pixel budget); an http(s) URL is fetched (``fetch_remote`` [fetch],
            public hosts or ``allowed_hosts`` only, every redirect checked, one
            deadline) only when its extension names a format the model does not take
    video:  ``prepare_video`` [video] (``max_video_bytes``, ``sniff_format``,
            ``read_video_info`` [mp4], duration and resolution limits); a local file
            stays on disk
  ``aprepare_media`` / ``run_off_loop``  the same for async callers, in a worker thread
                         that a cancelled call stops where it can             [worker]
  ``PreparedMedia.as_url``  what a backend puts on the wire                [prepared]

Modules: ``formats`` (magic bytes -> format name, MIME types), ``sources`` (where media
may come from: data URLs, files and the directory allow-list), ``fetch`` (the client's
own fetch of a remote image), ``worker`` (off the event loop, cancellation), ``images``
(conversion, downscaling), ``video`` (container, duration and resolution checks),
``mp4`` (MP4/MOV boxes, no ffmpeg), ``cache`` (prepared images, data URLs seen),
``prepared`` (``PreparedMedia`` and the refusals both kinds share). The names below in
``__all__`` are the package's surface; the modules' other public names serve each other.
"""

from __future__ import annotations

from typing_extensions import assert_never

from nemovlm.media.cache import MediaCacheInfo, cache_info, clear_cache, set_cache_limits
from nemovlm.media.formats import IMAGE_FORMATS, VIDEO_FORMATS, mime_type_for, sniff_format
from nemovlm.media.images import is_prepared, needs_fetch, prepare_image
from nemovlm.media.mp4 import VideoInfo, read_video_info
from nemovlm.media.prepared import PreparedMedia
from nemovlm.media.sources import (
    MediaFile,
    MediaPolicy,
    media_from_base64,
    media_from_string,
    read_media_file,
    scheme_of,
    to_data_url,
)
from nemovlm.media.video import prepare_video
from nemovlm.media.worker import check_cancelled, run_off_loop
from nemovlm.messages import MediaPart
from nemovlm.profiles import ModelProfile

__all__ = [
    "IMAGE_FORMATS",
    "VIDEO_FORMATS",
    "MediaCacheInfo",
    "MediaFile",
    "MediaPolicy",
    "PreparedMedia",
    "VideoInfo",
    "aprepare_media",
    "cache_info",
    "clear_cache",
    "media_from_base64",
    "media_from_string",
    "mime_type_for",
    "needs_work",
    "prepare_media",
    "read_media_file",
    "read_video_info",
    "run_off_loop",
    "set_cache_limits",
    "sniff_format",
    "to_data_url",
]


_DEFAULT_POLICY = MediaPolicy()


def prepare_media(
    part: MediaPart,
    profile: ModelProfile,
    policy: MediaPolicy = _DEFAULT_POLICY,
) -> PreparedMedia:
    """Check ``part`` against what ``profile`` accepts and shape it for the wire.

    An image URL the model cannot take as it is gets fetched for conversion, through
    ``policy.http_client`` when set (proxies, custom TLS), from public addresses only
    unless ``policy.allowed_hosts`` allows more. Raises ``UnsupportedInputError``
    naming the part and what to change.
    """
    check_cancelled()
    if part.kind == "image":
        return prepare_image(part, profile, policy)
    if part.kind == "video":
        return prepare_video(part, profile, policy)
    assert_never(part.kind)


async def aprepare_media(
    part: MediaPart,
    profile: ModelProfile,
    policy: MediaPolicy = _DEFAULT_POLICY,
) -> PreparedMedia:
    """``prepare_media`` in a worker thread, so decoding and fetching never block the
    event loop; a fetch goes through ``policy.async_http_client`` when set. Cancelling
    the awaiting task stops a fetch and skips decoding not yet started."""
    return await run_off_loop(prepare_media, part, profile, policy)


def needs_work(
    part: MediaPart, profile: ModelProfile, policy: MediaPolicy = _DEFAULT_POLICY
) -> bool:
    """Whether preparing ``part`` reads, decodes or fetches anything (so an async caller
    should do it off the event loop); an http(s) URL the model takes as it is does not,
    nor does an image already prepared (a data URL sent before: the thread hop would
    cost more than the two lookups that find it)."""
    if part.url is None:
        return True
    if scheme_of(part.url) not in ("http", "https"):
        return not is_prepared(part, profile, policy)
    return needs_fetch(part, profile)
