"""Images and video on their way to a model: where they come from, what they really
are, and whether (and in what shape) the model can take them.

Input flow:
  ``media_from_string``  a string found inside message content -> ``MediaPart``
                         (http(s) kept as a URL; ``data:`` URLs validated; local paths
                         only from ``MediaPolicy.allowed_dirs``)
  ``media_from_base64``  base64 from a framework block -> ``MediaPart(data=...)``
  ``prepare_media``      ``MediaPart`` + ``ModelProfile`` + ``MediaPolicy`` -> ``PreparedMedia``
    images: ``_prepare_image`` -> cache lookup -> ``_process_image_bytes``
            (``sniff_format``, decode, convert to ``profile.convert_images_to``,
            downscale to the pixel budget); an http(s) URL is fetched (``_fetch``)
            only when its extension names a format the model does not take
    video:  ``_prepare_video`` (``sniff_format``, ``read_video_info``, duration and
            resolution limits); a local file stays on disk
  ``PreparedMedia.as_url``  what a backend puts on the wire

Helpers: ``sniff_format`` (magic bytes, never the declared type), ``read_video_info``
(MP4 boxes, no ffmpeg), ``to_data_url``, and the prepared-image cache
(``cache_info``, ``clear_cache``, ``set_cache_limits``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import io
import math
import os
import re
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import httpx
from PIL import Image, ImageOps

from nemovlm.errors import UnsupportedInputError
from nemovlm.messages import MediaKind, MediaPart
from nemovlm.profiles import PROFILES, ModelProfile

__all__ = [
    "IMAGE_FORMATS",
    "VIDEO_FORMATS",
    "MediaCacheInfo",
    "MediaPolicy",
    "PreparedMedia",
    "VideoInfo",
    "aprepare_media",
    "cache_info",
    "clear_cache",
    "media_from_base64",
    "media_from_string",
    "mime_type_for",
    "prepare_media",
    "read_video_info",
    "set_cache_limits",
    "sniff_format",
    "to_data_url",
]


# --- public data types ------------------------------------------------------------


@dataclass(frozen=True)
class MediaPolicy:
    """What the client may do with media on the user's behalf."""

    allowed_dirs: tuple[Path, ...] = ()
    """Directories from which a bare path or ``file://`` URL *arriving inside message
    content* may be read. Empty (default): such strings are refused, because message
    content may come from a tool or a web page."""
    downscale: bool = True
    """Shrink images with more pixels than the model can use before sending."""
    max_image_pixels: int | None = None
    """Pixel budget per image; overrides ``profile.max_image_pixels`` when set."""
    max_remote_bytes: int = 20 * 1024 * 1024
    """Cap for media the client itself must fetch (checked while streaming)."""
    remote_timeout: float = 10.0
    """Seconds allowed for fetching such media."""
    http_client: httpx.Client | None = field(default=None, compare=False, repr=False)
    """The user's own client (proxies, custom TLS) for such fetches; ``None``: a new one."""


def media_policy(source: object) -> MediaPolicy:
    """The policy a model object's fields ask for (``allowed_media_dirs``,
    ``downscale_images``, ``max_image_pixels``), as both adapters name them."""
    return MediaPolicy(
        allowed_dirs=tuple(Path(p) for p in getattr(source, "allowed_media_dirs", ())),
        downscale=getattr(source, "downscale_images", True),
        max_image_pixels=getattr(source, "max_image_pixels", None),
    )


@dataclass(frozen=True)
class VideoInfo:
    """What ``read_video_info`` measured; width/height are as displayed (rotation applied)."""

    duration_s: float
    width: int
    height: int
    fps: float | None
    frames: int | None


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


@dataclass(frozen=True)
class MediaCacheInfo:
    hits: int
    misses: int
    decodes: int
    """Images decoded by ``prepare_media`` since start (a cache hit decodes nothing)."""
    entries: int
    bytes: int
    max_entries: int
    max_bytes: int


# --- formats ------------------------------------------------------------------------

_MIME: dict[str, str] = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "gif": "image/gif",
    "webp": "image/webp",
    "bmp": "image/bmp",
    "tiff": "image/tiff",
    "avif": "image/avif",
    "heic": "image/heic",
    "mp4": "video/mp4",
    "mov": "video/quicktime",
    "3gp": "video/3gpp",
    "webm": "video/webm",
    "mkv": "video/x-matroska",
    "avi": "video/x-msvideo",
    "mpegts": "video/mp2t",
    "m4a": "audio/mp4",
}
IMAGE_FORMATS = frozenset({"jpeg", "png", "gif", "webp", "bmp", "tiff", "avif", "heic"})
VIDEO_FORMATS = frozenset({"mp4", "mov", "3gp", "webm", "mkv", "avi", "mpegts"})
# Containers built from ISO BMFF boxes, which ``read_video_info`` can measure.
_ISO_BMFF = frozenset({"mp4", "mov", "3gp"})

