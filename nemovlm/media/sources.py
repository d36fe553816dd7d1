"""Where media may come from, and what the client may do to get it (``MediaPolicy``):
strings found inside message content (http(s) URLs, ``data:`` URLs, local paths only
from the allow-list), base64 from framework blocks, files a caller chose to send, and
the remote fetch used when an http(s) image must be converted."""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import httpx

from nemovlm.errors import UnsupportedInputError, http_errors
from nemovlm.media.cache import DATA_URLS, content_key
from nemovlm.media.formats import IMAGE_FORMATS, VIDEO_FORMATS, mime_type_for, sniff_format
from nemovlm.messages import MediaKind, MediaPart


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
    # Typed loosely on purpose: the adapters pass their own ``http_client`` through,
    # and its type follows the installed openai SDK (httpx, or httpx2 in openai 3.x).
    http_client: Any = None
    """An ``httpx.Client`` (or ``httpx2.Client``) of the user's own, with their proxy,
    TLS settings or headers, for media the client itself must fetch. ``None``
    (default): a short-lived client per fetch. Never closed here; not pickled (a
    pickled policy fetches with its own client where it lands)."""

    def __getstate__(self) -> dict[str, Any]:
        # A client holds sockets and locks; like the backends' clients, it stays behind.
        return {**self.__dict__, "http_client": None}

    # Immutable, so a copy is the policy itself (and keeps its client, which pickling,
    # the default route for copies, would drop).
    def __copy__(self) -> MediaPolicy:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> MediaPolicy:
        return self


class MediaFile(NamedTuple):
    """What ``read_media_file`` found: the bytes, their MIME type and kind, from content."""

    data: bytes
    mime_type: str
    kind: MediaKind


def read_media_file(path: str | Path, kind: MediaKind | None = None) -> MediaFile:
    """A local image or video the caller chose to send: its bytes, MIME type and kind.

    The one file reader for callers whose message format cannot carry a path
    (LangChain's ``media_block``, the CLI); the call itself is the caller's intent, so
    no allow-list applies. Format, MIME type and kind come from the bytes (``.mov`` ->
    ``video/quicktime``), never from the file name. ``kind`` (optional) is what the
    caller means to send; a file holding the other kind is refused. A missing,
    unreadable, empty or unrecognised file is ``UnsupportedInputError``.
    """
    try:
        file = Path(path).expanduser()
    except RuntimeError as exc:  # "~user" with no such user
        raise UnsupportedInputError(f"Cannot find the file {path}: {exc}") from exc
    if file.is_dir():
        raise UnsupportedInputError(f"{file} is a directory; name an image or video file instead.")
    if not file.is_file():
        raise UnsupportedInputError(f"No such file to send: {file}; check the path.")
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise UnsupportedInputError(f"Cannot read {file}: {exc}.") from exc
    if not data:
        raise UnsupportedInputError(f"{file} is empty; send an image or video file.")
    fmt = sniff_format(data)
    mime = mime_type_for(fmt) if fmt else None
    if fmt is None or mime is None or fmt not in IMAGE_FORMATS | VIDEO_FORMATS:
        found = f" (it holds {fmt} data)" if fmt else ""
        raise UnsupportedInputError(
            f"{file} is not an image or video this package recognises{found}; judged by "
            f"its content (images: {', '.join(sorted(IMAGE_FORMATS))}; video: "
            f"{', '.join(sorted(VIDEO_FORMATS))})."
        )
    found_kind: MediaKind = "image" if fmt in IMAGE_FORMATS else "video"
    if kind is not None and kind != found_kind:
        raise UnsupportedInputError(
            f"{file} holds {'an' if found_kind == 'image' else 'a'} {found_kind} ({fmt}), "
            f"not {'an' if kind == 'image' else 'a'} {kind}; send it as {found_kind}."
        )
    return MediaFile(data, mime, found_kind)


def to_data_url(data: bytes, mime_type: str) -> str:
    """``data:<mime_type>;base64,<data>``."""
    return f"data:{mime_type};base64,{base64.b64encode(data).decode('ascii')}"


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
    scheme = scheme_of(text)
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
        mime, _, _ = checked_data_url(text, f"{kind} data URL")
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
        declared, data = parse_data_url(text, f"{kind} data URL")
        return MediaPart(kind=kind, data=data, mime_type=mime_type or declared)
    return MediaPart(kind=kind, data=_b64decode(text, f"base64 {kind}"), mime_type=mime_type)


def scheme_of(text: str) -> str | None:
    if _WINDOWS_DRIVE.match(text):
        return None
    match = _SCHEME.match(text)
    return match.group(1).lower() if match else None


def _shorten(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_data_url(url: str, what: str) -> tuple[str | None, bytes]:
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


def checked_data_url(url: str, what: str) -> tuple[str | None, Hashable, bytes | None]:
    """A data URL's declared MIME type, the digest of its bytes, and the bytes when they
    had to be decoded now (``None`` when the same URL was checked before)."""
    known = DATA_URLS.get(url)
    if known is not None:
        return known[0], known[1], None
    mime, data = parse_data_url(url, what)
    key = content_key(data)
    DATA_URLS.put(url, (mime, key))
    return mime, key, data


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


def read_file(path: Path, part: MediaPart) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UnsupportedInputError(f"Cannot read the {part.describe()}: {exc}.") from exc


def stat_file(path: Path, part: MediaPart) -> os.stat_result:
    try:
        st = path.stat()
    except OSError as exc:
        raise UnsupportedInputError(f"Cannot read the {part.describe()}: {exc}.") from exc
    if not path.is_file():
        raise UnsupportedInputError(f"The {part.describe()} is not a regular file.")
    return st


def refuse_url_scheme(part: MediaPart) -> UnsupportedInputError:
    return UnsupportedInputError(
        f"The {part.describe()} is neither an http(s) nor a data: URL. Pass local files "
        "as a pathlib.Path (MediaPart(path=...)), or build the part with "
        "media_from_string and MediaPolicy(allowed_dirs=...)."
    )


def fetch_remote(url: str, policy: MediaPolicy, part: MediaPart) -> bytes:
    """The bytes at an http(s) URL, through ``policy.http_client`` when set, within
    ``policy.max_remote_bytes`` (checked while streaming) and ``policy.remote_timeout``."""
    cap = policy.max_remote_bytes
    too_big = (
        f"The {part.describe()} is larger than MediaPolicy.max_remote_bytes ({cap} bytes); "
        "raise the limit or send a smaller file."
    )
    own_client = policy.http_client is None
    client = httpx.Client() if own_client else policy.http_client
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
    except http_errors("TimeoutException") as exc:
        raise UnsupportedInputError(
            f"Fetching the {part.describe()} timed out after {policy.remote_timeout} s "
            "(MediaPolicy.remote_timeout); raise it or send the bytes."
        ) from exc
    except http_errors("HTTPError") as exc:
        raise UnsupportedInputError(
            f"Fetching the {part.describe()} failed ({type(exc).__name__}: {exc}); "
            "check the URL or send the bytes."
        ) from exc
    finally:
        if own_client:
            client.close()
    return b"".join(chunks)
