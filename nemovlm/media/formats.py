"""What media really is: format names sniffed from magic bytes (never the declared
type), their MIME types, and the formats a file extension or URL names."""

from __future__ import annotations

import functools
import struct
from pathlib import Path
from urllib.parse import unquote, urlsplit

MIME_TYPES: dict[str, str] = {
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
ISO_BMFF_FORMATS = frozenset({"mp4", "mov", "3gp"})


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


_HEIC_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}


def mime_type_for(fmt: str) -> str | None:
    """The MIME type of a format name as ``sniff_format`` spells it (``"jpeg"``...)."""
    return MIME_TYPES.get(normalize_format(fmt))


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


def normalize_format(fmt: str) -> str:
    fmt = fmt.strip().lower().lstrip(".")
    return _ALIASES.get(fmt, fmt)


@functools.lru_cache(maxsize=64)
def normalize_formats(formats: frozenset[str] | None) -> frozenset[str] | None:
    if formats is None:
        return None
    return frozenset(normalize_format(f) for f in formats)


def format_from_url(url: str) -> str | None:
    suffix = Path(unquote(urlsplit(url).path)).suffix.lower()
    return _EXTENSIONS.get(suffix)