_EXTENSIONS: dict[str, str] = {
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".jpe": "jpeg",
    ".png": "png",
    ".gif": "gif",
    ".webp": "webp",
    ".bmp": "bmp",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".avif": "avif",
    ".heic": "heic",
    ".heif": "heic",
    ".mp4": "mp4",
    ".m4v": "mp4",
    ".mov": "mov",
    ".3gp": "3gp",
    ".webm": "webm",
    ".mkv": "mkv",
    ".avi": "avi",
    ".ts": "mpegts",
}
_ALIASES = {"jpg": "jpeg", "jpe": "jpeg", "tif": "tiff", "heif": "heic", "m4v": "mp4"}
# Formats Pillow can write, by our name.
_PIL_WRITERS = {
    "jpeg": "JPEG",
    "png": "PNG",
    "gif": "GIF",
    "webp": "WEBP",
    "bmp": "BMP",
    "tiff": "TIFF",
    "avif": "AVIF",
}
_HEIC_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}


def mime_type_for(fmt: str) -> str | None:
    """The MIME type of a format name as ``sniff_format`` spells it (``"jpeg"``...)."""
    return _MIME.get(_normalize_format(fmt))


def sniff_format(data: bytes) -> str | None:
    """The format of ``data`` from its magic bytes, or ``None`` when unknown.

    Images: ``jpeg png gif webp bmp tiff avif heic``; video: ``mp4 mov 3gp webm mkv
    avi mpegts`` (``m4a`` for MP4 audio). A declared MIME type is never consulted.
    """
    head = bytes(data[:64])
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    # "BM" alone is too weak a signature: also require a known DIB header size.
    if head[:2] == b"BM" and len(head) >= 18:
        if struct.unpack_from("<I", head, 14)[0] in (12, 40, 52, 56, 64, 108, 124):
            return "bmp"
    if head[4:8] == b"ftyp" and len(head) >= 12:
        return _ftyp_format(head)
    # QuickTime files older than the ftyp box start straight with a top-level atom.
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"):
        return "mov"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm" if b"webm" in bytes(data[:4096]) else "mkv"
    if len(data) >= 377 and data[0] == 0x47 and data[188] == 0x47 and data[376] == 0x47:
        return "mpegts"
    return None


def _ftyp_format(head: bytes) -> str:
    major = head[8:12]
    size = struct.unpack_from(">I", head, 0)[0]
    compatible = {head[i : i + 4] for i in range(16, min(size, len(head)) - 3, 4)}
    brands = {major} | compatible
    if major == b"qt  ":
        return "mov"
    if major in (b"avif", b"avis") or (major in _HEIC_BRANDS and b"avif" in compatible):
        return "avif"
    if major in _HEIC_BRANDS:
        return "heic"
    if major.startswith(b"3g"):
        return "3gp"
    if major in (b"M4A ", b"M4B ") or (b"M4A " in brands and b"isom" not in brands):
        return "m4a"
    return "mp4"


def _normalize_format(fmt: str) -> str:
    fmt = fmt.strip().lower().lstrip(".")
    return _ALIASES.get(fmt, fmt)


def _normalize_formats(formats: frozenset[str] | None) -> frozenset[str] | None:
    if formats is None:
        return None
    return frozenset(_normalize_format(f) for f in formats)


def _format_from_url(url: str) -> str | None:
    suffix = Path(unquote(urlsplit(url).path)).suffix.lower()
    return _EXTENSIONS.get(suffix)


def read_media_file(path: str | Path) -> tuple[bytes, str, MediaKind]:
    """A local image or video the caller chose to send: its bytes, MIME type and kind.

    For adapters whose message format cannot carry a path (LangChain content blocks);
    the call itself is the caller's intent, so no allow-list applies.
    """
    try:
        file = Path(path).expanduser()
    except RuntimeError as exc:  # "~user" with no such user
        raise UnsupportedInputError(f"Cannot find the file {path}: {exc}") from exc
    if not file.is_file():
        raise UnsupportedInputError(f"No such file to send: {file}.")
    data = file.read_bytes()
    fmt = sniff_format(data)
    mime = mime_type_for(fmt) if fmt else None
    if fmt is None or mime is None or fmt not in IMAGE_FORMATS | VIDEO_FORMATS:
        raise UnsupportedInputError(
            f"{file} is not an image or video this package recognises (images: "
            f"{', '.join(sorted(IMAGE_FORMATS))}; video: {', '.join(sorted(VIDEO_FORMATS))})."
        )
    return data, mime, "image" if fmt in IMAGE_FORMATS else "video"


def to_data_url(data: bytes, mime_type: str) -> str:
    """``data:<mime_type>;base64,<data>``."""
    return f"data:{mime_type};base64,{base64.b64encode(data).decode('ascii')}"


# --- strings and base64 from message content ----------------------------------------

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


