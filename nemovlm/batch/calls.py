"""One model call for one input, on the core's backends: shared by ``nemovlm batch``,
``nemovlm ask`` and the Ray predictor.

``connect`` picks the backend a model id is served by (NIM local or hosted, or fal);
``media_part`` turns an input (a path, URL, data URL or bytes) into a ``MediaPart``;
``answer`` makes the call and returns an ``Outcome`` that holds either the answer or
the error, never raising for one input's failure.
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from nemovlm.backends import ChatBackend
from nemovlm.errors import MissingCredentialsError, UnsupportedInputError
from nemovlm.hosted import HostedMedia
from nemovlm.media import IMAGE_FORMATS, VIDEO_FORMATS, mime_type_for, read_media_file, sniff_format
from nemovlm.messages import MediaKind, MediaPart, Reply, TextPart, Turn
from nemovlm.options import RequestOptions, check_options
from nemovlm.profiles import ModelProfile, get_profile

URL_SCHEMES = ("http://", "https://", "data:")


def connect(
    model: str,
    *,
    base_url: str | None = None,
    api_key: SecretStr | str | None = None,
    max_retries: int | None = None,
    timeout: float | None = None,
    hosted: bool | None = None,
    hosted_media: HostedMedia | None = None,
    assets_url: str | None = None,
) -> ChatBackend:
    """The core backend serving ``model``: fal for the fal apps, else NIM (``base_url``,
    then ``NVIDIA_BASE_URL``, then NVIDIA's hosted catalog with ``NVIDIA_API_KEY``).

    ``max_retries`` is the ``openai`` SDK's (NIM); fal-client retries on its own, so
    asking for a count there is refused rather than ignored. ``hosted``,
    ``hosted_media`` and ``assets_url`` are the hosted catalog's (``nemovlm.hosted``):
    ``hosted=None`` decides from the base URL; large media go up as NVCF assets.
    """
    profile = get_profile(model)
    if profile.backend == "fal":
        if base_url is not None:
            raise UnsupportedInputError(
                f"{model} is served by fal, which has no base URL setting: drop --base-url "
                "(FAL_KEY picks the account)."
            )
        if hosted or hosted_media is not None or assets_url is not None:
            raise UnsupportedInputError(
                f"{model} is served by fal, not NVIDIA's hosted catalog: drop --hosted, "
                "--hosted-media and --assets-url."
            )
        if max_retries is not None:
            raise UnsupportedInputError(
                f"{model} is served by fal, whose client retries 408/409/429 and connection "
                "errors on its own: drop the retry count."
            )
        try:
            from nemovlm.backends.fal import FalBackend, resolve_fal_key
        except ImportError as exc:  # fal-client is the `fal` extra
            raise UnsupportedInputError(
                f"{model} is served by fal: install the fal client with "
                "`pip install 'nemovlm[fal]'`."
            ) from exc
        settings: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        return FalBackend(profile, api_key=resolve_fal_key(api_key), **settings)
    from nemovlm.backends.nim import NIMBackend

    settings = {}
    if max_retries is not None:
        if max_retries < 0:
            raise UnsupportedInputError(f"max_retries must be >= 0 (got {max_retries}).")
        settings["max_retries"] = max_retries
    if timeout is not None:
        settings["timeout"] = timeout
    return NIMBackend.connect(
        profile,
        base_url=base_url,
        api_key=api_key,
        hosted=hosted,
        hosted_media=hosted_media or "auto",
        assets_url=assets_url,
        **settings,
    )


def request_options(
    profile: ModelProfile,
    *,
    reasoning: bool | None = None,
    max_tokens: int | None = None,
    json_schema: Mapping[str, Any] | None = None,
) -> RequestOptions:
    """The options every call of a job uses, checked once against the model: a setting
    the model cannot take fails the job before any row is read."""
    options = RequestOptions(reasoning=reasoning, max_tokens=max_tokens, json_schema=json_schema)
    check_options(options, profile, stream=False)
    return options


def load_json_schema(path: str | Path) -> dict[str, Any]:
    """A ``--json-schema`` file: either ``{"name": ..., "schema": {...}}`` (OpenAI's
    ``json_schema`` object) or a bare JSON Schema, which is named ``record``."""
    file = Path(path).expanduser()
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UnsupportedInputError(f"Cannot read the JSON schema file {file}: {exc}") from exc
    except ValueError as exc:
        raise UnsupportedInputError(f"{file} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise UnsupportedInputError(f"{file} must hold a JSON object (a JSON Schema).")
    if isinstance(value.get("schema"), dict) and isinstance(value.get("name"), str):
        return value
    return {"name": "record", "schema": value}


def json_schema_option(value: Mapping[str, Any] | str | Path | None) -> dict[str, Any] | None:
    """``RequestOptions.json_schema`` from a file, an OpenAI ``json_schema`` object, or a
    bare JSON Schema (named ``record``)."""
    if value is None:
        return None
    if isinstance(value, (str, Path)):
        return load_json_schema(value)
    if isinstance(value.get("schema"), Mapping) and isinstance(value.get("name"), str):
        return dict(value)
    return {"name": "record", "schema": dict(value)}  # a bare JSON Schema


# --- inputs ----------------------------------------------------------------------------


def is_url(value: str) -> bool:
    return value.startswith(URL_SCHEMES)


def media_kind_of_url(url: str, profile: ModelProfile) -> MediaKind:
    """Image or video for a URL: its data-URL type or file extension, else what the
    model takes (video for a video-only model, image otherwise)."""
    if url.startswith("data:"):
        mime: str | None = url[5:].split(";")[0].split(",")[0]
    else:
        mime = mimetypes.guess_type(urlsplit(url).path)[0]
    if mime and mime.startswith("video/"):
        return "video"
    if mime and mime.startswith("image/"):
        return "image"
    if profile.requires == "video" or not profile.accepts_images:
        return "video"
    return "image"


def media_part(
    value: str | Path | bytes, profile: ModelProfile, kind: MediaKind | None = None
) -> MediaPart:
    """A ``MediaPart`` for one input: URLs pass through, files are read with the core's
    reader (format by content), bytes are sniffed. ``kind`` is what the caller said the
    input is; content that disagrees is refused."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        fmt = sniff_format(data)
        mime = mime_type_for(fmt) if fmt else None
        if fmt is None or mime is None or fmt not in IMAGE_FORMATS | VIDEO_FORMATS:
            raise UnsupportedInputError(
                f"These {len(data)} bytes are not an image or video this package recognises."
            )
        found: MediaKind = "image" if fmt in IMAGE_FORMATS else "video"
        _check_kind(found, kind, f"{len(data)} bytes")
        return MediaPart(found, data=data, mime_type=mime)
    if isinstance(value, str) and is_url(value):
        return MediaPart(kind or media_kind_of_url(value, profile), url=value)
    data, mime, found = read_media_file(value)
    _check_kind(found, kind, str(value))
    return MediaPart(found, data=data, mime_type=mime)


def _check_kind(found: MediaKind, said: MediaKind | None, what: str) -> None:
    if said is not None and said != found:
        raise UnsupportedInputError(
            f"{what} is {'a video' if found == 'video' else 'an image'}, but was given as "
            f"{'a video' if said == 'video' else 'an image'}: pass it as {found}."
        )


# --- one call --------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one call gave: the answer, or ``error`` (and whatever was known before it)."""

    answer: str | None = None
    reasoning: str | None = None
    parsed: Any = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    response_id: str | None = None
    seconds: float = 0.0
    error: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


async def answer(
    backend: ChatBackend,
    value: str | Path | bytes,
    prompt: str | None,
    options: RequestOptions,
    *,
    kind: MediaKind | None = None,
) -> Outcome:
    """Ask ``backend`` about one input. Never raises for the input's own failure: a bad
    input (refused before any request) or a failed call (after the client's retries)
    comes back as ``Outcome.error``. Files are read in a worker thread."""
    started = time.monotonic()
    try:
        turn = await user_turn(value, prompt, backend.profile, kind)
        reply = await backend.acomplete([turn], options)
    except Exception as exc:  # one row's failure is recorded, the job goes on
        return Outcome(error=error_record(exc), seconds=time.monotonic() - started)
    outcome = process_reply(reply, backend.profile, options)
    outcome.seconds = time.monotonic() - started
    return outcome


async def user_turn(
    value: str | Path | bytes, prompt: str | None, profile: ModelProfile, kind: MediaKind | None
) -> Turn:
    """The one user message of a call: the prompt, then the input (the core orders
    media first where the model wants it). Files are read in a worker thread."""
    if not prompt:
        raise UnsupportedInputError("This row has no prompt: give one to the job or the row.")
    if isinstance(value, str) and is_url(value):
        part = media_part(value, profile, kind)  # nothing to read
    else:
        part = await asyncio.to_thread(media_part, value, profile, kind)
    return Turn("user", [TextPart(prompt), part])


def process_reply(reply: Reply, profile: ModelProfile, options: RequestOptions) -> Outcome:
    """The row fields of a reply; with a JSON schema, an answer that is not JSON is an
    error (the answer is kept for reading)."""
    usage = reply.usage
    out = Outcome(
        answer=reply.text,
        reasoning=reply.reasoning,
        input_tokens=usage.input_tokens if usage else None,
        output_tokens=usage.output_tokens if usage else None,
        cost_usd=estimated_cost(reply, profile),
        response_id=reply.response_id or reply.metadata.get("fal_request_id"),
    )
    if options.json_schema is not None:
        try:
            out.parsed = json.loads(reply.text)
        except ValueError as exc:
            out.error = {
                "type": "InvalidJSON",
                "message": f"The answer is not the JSON the schema asks for ({exc}).",
                "status": None,
                "request_id": out.response_id,
                "sent": True,
            }
    return out


def estimated_cost(reply: Reply, profile: ModelProfile) -> float | None:
    """USD for one reply: the backend's own estimate (fal), else tokens x the
    profile's published price; ``None`` where the model has no price."""
    cost = reply.metadata.get("estimated_cost_usd")
    if isinstance(cost, (int, float)):
        return float(cost)
    if profile.price_per_1k_tokens is None or reply.usage is None:
        return None
    return reply.usage.total_tokens / 1000 * profile.price_per_1k_tokens


def error_record(exc: BaseException) -> dict[str, Any]:
    """An exception as a row's ``error``: type, one-line message, HTTP status and
    request id where the server gave them, and whether a request was sent at all."""
    return {
        "type": type(exc).__name__,
        "message": " ".join(str(exc).split()) or type(exc).__name__,
        "status": getattr(exc, "status_code", None),
        "request_id": getattr(exc, "request_id", None),
        # Input errors are raised before anything leaves the process.
        "sent": not isinstance(exc, (UnsupportedInputError, MissingCredentialsError, OSError)),
    }