def media_from_string(value: str, kind: MediaKind, policy: MediaPolicy) -> MediaPart:
    """A ``MediaPart`` from a string that arrived inside message content.

    Such strings may come from a tool or a web page, so only what is safe to follow
    becomes a part: an http(s) URL (kept as is), a well-formed base64 ``data:`` URL,
    or a local path (bare or ``file://``) that resolves inside ``policy.allowed_dirs``.
    Anything else is ``UnsupportedInputError``.
    """
    text = value.strip()
    if not text:
        raise UnsupportedInputError(f"An empty string was given as {kind}; pass a URL or data.")
    scheme = _scheme_of(text)
    if scheme in ("http", "https", "file"):
        try:
            urlsplit(text)
        except ValueError as exc:  # e.g. an unclosed '[' where the host goes
            raise UnsupportedInputError(
                f"The {kind} URL {_shorten(text)!r} is malformed ({exc}); check the URL."
            ) from exc
    if scheme in ("http", "https"):
        if not urlsplit(text).netloc:
            raise UnsupportedInputError(
                f"The {kind} URL {_shorten(text)!r} has no host; expected http(s)://host/path."
            )
        return MediaPart(kind=kind, url=text)
    if scheme == "data":
        mime, _, _ = _checked_data_url(text, f"{kind} data URL")
        return MediaPart(kind=kind, url=text, mime_type=mime)
    if scheme in (None, "file"):
        return MediaPart(kind=kind, path=_allowed_path(text, scheme, kind, policy))
    raise UnsupportedInputError(
        f"The {kind} {_shorten(text)!r} uses the unsupported scheme '{scheme}:'. "
        "Use an http(s):// URL, a data: URL, or pass local files as a pathlib.Path."
    )


def media_from_base64(b64: str, mime_type: str | None, kind: MediaKind) -> MediaPart:
    """A ``MediaPart(data=...)`` from base64 text (a whole ``data:`` URL is accepted too).

    The declared ``mime_type`` is kept for reference only; ``prepare_media`` sniffs
    the real format from the bytes.
    """
    text = b64.strip()
    if text[:5].lower() == "data:":
        declared, data = _parse_data_url(text, f"{kind} data URL")
        return MediaPart(kind=kind, data=data, mime_type=mime_type or declared)
    return MediaPart(kind=kind, data=_b64decode(text, f"base64 {kind}"), mime_type=mime_type)


def _scheme_of(text: str) -> str | None:
    if _WINDOWS_DRIVE.match(text):
        return None
    match = _SCHEME.match(text)
    return match.group(1).lower() if match else None


def _shorten(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _parse_data_url(url: str, what: str) -> tuple[str | None, bytes]:
    """The declared MIME type and the decoded bytes of a base64 ``data:`` URL."""
    header, sep, payload = url[5:].partition(",")
    if not sep:
        raise UnsupportedInputError(
            f"The {what} has no ',' between header and data; "
            "expected data:<mime type>;base64,<data>."
        )
    params = [p.strip().lower() for p in header.split(";")]
    if "base64" not in params[1:]:
        raise UnsupportedInputError(
            f"The {what} is not base64-encoded (';base64' is missing from "
            f"'data:{_shorten(header, 60)},'); expected data:<mime type>;base64,<data>."
        )
    return params[0] or None, _b64decode(payload, what)


def _b64decode(payload: str, what: str) -> bytes:
    # Line breaks and dropped padding are common in hand-made base64; tolerate them,
    # since the bytes are re-encoded before they go on the wire.
    compact = "".join(payload.split())
    if "%" in compact:
        compact = unquote(compact)
    if not compact:
        raise UnsupportedInputError(f"The {what} is empty; it must carry the media's bytes.")
    if len(compact) % 4 == 1:
        raise UnsupportedInputError(
            f"The {what} is not valid base64 (its length {len(compact)} is impossible; "
            "is it cut short?)."
        )
    try:
        data = base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UnsupportedInputError(
            f"The {what} is not valid base64 ({exc}); encode the bytes with "
            "base64.b64encode (standard alphabet)."
        ) from exc
    if not data:
        raise UnsupportedInputError(f"The {what} is empty; it must carry the media's bytes.")
    return data


def _allowed_path(text: str, scheme: str | None, kind: MediaKind, policy: MediaPolicy) -> Path:
    if scheme == "file":
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise UnsupportedInputError(
                f"The {kind} file URL {_shorten(text)!r} names the host '{parts.netloc}'; "
                "only local files can be read, and only as a pathlib.Path or from allowed_dirs."
            )
        candidate = Path(url2pathname(parts.path))
    else:
        candidate = Path(text)
    try:
        resolved = candidate.expanduser().resolve()
    except (OSError, ValueError, RuntimeError) as exc:  # NUL, symlink loop, "~nobody"
        raise UnsupportedInputError(
            f"The {kind} {_shorten(text)!r} is not a usable path ({exc})."
        ) from exc
    for root in policy.allowed_dirs:
        # resolve() both sides: symlinks and '..' cannot lead out of an allowed dir.
        if resolved.is_relative_to(Path(root).expanduser().resolve()):
            if not resolved.is_file():
                raise UnsupportedInputError(
                    f"The {kind} {_shorten(text)!r} is inside an allowed directory but is "
                    f"not a readable file ({resolved})."
                )
            return resolved
    where = (
        f"it is outside allowed_dirs {[str(d) for d in policy.allowed_dirs]}"
        if policy.allowed_dirs
        else "no directory is allowed"
    )
    raise UnsupportedInputError(
        f"The {kind} {_shorten(text)!r} is a local path inside message content, which may "
        f"come from a tool or a web page, so it is not read ({where}). To send a local "
        "file, pass a pathlib.Path or allow the directory with "
        "allowed_dirs=(Path('...'),) on MediaPolicy."
    )


# --- prepare_media ------------------------------------------------------------------

_DEFAULT_POLICY = MediaPolicy()


def prepare_media(
    part: MediaPart,
    profile: ModelProfile,
    policy: MediaPolicy = _DEFAULT_POLICY,
    *,
    http_client: httpx.Client | None = None,
) -> PreparedMedia:
    """Check ``part`` against what ``profile`` accepts and shape it for the wire.

    ``http_client`` is used when an image URL must be fetched for conversion (proxies,
    custom TLS); by default a short-lived client is made. Raises
    ``UnsupportedInputError`` naming the part and what to change.
    """
    if part.kind == "image":
        return _prepare_image(part, profile, policy, http_client)
    return _prepare_video(part, profile)


async def aprepare_media(
    part: MediaPart,
    profile: ModelProfile,
    policy: MediaPolicy = _DEFAULT_POLICY,
    *,
    http_client: httpx.Client | None = None,
) -> PreparedMedia:
    """``prepare_media`` in a worker thread, so decoding never blocks the event loop."""
    return await asyncio.to_thread(prepare_media, part, profile, policy, http_client=http_client)


def _model_label(profile: ModelProfile) -> str:
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


def _refuse_kind(part: MediaPart, profile: ModelProfile) -> UnsupportedInputError:
    takers = [
        p.model
        for p in PROFILES.values()
        if (p.accepts_images if part.kind == "image" else p.accepts_video)
    ]
    hint = f" Models that take {part.kind}s include {', '.join(takers[:3])}." if takers else ""
    return UnsupportedInputError(
        f"{_model_label(profile)} accepts no {part.kind} input (it accepts "
        f"{_accepts_summary(profile)}); remove the {part.describe()} or use another model." + hint
    )


def _read_file(path: Path, part: MediaPart) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UnsupportedInputError(f"Cannot read the {part.describe()}: {exc}.") from exc


def _stat_file(path: Path, part: MediaPart) -> os.stat_result:
    try:
        st = path.stat()
    except OSError as exc:
        raise UnsupportedInputError(f"Cannot read the {part.describe()}: {exc}.") from exc
    if not path.is_file():
        raise UnsupportedInputError(f"The {part.describe()} is not a regular file.")
    return st


def _refuse_url_scheme(part: MediaPart) -> UnsupportedInputError:
    return UnsupportedInputError(
        f"The {part.describe()} is neither an http(s) nor a data: URL. Pass local files "
        "as a pathlib.Path (MediaPart(path=...)), or build the part with "
        "media_from_string and MediaPolicy(allowed_dirs=...)."
    )


# --- images ---------------------------------------------------------------------------


def _prepare_image(
    part: MediaPart,
    profile: ModelProfile,
    policy: MediaPolicy,
    http_client: httpx.Client | None,
) -> PreparedMedia:
    if not profile.accepts_images:
        raise _refuse_kind(part, profile)
    formats = _normalize_formats(profile.image_formats)
    target = _normalize_format(profile.convert_images_to) if profile.convert_images_to else None
    budget = (policy.max_image_pixels or profile.max_image_pixels) if policy.downscale else None
    settings = (formats, target, budget)

    def process(data: bytes) -> PreparedMedia:
        return _process_image_bytes(data, part, profile, formats, target, budget)

    if part.url is not None:
        scheme = _scheme_of(part.url)
        if scheme in ("http", "https"):
            url_format = _format_from_url(part.url)
            if formats is None or url_format is None or url_format in formats:
                return PreparedMedia(
                    kind="image",
                    url=part.url,
                    data=None,
                    path=None,
                    mime_type=_MIME.get(url_format) if url_format else None,
                    format=url_format,
                )
            # The extension says the model cannot take it: fetch, sniff and convert.
            fetched = _fetch(part.url, policy, http_client, part)
            return _CACHE.get_or_make((_digest(fetched), settings), lambda: process(fetched))
        if scheme != "data":
            raise _refuse_url_scheme(part)
        _, key, decoded = _checked_data_url(part.url, part.describe())

        def from_url() -> PreparedMedia:
            assert part.url is not None
            data = decoded if decoded is not None else _parse_data_url(part.url, part.describe())[1]
            return process(data)

        return _CACHE.get_or_make((key, settings), from_url)
    if part.data is not None:
        data = part.data
        return _CACHE.get_or_make((_digest(data), settings), lambda: process(data))
    assert part.path is not None
    path = part.path.expanduser().resolve()
    st = _stat_file(path, part)
    # Same path with the same mtime and size: reuse without reading the file again.
    key = (("file", str(path), st.st_mtime_ns, st.st_size), settings)
    return _CACHE.get_or_make(key, lambda: process(_read_file(path, part)))


def _digest(data: bytes) -> tuple[str, bytes, int]:
    return ("bytes", hashlib.blake2b(data, digest_size=20).digest(), len(data))


def _checked_data_url(url: str, what: str) -> tuple[str | None, Hashable, bytes | None]:
    """A data URL's declared MIME type, the digest of its bytes, and the bytes when they
    had to be decoded now (``None`` when the same URL was checked before)."""
    known = _DATA_URLS.get(url)
    if known is not None:
        return known[0], known[1], None
    mime, data = _parse_data_url(url, what)
    key = _digest(data)
    _DATA_URLS.put(url, (mime, key))
    return mime, key, data


class _DataUrlMemo:
    """Data URLs checked before, by the URL string itself -> (MIME type, digest).

    A conversation carries the same data URL in every call, often in several turns;
    base64-decoding it (to check it, then to find it in the cache) costs more than all
    the rest of a turn. An entry holds the URL, not its bytes; bounded by entries and
    by the characters of the URLs held.
    """

    def __init__(self, max_entries: int = 64, max_chars: int = 64 * 1024 * 1024) -> None:
        self._items: OrderedDict[str, tuple[str | None, Hashable]] = OrderedDict()
        self._lock = threading.Lock()
        self._chars = 0
        self.max_entries = max_entries
        self.max_chars = max_chars

    def get(self, url: str) -> tuple[str | None, Hashable] | None:
        with self._lock:
            found = self._items.get(url)
            if found is not None:
                self._items.move_to_end(url)
            return found

    def put(self, url: str, value: tuple[str | None, Hashable]) -> None:
        if len(url) > self.max_chars:
            return
        with self._lock:
            if self._items.pop(url, None) is not None:
                self._chars -= len(url)
            self._items[url] = value
            self._chars += len(url)
            while len(self._items) > self.max_entries or self._chars > self.max_chars:
                dropped, _ = self._items.popitem(last=False)
                self._chars -= len(dropped)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._chars = 0


_DATA_URLS = _DataUrlMemo()


def _process_image_bytes(
    data: bytes,
    part: MediaPart,
    profile: ModelProfile,
    formats: frozenset[str] | None,
    target: str | None,
    budget: int | None,
) -> PreparedMedia:
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedInputError(
            f"The {part.describe()} is not in an image format this package recognises "
            "(JPEG, PNG, GIF, WebP, BMP, TIFF, AVIF, HEIC); it may be corrupt or not an image."
        )
    if fmt not in IMAGE_FORMATS:
        raise UnsupportedInputError(
            f"The {part.describe()} holds {fmt} data, not an image; send a video as a video part."
        )
    needs_conversion = formats is not None and fmt not in formats
    if needs_conversion and target is None:
        raise UnsupportedInputError(
            f"{_model_label(profile)} accepts images as {', '.join(sorted(formats or ()))}; "
            f"the {part.describe()} is {fmt}. Convert it to one of those first "
            "(or set the profile's convert_images_to to let nemovlm convert it)."
        )
    if needs_conversion and target not in _PIL_WRITERS:
        raise UnsupportedInputError(
            f"The profile asks to convert images to '{target}', which nemovlm cannot write; "
            f"use one of {', '.join(sorted(_PIL_WRITERS))} in convert_images_to."
        )
    _CACHE.count_decode()
    image = _open_image(data, fmt, part)
    width, height = image.size
    # EXIF orientations 5-8 turn the picture a quarter: it shows as height x width.
    try:
        # Reading EXIF (kept after the pixels in a PNG) or counting frames (TIFF) can
        # decode a broken file, so corruption may show here already.
        turned = image.getexif().get(0x0112) in (5, 6, 7, 8)
        # Camera JPEGs (MPO) carry extra pictures as "frames", but they are stills.
        animated = getattr(image, "n_frames", 1) > 1 and fmt != "jpeg"
    except Exception as exc:  # Pillow's plugins raise many types on malformed input.
        raise UnsupportedInputError(
            f"The {part.describe()} cannot be decoded ({exc}); it may be corrupt or truncated."
        ) from exc
    untouched = PreparedMedia(
        kind="image",
        url=None,
        data=data,
        path=None,
        mime_type=_MIME[fmt],
        format=fmt,
        width=height if turned else width,
        height=width if turned else height,
    )
    # A downscaled animation would lose its frames; an accepted one goes as it is.
    too_big = budget is not None and width * height > budget and not animated
    if not needs_conversion and (not too_big or fmt not in _PIL_WRITERS):
        # Decoding at 1/8 scale still reads every byte, so corruption shows, cheaply.
        _decode(image, part, draft_to=(max(1, width // 8), max(1, height // 8)))
        return untouched
    out_format = target if needs_conversion and target else fmt
    if too_big and budget is not None:
        _decode(image, part, draft_to=_fit(width, height, budget))
    else:
        _decode(image, part)
    source_mode = image.mode
    converted = ImageOps.exif_transpose(image)
    if too_big and budget is not None:
        converted = _to_encodable_mode(converted, out_format, for_resize=True)
        converted = converted.resize(
            _fit(converted.width, converted.height, budget), Image.Resampling.LANCZOS
        )
    converted = _to_encodable_mode(converted, out_format)
    # An ICC profile only describes the pixels while the colour mode is unchanged.
    icc = image.info.get("icc_profile") if converted.mode == source_mode else None
    encoded = _encode(converted, out_format, icc)
    if not needs_conversion and len(encoded) >= len(data):
        # Re-encoding did not pay off: the original bytes are kept untouched.
        return untouched
    return PreparedMedia(
        kind="image",
        url=None,
        data=encoded,
        path=None,
        mime_type=_MIME[out_format],
        format=out_format,
        width=converted.width,
        height=converted.height,
    )


def _open_image(data: bytes, fmt: str, part: MediaPart) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise UnsupportedInputError(
            f"The {part.describe()} has too many pixels to decode safely ({exc}); "
            "resize it before sending."
        ) from exc
    except Exception as exc:  # Pillow's plugins raise many types on malformed input.
        raise UnsupportedInputError(
            f"The {part.describe()} looks like {fmt} but cannot be decoded ({exc}); "
            "it may be corrupt or truncated."
        ) from exc


def _decode(image: Image.Image, part: MediaPart, draft_to: tuple[int, int] | None = None) -> None:
    """Decode the pixels (first frame), so corrupt data fails here and not at the server."""
    try:
        if draft_to is not None and image.format in ("JPEG", "MPO"):
            # JPEG can decode straight at 1/2, 1/4 or 1/8 scale, never below draft_to.
            image.draft(image.mode, draft_to)
        image.load()
    except Exception as exc:  # Pillow's decoders raise many types on malformed input.
        raise UnsupportedInputError(
            f"The {part.describe()} cannot be decoded ({exc}); it may be corrupt or truncated."
        ) from exc


def _fit(width: int, height: int, budget: int) -> tuple[int, int]:
    """The largest size with the same aspect ratio and at most ``budget`` pixels."""
    scale = math.sqrt(budget / (width * height))
    new_w, new_h = max(1, math.floor(width * scale)), max(1, math.floor(height * scale))
    # Guards against float rounding only; floor() already keeps within the budget.
    while new_w * new_h > budget and max(new_w, new_h) > 1:
        if new_w >= new_h:
            new_w -= 1
        else:
            new_h -= 1
    return new_w, new_h


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )


def _to_encodable_mode(image: Image.Image, fmt: str, for_resize: bool = False) -> Image.Image:
    if image.mode.startswith("I;16"):
        # 16-bit grey: keep the top 8 bits, where a plain convert would clip to white.
        image = image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    alpha = _has_alpha(image)
    if fmt == "jpeg":
        if image.mode in ("L", "RGB"):
            return image
        if alpha:
            # JPEG has no alpha: flatten onto white, as viewers show transparency.
            rgba = image.convert("RGBA")
            flat = Image.new("RGB", rgba.size, (255, 255, 255))
            flat.paste(rgba, mask=rgba.getchannel("A"))
            return flat
        return image.convert("RGB")
    # LANCZOS needs continuous tones; PNG and GIF can also store palette images.
    keep: tuple[str, ...] = ("L", "RGB", "RGBA")
    if not for_resize and fmt in ("png", "gif"):
        keep = ("1", "L", "P", "RGB", "RGBA")
    if image.mode in keep:
        return image
    return image.convert("RGBA" if alpha else "RGB")


def _encode(image: Image.Image, fmt: str, icc: bytes | None) -> bytes:
    buffer = io.BytesIO()
    options: dict[str, object] = {}
    if fmt in ("jpeg", "webp", "avif"):
        options["quality"] = 90
    if icc and fmt in ("jpeg", "png", "webp", "tiff", "avif"):
        options["icc_profile"] = icc
    image.save(buffer, _PIL_WRITERS[fmt], **options)
    return buffer.getvalue()


def _fetch(
    url: str, policy: MediaPolicy, http_client: httpx.Client | None, part: MediaPart
) -> bytes:
    cap = policy.max_remote_bytes
    too_big = (
        f"The {part.describe()} is larger than MediaPolicy.max_remote_bytes ({cap} bytes); "
        "raise the limit or send a smaller file."
    )
    http_client = http_client or policy.http_client
    client = http_client or httpx.Client()
    try:
        with client.stream(
            "GET", url, timeout=policy.remote_timeout, follow_redirects=True
        ) as response:
            if response.status_code >= 400:
                raise UnsupportedInputError(
                    f"Fetching the {part.describe()} (to convert it for the model) failed "
                    f"with HTTP {response.status_code}; check the URL or send the bytes."
                )
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > cap:
                raise UnsupportedInputError(too_big)
            chunks: list[bytes] = []
            total = 0
            for chunk in response.iter_bytes():
                total += len(chunk)
                if total > cap:
                    raise UnsupportedInputError(too_big)
                chunks.append(chunk)
    except httpx.TimeoutException as exc:
        raise UnsupportedInputError(
            f"Fetching the {part.describe()} timed out after {policy.remote_timeout} s "
            "(MediaPolicy.remote_timeout); raise it or send the bytes."
        ) from exc
    except httpx.HTTPError as exc:
        raise UnsupportedInputError(
            f"Fetching the {part.describe()} failed ({type(exc).__name__}: {exc}); "
            "check the URL or send the bytes."
        ) from exc
    finally:
        if http_client is None:
            client.close()
    return b"".join(chunks)


# --- the prepared-image cache ---------------------------------------------------------


class _ImageCache:
    """A thread-safe LRU of prepared images, bounded by entries and by bytes held."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self._items: OrderedDict[Hashable, PreparedMedia] = OrderedDict()
        self._lock = threading.Lock()
        self._bytes = 0
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.hits = self.misses = self.decodes = 0

    def get_or_make(self, key: Hashable, make: Callable[[], PreparedMedia]) -> PreparedMedia:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return found
            self.misses += 1
        # Made outside the lock: two threads may prepare the same image once each,
        # which is cheaper than serialising every decode.
        made = make()
        self._put(key, made)
        return made

    def count_decode(self) -> None:
        with self._lock:
            self.decodes += 1

    def _put(self, key: Hashable, item: PreparedMedia) -> None:
        size = len(item.data) if item.data is not None else 0
        with self._lock:
            if size > self.max_bytes or self.max_entries <= 0:
                return
            old = self._items.pop(key, None)
            if old is not None and old.data is not None:
                self._bytes -= len(old.data)
            self._items[key] = item
            self._bytes += size
            self._evict()

    def _evict(self) -> None:
        while self._items and (len(self._items) > self.max_entries or self._bytes > self.max_bytes):
            _, dropped = self._items.popitem(last=False)
            if dropped.data is not None:
                self._bytes -= len(dropped.data)

    def info(self) -> MediaCacheInfo:
        with self._lock:
            return MediaCacheInfo(
                hits=self.hits,
                misses=self.misses,
                decodes=self.decodes,
                entries=len(self._items),
                bytes=self._bytes,
                max_entries=self.max_entries,
                max_bytes=self.max_bytes,
            )

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0
            self.hits = self.misses = self.decodes = 0

    def set_limits(self, max_entries: int, max_bytes: int) -> None:
        with self._lock:
            self.max_entries, self.max_bytes = max_entries, max_bytes
            self._evict()


_CACHE = _ImageCache(max_entries=256, max_bytes=256 * 1024 * 1024)


def cache_info() -> MediaCacheInfo:
    """Counters and size of the prepared-image cache."""
    return _CACHE.info()


def clear_cache() -> None:
    """Empty the prepared-image cache and reset its counters."""
    _CACHE.clear()
    _DATA_URLS.clear()


def set_cache_limits(max_entries: int = 256, max_bytes: int = 256 * 1024 * 1024) -> None:
    """Bound the prepared-image cache (0 entries disables it); evicts at once if needed."""
    _CACHE.set_limits(max_entries, max_bytes)


# --- video ----------------------------------------------------------------------------


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


# --- MP4 boxes --------------------------------------------------------------------------

# Boxes that may open an ISO BMFF file; anything else means "not an MP4".
_FIRST_BOXES = {b"ftyp", b"styp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid"}
# moov holds only indexes; one this large is hostile or broken, not a real video.
_MAX_MOOV_BYTES = 256 * 1024 * 1024


class _Malformed(Exception):
    pass


@dataclass
class _Track:
    handler: bytes = b""
    width: float = 0.0
    height: float = 0.0
    rotated: bool = False
    timescale: int = 0
    duration: int = 0
    samples: int = 0
    sample_ticks: int = 0
    has_stts: bool = False
    entry_size: tuple[int, int] = (0, 0)


def read_video_info(source: bytes | Path) -> VideoInfo:
    """Duration, display size, frame rate and frame count of an MP4/MOV, from its boxes.

    Only the ``moov`` box is read; ``mdat`` is skipped by seeking, so a large file on
    disk is never loaded. Not an MP4, or no video track: ``UnsupportedInputError``.
    """
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            moov = _read_moov(io.BytesIO(source), len(source))
        else:
            with open(source, "rb") as file:
                moov = _read_moov(file, os.fstat(file.fileno()).st_size)
        return _process_moov(moov)
    except (_Malformed, struct.error) as exc:
        raise UnsupportedInputError(f"The MP4 is malformed or truncated ({exc}).") from exc
    except OSError as exc:
        raise UnsupportedInputError(f"Cannot read the video file: {exc}.") from exc


def _read_moov(file: BinaryIO, total: int) -> bytes:
    pos = 0
    while pos + 8 <= total:
        file.seek(pos)
        header = file.read(16)
        size, box_type = struct.unpack_from(">I4s", header)
        header_len = 8
        if size == 1:
            size = struct.unpack_from(">Q", header, 8)[0]
            header_len = 16
        elif size == 0:
            size = total - pos  # "extends to the end of the file"
        if pos == 0 and box_type not in _FIRST_BOXES:
            raise UnsupportedInputError(
                "Not an MP4/MOV file (no ISO BMFF box at the start); send an MP4 video."
            )
        if size < header_len:
            raise _Malformed(f"box {box_type!r} at {pos} has an impossible size {size}")
        if box_type == b"moov":
            if pos + size > total:
                raise _Malformed("the moov box runs past the end of the file")
            if size > _MAX_MOOV_BYTES:
                raise _Malformed(f"a {size}-byte moov box is not plausible")
            file.seek(pos + header_len)
            return file.read(size - header_len)
        pos += size
    if total < 8:
        raise UnsupportedInputError("Not an MP4/MOV file (too short); send an MP4 video.")
    raise _Malformed("no moov box; the file may be cut short or fragmented without an index")


def _iter_boxes(buf: bytes) -> Iterator[tuple[bytes, bytes]]:
    pos, end = 0, len(buf)
    while pos + 8 <= end:
        size, box_type = struct.unpack_from(">I4s", buf, pos)
        header_len = 8
        if size == 1:
            size = struct.unpack_from(">Q", buf, pos + 8)[0]
            header_len = 16
        elif size == 0:
            size = end - pos
        if size < header_len or pos + size > end:
            raise _Malformed(f"box {box_type!r} overruns its parent")
        yield box_type, buf[pos + header_len : pos + size]
        pos += size


def _child(buf: bytes, box_type: bytes) -> bytes | None:
    return next((body for kind, body in _iter_boxes(buf) if kind == box_type), None)


def _process_moov(moov: bytes) -> VideoInfo:
    movie_timescale = movie_duration = 0
    tracks: list[_Track] = []
    for kind, body in _iter_boxes(moov):
        if kind == b"mvhd":
            if body[0] == 1:
                movie_timescale, movie_duration = struct.unpack_from(">IQ", body, 20)
            else:
                movie_timescale, movie_duration = struct.unpack_from(">II", body, 12)
                if movie_duration == 0xFFFFFFFF:  # "unknown" in version 0
                    movie_duration = 0
        elif kind == b"trak":
            tracks.append(_process_trak(body))
    video = next((t for t in tracks if t.handler == b"vide"), None)
    if video is None:
        raise UnsupportedInputError(
            "The MP4 has no video track (no track with handler 'vide'); send a video file."
        )
    if movie_timescale and movie_duration:
        duration = movie_duration / movie_timescale
    elif video.timescale and video.duration:
        duration = video.duration / video.timescale
    elif video.timescale and video.sample_ticks:
        duration = video.sample_ticks / video.timescale
    else:
        duration = 0.0
    width, height = round(video.width), round(video.height)
    if not (width and height):
        width, height = video.entry_size
    if video.rotated:
        width, height = height, width
    fps: float | None = None
    if video.samples and video.sample_ticks and video.timescale:
        fps = video.samples * video.timescale / video.sample_ticks
    frames = video.samples if video.has_stts and video.samples else None
    return VideoInfo(duration_s=duration, width=width, height=height, fps=fps, frames=frames)


def _process_trak(trak: bytes) -> _Track:
    track = _Track()
    tkhd = _child(trak, b"tkhd")
    if tkhd is not None:
        matrix_at = 52 if tkhd[0] == 1 else 40
        a, b, _, c, d = struct.unpack_from(">5i", tkhd, matrix_at)
        track.rotated = a == 0 and d == 0 and b != 0 and c != 0
        w, h = struct.unpack_from(">II", tkhd, matrix_at + 36)
        track.width, track.height = w / 65536, h / 65536
    mdia = _child(trak, b"mdia")
    if mdia is None:
        return track
    for kind, body in _iter_boxes(mdia):
        if kind == b"mdhd":
            if body[0] == 1:
                track.timescale, track.duration = struct.unpack_from(">IQ", body, 20)
            else:
                track.timescale, track.duration = struct.unpack_from(">II", body, 12)
        elif kind == b"hdlr":
            track.handler = body[8:12]
        elif kind == b"minf":
            stbl = _child(body, b"stbl")
            if stbl is not None:
                _process_stbl(stbl, track)
    return track


def _process_stbl(stbl: bytes, track: _Track) -> None:
    for kind, body in _iter_boxes(stbl):
        if kind == b"stts":
            (count,) = struct.unpack_from(">I", body, 4)
            if 8 + 8 * count > len(body):
                raise _Malformed("stts lists more entries than it holds")
            track.has_stts = True
            for i in range(count):
                samples, delta = struct.unpack_from(">II", body, 8 + 8 * i)
                track.samples += samples
                track.sample_ticks += samples * delta
        elif kind == b"stsd" and len(body) >= 8 + 8 + 28:
            # First sample entry; a visual one stores width/height after 24 bytes.
            track.entry_size = struct.unpack_from(">HH", body, 8 + 8 + 24)
