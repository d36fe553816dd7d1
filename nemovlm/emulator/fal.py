"""A local fal: the queue protocol and CDN uploads, for the two NVIDIA apps on fal.

``fal-client`` 1.0.x only speaks https to the hosts it read from ``FAL_RUN_HOST`` /
``FAL_QUEUE_RUN_HOST`` at import, and uploads to module constants (``REST_URL``,
``CDN_URL``). So the emulator serves TLS with a certificate made at start-up
(``trustme``), and ``aim_fal_client`` points the in-process client at it: the test
or demo then runs fal-client's real HTTP code, unpatched above the URL constants.

Flow: ``start_fal_emulator`` makes the CA, a CA bundle (the existing trust plus that
CA) and serves ``create_fal_app``; ``FalEmulator.env`` is what a client process needs
(hosts and ``SSL_CERT_FILE``); ``aim_fal_client`` also redirects uploads;
``use_fal_emulator`` does both and undoes them::

    with use_fal_emulator() as emulator:
        fal_client.SyncClient(key="any").subscribe("fal-ai/nemotron-diffusion-vlm", {...})

Routes, as fal-client 1.0.x calls them::

    POST /{app}                                 submit -> request_id + status/response/cancel URLs
    GET  /{owner}/{alias}/requests/{id}/status  ?logs=1: IN_QUEUE / IN_PROGRESS / COMPLETED
    GET  /{owner}/{alias}/requests/{id}         the result, or the app's error status
    PUT  /{owner}/{alias}/requests/{id}/cancel  202 CANCELLATION_REQUESTED / 400 ALREADY_COMPLETED
    POST /run/{app}                             synchronous ``run`` (FAL_RUN_HOST ends in /run)
    POST /rest/storage/auth/token               CDN token (fal-client's REST_URL is /rest)
    POST /cdn/files/upload                      upload -> access_url (CDN_URL is /cdn)
    POST /rest/storage/upload/initiate, PUT /rest/storage/upload/{id}   fallback upload
    GET  /cdn/files/{id}/{name}                 the uploaded bytes

A request sits IN_QUEUE for one status poll (position 0), is IN_PROGRESS with log
lines for the next, and is COMPLETED after that. The app runs when the request
leaves the queue: like fal's runners it validates then, so a bad input is a
COMPLETED request whose result is 422 with FastAPI's ``{"detail": [...]}`` list.

The apps answer deterministically from what they received and always say they are an
emulator: ``"[nemovlm emulator] fal-ai/nemotron-diffusion-vlm saw png 64x48 (data
URL); prompt: '...'"``. They honour the core's prompt protocol for tools
(``<tools>``/``<tool_choice>``) and structured output (``<json_schema>``) with
replies synthesised from the schemas.

Faults, for tests: ``FalEmulator.inject_fault(kind)`` (the next request) or the
marker ``[emulator-fault:KIND]`` anywhere in the prompt. ``failed``: the result is a
500; ``422``: the result is a validation error; ``slow``: the request stays
IN_PROGRESS for ``FalEmulatorSettings.slow_seconds`` (default: until cancelled; to
test timeouts and cancellation);
``bad_json``: the output is a tool call cut off mid-JSON (``BROKEN_TOOL_CALL``);
``429``: the submission itself is refused with 429 and ``Retry-After`` (injected only,
never by marker, since every retry would carry the marker again; counted in
``FalEmulatorState.rate_limited``); ``slow_submit`` (injected only): the submission is
held until the client hangs up - then nothing is queued - or for
``FalEmulatorSettings.submit_hold_seconds``, after which it is queued as a ``slow``
request (to test a timeout that strikes before fal has acknowledged the request);
``late_ack`` (injected only): the submission queues the request (as a ``slow`` one),
sets ``FalEmulatorState.late_ack_queued``, and answers only once the test sets
``late_ack_release`` (to test a call cancelled between fal queueing the request and the
client reading the answer).
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import binascii
import io
import json
import math
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nemovlm.emulator.schema import Hint, hint_from_text, synthesize
from nemovlm.emulator.server import RunningServer

FaultKind = Literal["failed", "422", "slow", "bad_json", "429", "slow_submit", "late_ack"]
FAULT_KINDS: tuple[FaultKind, ...] = (
    "failed", "422", "slow", "bad_json", "429", "slow_submit", "late_ack"
)  # fmt: skip
BROKEN_TOOL_CALL = '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Par'
EMULATOR_TAG = "[nemovlm emulator]"

_FAULT_MARKER = re.compile(r"\[emulator-fault:(failed|422|slow|bad_json)\]")
_TOOLS = re.compile(r"<tools>\s*(.*?)\s*</tools>", re.DOTALL)
_TOOL_CHOICE = re.compile(r"<tool_choice>\s*(.*?)\s*</tool_choice>", re.DOTALL)
_JSON_SCHEMA = re.compile(r"<json_schema>\s*(.*?)\s*</json_schema>", re.DOTALL)
# A real block, not the protocol's own mention of "<tool_result> blocks".
_TOOL_RESULT = re.compile(r"<tool_result[^>]*>.*?</tool_result>", re.DOTALL)
_PROTOCOL_BLOCK = re.compile(
    r"<(tools|tool_choice|json_schema|tool_result)[^>]*>.*?</\1>", re.DOTALL
)
_CDN_FILE_PATH = re.compile(r"^/cdn/files/([0-9a-f]+)/")
_LOOPBACK = ("127.0.0.1", "localhost")
_IMAGE_TOKENS = 256  # tokens an image costs, for the emulated usage
_VIDEO_TOKENS_PER_SECOND = 64


@dataclass(frozen=True)
class FalEmulatorSettings:
    think_tags: Literal["full", "close_only"] = "full"
    """How Omni's think-mode output marks the reasoning: ``<think>...</think>`` or, as
    some deployments do, only the closing tag."""
    slow_seconds: float = math.inf
    """How long a ``slow`` request stays IN_PROGRESS unless cancelled (default: until
    cancelled, so a test of a timeout or a cancellation cannot race it)."""
    submit_hold_seconds: float = 30.0
    """How long a ``slow_submit`` submission is held while the client stays connected."""
    api_keys: frozenset[str] | None = None
    """Keys accepted; ``None`` (default): any non-blank key."""


# --- state ---------------------------------------------------------------------------


@dataclass
class _StoredFile:
    data: bytes = field(repr=False)
    content_type: str
    name: str
    lifecycle: dict[str, Any] | None = None
    """The object lifecycle the upload asked for (fal-client's ``StorageSettings`` as
    the ``X-Fal-Object-Lifecycle(-Preference)`` header), e.g. its expiry in seconds."""


@dataclass
class _AppError(Exception):
    """What an app answers instead of a result: a status and a JSON body."""

    status_code: int
    body: dict[str, Any]
    error_type: str

    @property
    def message(self) -> str:
        detail = self.body.get("detail")
        if isinstance(detail, list) and detail:
            return str(detail[0].get("msg", detail))
        return str(detail)


@dataclass
class _QueuedRequest:
    request_id: str
    app: str
    """The endpoint id as submitted (may carry a subpath, e.g. ``.../video``)."""
    queue_app: str
    """``owner/alias``: what status, result and cancel URLs are keyed by."""
    arguments: Any
    fault: FaultKind | None
    polls: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    result: dict[str, Any] | None = None
    error: _AppError | None = None
    cancelled: bool = False
    logs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def completed(self) -> bool:
        return self.finished_at is not None


@dataclass
class FalEmulatorState:
    """Everything the emulator remembers; tests may read ``requests`` and ``files``."""

    settings: FalEmulatorSettings = field(default_factory=FalEmulatorSettings)
    requests: dict[str, _QueuedRequest] = field(default_factory=dict)
    files: dict[str, _StoredFile] = field(default_factory=dict)
    cdn_tokens: set[str] = field(default_factory=set)
    faults: deque[FaultKind] = field(default_factory=deque)
    refuse_uploads: bool = False
    """Storage refuses every upload (403), to test how an upload failure reads."""
    rate_limited: int = 0
    """Submissions refused with 429 (the ``429`` fault)."""
    late_ack_queued: threading.Event = field(default_factory=threading.Event)
    """Set once a ``late_ack`` submission has queued its request (not yet answered)."""
    late_ack_release: threading.Event = field(default_factory=threading.Event)
    """``late_ack`` submissions answer once this is set (or after ``submit_hold_seconds``)."""

    def inject_fault(self, kind: FaultKind, times: int = 1) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"Unknown fault {kind!r}; choose one of {FAULT_KINDS}.")
        self.faults.extend([kind] * times)

    def received(self, app: str | None = None) -> list[Any]:
        """The arguments of every submitted request (optionally for one app), in order."""
        return [r.arguments for r in self.requests.values() if app is None or r.app == app]


# --- validation (what fal's FastAPI runners would answer) ----------------------------


class _DiffusionInput(BaseModel):
    """seeds/fal-nemotron-diffusion-vlm.md, input schema."""

    model_config = ConfigDict(extra="ignore")
    image_url: str
    prompt: str
    max_tokens: int = Field(512, ge=1, le=8192)
    num_inference_steps: int = Field(256, ge=1, le=1024)
    inference_steps: int = Field(256, ge=1, le=1024)
    block_length: int = Field(32, ge=8, le=128)
    threshold: float = Field(0.9, ge=0, le=1)


class _OmniInput(BaseModel):
    """seeds/fal-nemotron-3-nano-omni-video.md, input schema."""

    model_config = ConfigDict(extra="ignore")
    prompt: str
    video_url: str
    system_prompt: str | None = None
    reasoning_mode: Literal["think", "no_think"] = "no_think"
    max_tokens: int = Field(1024, ge=1, le=20_000)
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(0.95, ge=0, le=1)


def _detail(field_name: str, msg: str, kind: str = "value_error") -> dict[str, Any]:
    return {"loc": ["body", field_name], "msg": msg, "type": kind}


def _unprocessable(details: list[dict[str, Any]]) -> _AppError:
    return _AppError(422, {"detail": details}, "validation_error")


def _process_validation_error(exc: ValidationError) -> _AppError:
    details = []
    for err in exc.errors():
        item: dict[str, Any] = {
            "loc": ["body", *err["loc"]],
            "msg": err["msg"],
            "type": err["type"],
        }
        ctx = {k: v for k, v in (err.get("ctx") or {}).items() if _is_plain(v)}
        if ctx:
            item["ctx"] = ctx
        details.append(item)
    return _unprocessable(details)


def _is_plain(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) or value is None


def diffusion_blocks(max_tokens: int, block_length: int) -> int:
    """Blocks in the upstream schedule: a partial last block still takes a block."""
    return math.ceil(max_tokens / block_length)


# --- media the apps read ---------------------------------------------------------------


@dataclass
class _Media:
    data: bytes | None = field(repr=False)
    source: str
    """Where it came from, said in the answer: ``data URL``, ``uploaded file x.mp4``..."""


def _load_media(url: str, state: FalEmulatorState) -> _Media:
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        try:
            if header.endswith(";base64"):
                data = base64.b64decode(payload, validate=True)
            else:
                data = unquote(payload).encode()
        except (binascii.Error, ValueError):
            return _Media(None, "data URL that is not valid base64")
        return _Media(data, "data URL")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return _Media(None, f"unsupported URL scheme {parts.scheme or 'none'!r}")
    match = _CDN_FILE_PATH.match(parts.path)
    if parts.hostname in _LOOPBACK and match and match.group(1) in state.files:
        stored = state.files[match.group(1)]
        return _Media(stored.data, f"uploaded file {stored.name}")
    # No internet here: a remote URL is described, never fetched.
    return _Media(None, f"remote URL {url[:80]}, not fetched by the emulator")


def _describe_image(media: _Media) -> str:
    if media.data is None:
        return f"an image ({media.source})"
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(media.data)) as img:
            fmt = (img.format or "image").lower()
            return f"{fmt} {img.width}x{img.height} ({media.source})"
    except (UnidentifiedImageError, OSError) as exc:
        raise _unprocessable(
            [_detail("image_url", f"image_url could not be decoded as an image ({media.source})")]
        ) from exc


def _describe_video(media: _Media) -> tuple[str, float]:
    """A description and the duration in seconds; 422 for what the app refuses."""
    if media.data is None:
        return f"a video ({media.source})", 10.0
    from nemovlm.media import read_video_info

    try:
        info = read_video_info(media.data)
    except ValueError as exc:
        raise _unprocessable(
            [_detail("video_url", f"video_url is not a readable mp4 ({media.source}): {exc}")]
        ) from exc
    width, height, seconds = info.width, info.height, info.duration_s
    problems = []
    if seconds > 120:
        problems.append(
            _detail("video_url", f"Video is {seconds:.1f} s long; the maximum is 2 minutes.")
        )
    # "1080p" names the short side, as nemovlm.media reads it.
    if min(width, height) > 1080:
        problems.append(_detail("video_url", f"Video is {width}x{height}; the maximum is 1080p."))
    if problems:
        raise _unprocessable(problems)
    return f"mp4 {width}x{height}, {seconds:.1f} s ({media.source})", seconds


# --- the prompt protocol (tools, structured output) ------------------------------------


def _protocol_reply(text: str) -> str | None:
    """The JSON the core's prompt protocol asks for, synthesised from its schemas."""
    hint = _short_hint(text)
    tools_match = _TOOLS.search(text)
    choice_match = _TOOL_CHOICE.search(text)
    if tools_match and choice_match and not _TOOL_RESULT.search(text):
        choice = choice_match.group(1).strip()
        try:
            tools = json.loads(tools_match.group(1))
        except ValueError:
            tools = []
        if choice != "none" and isinstance(tools, list) and tools:
            chosen = next((t for t in tools if t.get("name") == choice), tools[0])
            params = chosen.get("parameters") or {}
            args = synthesize(params, hint)
            call = {"name": chosen.get("name"), "arguments": args if isinstance(args, dict) else {}}
            return json.dumps({"tool_calls": [call]})
    schema_match = _JSON_SCHEMA.search(text)
    if schema_match:
        try:
            schema = json.loads(schema_match.group(1))
        except ValueError:
            return None
        return json.dumps(synthesize(schema, hint))
    return None


def _short_hint(text: str) -> Hint:
    """Values from the prompt's own words (its last line, protocol blocks left out)."""
    plain = _PROTOCOL_BLOCK.sub(" ", text)
    lines = [line.strip() for line in plain.splitlines() if line.strip()]
    return hint_from_text(lines[-1] if lines else "")


# --- the two apps ----------------------------------------------------------------------


def _tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def _echo(prompt: str) -> str:
    """The prompt as the answer repeats it: its start, and its end when it is long."""
    if len(prompt) <= 300:
        return repr(prompt)
    return f"{prompt[:300]!r} ... {prompt[-200:]!r}"


def _run_diffusion(app: str, arguments: Any, state: FalEmulatorState) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        args = _DiffusionInput.model_validate(arguments)
    except ValidationError as exc:
        raise _process_validation_error(exc) from exc
    given = arguments.keys()
    blocks = diffusion_blocks(args.max_tokens, args.block_length)
    steps = args.num_inference_steps
    if "num_inference_steps" not in given and "inference_steps" in given:
        steps = args.inference_steps
    explicit = "num_inference_steps" in given or "inference_steps" in given
    if explicit:
        name = "num_inference_steps" if "num_inference_steps" in given else "inference_steps"
        if steps < blocks or steps % blocks:
            raise _unprocessable(
                [
                    _detail(
                        name,
                        f"Value error, {name}={steps} must be at least and divisible by "
                        f"max_tokens / block_length = {args.max_tokens} / "
                        f"{args.block_length} = {blocks} blocks.",
                    )
                ]
            )
    else:
        steps = math.ceil(steps / blocks) * blocks
    seen = _describe_image(_load_media(args.image_url, state))
    preprocessed = time.perf_counter()
    output = _protocol_reply(args.prompt) or (
        f"{EMULATOR_TAG} {app} saw {seen}; prompt: {_echo(args.prompt)}"
    )
    if _tokens(output) > args.max_tokens:
        output = output[: args.max_tokens * 4]
    prompt_tokens = _tokens(args.prompt) + _IMAGE_TOKENS
    completion_tokens = _tokens(output)
    done = time.perf_counter()
    return {
        "output": output,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "num_inference_steps": steps,
            "block_length": args.block_length,
            "num_blocks": blocks,
            "threshold": args.threshold,
        },
        "timings": {
            "preprocess": round(preprocessed - started, 6),
            "inference": round(done - preprocessed, 6),
            "total": round(done - started, 6),
        },
    }


def _run_omni(app: str, arguments: Any, state: FalEmulatorState) -> dict[str, Any]:
    try:
        args = _OmniInput.model_validate(arguments)
    except ValidationError as exc:
        raise _process_validation_error(exc) from exc
    seen, seconds = _describe_video(_load_media(args.video_url, state))
    system = args.system_prompt or ""
    answer = _protocol_reply(f"{system}\n{args.prompt}")
    if answer is None:
        steer = f"; system prompt: {_echo(system)}" if system else ""
        answer = f"{EMULATOR_TAG} {app} saw {seen}{steer}; prompt: {_echo(args.prompt)}"
    output = answer
    if args.reasoning_mode == "think":
        thought = (
            f"{EMULATOR_TAG} reasoning: the request carries {seen} and asks "
            f"{args.prompt[:80]!r}; temperature {args.temperature}, top_p {args.top_p}."
        )
        opening = "<think>\n" if state.settings.think_tags == "full" else ""
        output = f"{opening}{thought}\n</think>\n\n{answer}"
    finish_reason = "stop"
    if _tokens(output) > args.max_tokens:
        output = output[: args.max_tokens * 4]
        finish_reason = "length"
    input_tokens = _tokens(system + args.prompt) + math.ceil(seconds) * _VIDEO_TOKENS_PER_SECOND
    return {
        "output": output,
        "finish_reason": finish_reason,
        "usage": {"input_tokens": input_tokens, "output_tokens": _tokens(output)},
    }


@dataclass(frozen=True)
class _App:
    """One emulated fal app: how it runs, and what its runner logs while it works."""

    run: Callable[[str, Any, FalEmulatorState], dict[str, Any]]
    work_log: str


# The emulator's own table of the apps it serves, from shared/seeds/fal-*.md (not from
# nemovlm.profiles, so a wrong client profile fails a test instead of being mirrored).
_APPS: Mapping[str, _App] = {
    "fal-ai/nemotron-diffusion-vlm": _App(_run_diffusion, "decoding"),
    "nvidia/nemotron-3-nano-omni/video": _App(_run_omni, "reading the video"),
}


def _run_app(app: str, arguments: Any, fault: FaultKind | None, state: FalEmulatorState) -> Any:
    if fault == "failed":
        raise _AppError(
            500,
            {"detail": f"{EMULATOR_TAG} injected failure: the runner crashed."},
            "runner_server_error",
        )
    if fault == "422":
        raise _unprocessable([_detail("prompt", f"{EMULATOR_TAG} injected validation error.")])
    result = _APPS[app].run(app, arguments, state)
    if fault == "bad_json":
        result["output"] = BROKEN_TOOL_CALL
    return result


def _fault_for(arguments: Any, state: FalEmulatorState) -> FaultKind | None:
    if state.faults:
        return state.faults.popleft()
    if isinstance(arguments, dict):
        text = f"{arguments.get('system_prompt') or ''}\n{arguments.get('prompt') or ''}"
        match = _FAULT_MARKER.search(text)
        if match:
            return match.group(1)  # type: ignore[return-value]
    return None


# --- HTTP --------------------------------------------------------------------------------


def _state(request: Request) -> FalEmulatorState:
    state: FalEmulatorState = request.app.state.fal
    return state


def _refuse_unauthorised(request: Request) -> Response | None:
    scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
    token = token.strip()
    keys = _state(request).settings.api_keys
    if scheme.lower() not in ("key", "bearer") or not token:
        message = "Missing or blank key: send the header 'Authorization: Key <FAL_KEY>'."
    elif keys is not None and token not in keys:
        message = "This key is not accepted by the emulator."
    else:
        return None
    return JSONResponse({"detail": f"{EMULATOR_TAG} {message}"}, status_code=401)


def _queue_app(app: str) -> str:
    return "/".join(app.split("/")[:2])


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _urls(request: Request, record: _QueuedRequest) -> dict[str, str]:
    url = f"{_base(request)}/{record.queue_app}/requests/{record.request_id}"
    return {"response_url": url, "status_url": f"{url}/status", "cancel_url": f"{url}/cancel"}


def _log(record: _QueuedRequest, message: str) -> None:
    record.logs.append(
        {
            "message": f"{EMULATOR_TAG} {message}",
            "level": "INFO",
            "source": "USER",
            "timestamp": datetime.now(timezone.utc).isoformat(),
        }
    )


async def _read_json(request: Request) -> Any:
    body = await request.body()
    try:
        return json.loads(body or b"null")
    except ValueError:
        return _InvalidJSON()


class _InvalidJSON:
    """A body that did not parse; the app answers 422 when it runs."""


async def submit(request: Request) -> Response:
    if (refused := _refuse_unauthorised(request)) is not None:
        return refused
    app = request.path_params["app"].strip("/")
    if app not in _APPS:
        return JSONResponse(
            {"detail": f"{EMULATOR_TAG} no application {app!r}; known: {sorted(_APPS)}"},
            status_code=404,
        )
    state = _state(request)
    arguments = await _read_json(request)
    fault = _fault_for(arguments, state)
    if fault == "429":
        return _rate_limited(state)
    if fault == "slow_submit":
        if await _hung_up_within(request, state.settings.submit_hold_seconds):
            return Response(status_code=499)  # nobody is listening; nothing was queued
        fault = "slow"
    late = fault == "late_ack"
    record = _QueuedRequest(
        request_id=str(uuid.uuid4()),
        app=app,
        queue_app=_queue_app(app),
        arguments=arguments,
        fault="slow" if late else fault,
    )
    state.requests[record.request_id] = record
    if late:
        # Queued now; the answer waits for the test (a client may hang up meanwhile).
        state.late_ack_queued.set()
        hold = state.settings.submit_hold_seconds
        await asyncio.to_thread(state.late_ack_release.wait, None if math.isinf(hold) else hold)
    body = {
        "status": "IN_QUEUE",
        "request_id": record.request_id,
        **_urls(request, record),
        "queue_position": 0,
    }
    return JSONResponse(body, headers={"x-fal-request-id": record.request_id})


async def _hung_up_within(request: Request, seconds: float) -> bool:
    """Whether the client disconnects within ``seconds`` (its body is read already, so
    the next ASGI message is the disconnect)."""

    async def hang_up() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    try:
        await asyncio.wait_for(hang_up(), None if math.isinf(seconds) else seconds)
    except asyncio.TimeoutError:
        return False
    return True


def _rate_limited(state: FalEmulatorState) -> Response:
    state.rate_limited += 1
    return JSONResponse(
        {"detail": f"{EMULATOR_TAG} injected 429: too many requests, retry later."},
        status_code=429,
        headers={"retry-after": "0"},
    )


def _advance(record: _QueuedRequest, state: FalEmulatorState) -> None:
    """Move a request one step on: queue -> runner -> done (a slow one waits)."""
    record.polls += 1
    if record.completed or record.polls < 2:
        return
    if record.started_at is None:
        record.started_at = time.monotonic()
        _log(record, f"runner picked up request {record.request_id} for {record.app}")
        _log(record, _APPS[record.app].work_log)
        return
    if record.fault == "slow":
        if time.monotonic() - record.started_at < state.settings.slow_seconds:
            return
        record.fault = None
    _finish(record, state)


def _finish(record: _QueuedRequest, state: FalEmulatorState) -> None:
    arguments = record.arguments
    try:
        if isinstance(arguments, _InvalidJSON):
            raise _unprocessable(
                [{"loc": ["body"], "msg": "JSON decode error", "type": "json_invalid"}]
            )
        record.result = _run_app(record.app, arguments, record.fault, state)
        _log(record, "done")
    except _AppError as exc:
        record.error = exc
        _log(record, f"failed with status {exc.status_code}")
    record.finished_at = time.monotonic()


def _find(request: Request) -> _QueuedRequest | Response:
    params = request.path_params
    record = _state(request).requests.get(params["request_id"])
    if record is None or record.queue_app != f"{params['owner']}/{params['alias']}":
        return JSONResponse({"detail": "Request not found"}, status_code=404)
    return record


async def status(request: Request) -> Response:
    if (refused := _refuse_unauthorised(request)) is not None:
        return refused
    record = _find(request)
    if isinstance(record, Response):
        return record
    _advance(record, _state(request))
    with_logs = request.query_params.get("logs", "0").lower() in ("1", "true")
    logs = list(record.logs) if with_logs else None
    headers = {"x-fal-request-id": record.request_id}
    urls = _urls(request, record)
    if record.started_at is None:
        body: dict[str, Any] = {"status": "IN_QUEUE", "queue_position": 0, **urls}
    elif not record.completed:
        body = {"status": "IN_PROGRESS", "logs": logs, **urls}
    else:
        assert record.finished_at is not None
        body = {
            "status": "COMPLETED",
            "logs": logs,
            "metrics": {"inference_time": round(record.finished_at - record.started_at, 6)},
            **urls,
        }
        if record.error is not None:
            body["error"] = record.error.message
            body["error_type"] = record.error.error_type
    return JSONResponse(body, headers=headers)


async def result(request: Request) -> Response:
    if (refused := _refuse_unauthorised(request)) is not None:
        return refused
    record = _find(request)
    if isinstance(record, Response):
        return record
    headers = {"x-fal-request-id": record.request_id}
    if not record.completed:
        return JSONResponse(
            {"detail": "Request is still in progress"}, status_code=400, headers=headers
        )
    if record.error is not None:
        headers["x-fal-error-type"] = record.error.error_type
        return JSONResponse(
            record.error.body, status_code=record.error.status_code, headers=headers
        )
    return JSONResponse(record.result, headers=headers)


async def cancel(request: Request) -> Response:
    if (refused := _refuse_unauthorised(request)) is not None:
        return refused
    record = _find(request)
    if isinstance(record, Response):
        return record
    headers = {"x-fal-request-id": record.request_id}
    if record.completed:
        return JSONResponse({"status": "ALREADY_COMPLETED"}, status_code=400, headers=headers)
    record.cancelled = True
    record.error = _AppError(400, {"detail": "Request was cancelled"}, "request_cancelled")
    record.started_at = record.started_at or time.monotonic()
    record.finished_at = time.monotonic()
    _log(record, "cancelled by the caller")
    return JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202, headers=headers)


async def run(request: Request) -> Response:
    """fal's synchronous endpoint: the app runs in the request (a slow one sleeps)."""
    if (refused := _refuse_unauthorised(request)) is not None:
        return refused
    app = request.path_params["app"].strip("/")
    if app not in _APPS:
        return JSONResponse({"detail": f"{EMULATOR_TAG} no application {app!r}"}, 404)
    state = _state(request)
    arguments = await _read_json(request)
    fault = _fault_for(arguments, state)
    if fault == "429":
        return _rate_limited(state)
    if fault == "slow":
        if await _hung_up_within(request, state.settings.slow_seconds):
            return Response(status_code=499)  # the caller gave up; nothing ran
        fault = None
    record = _QueuedRequest(str(uuid.uuid4()), app, _queue_app(app), arguments, fault)
    record.started_at = time.monotonic()
    state.requests[record.request_id] = record
    _finish(record, state)
    headers = {"x-fal-request-id": record.request_id}
    if record.error is not None:
        return JSONResponse(record.error.body, record.error.status_code, headers=headers)
    return JSONResponse(record.result, headers=headers)


async def cdn_token(request: Request) -> Response:
    if (refused := _refuse_unauthorised(request)) is not None:
        return refused
    token = secrets.token_hex(16)
    _state(request).cdn_tokens.add(token)
    expires = datetime.now(timezone.utc) + timedelta(hours=1)
    return JSONResponse(
        {
            "token": token,
            "token_type": "Bearer",
            "base_url": f"{_base(request)}/cdn",
            "expires_at": expires.isoformat(),
        }
    )


def _store(request: Request, data: bytes, content_type: str, name: str) -> str:
    file_id = uuid.uuid4().hex
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name) or "upload.bin"
    lifecycle = _lifecycle(request)
    _state(request).files[file_id] = _StoredFile(data, content_type, safe, lifecycle)
    return f"{_base(request)}/cdn/files/{file_id}/{safe}"


def _lifecycle(request: Request) -> dict[str, Any] | None:
    # The CDN reads X-Fal-Object-Lifecycle, storage X-Fal-Object-Lifecycle-Preference.
    raw = request.headers.get("x-fal-object-lifecycle") or request.headers.get(
        "x-fal-object-lifecycle-preference"
    )
    try:
        value = json.loads(raw) if raw else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _refused_upload(request: Request) -> Response | None:
    if not _state(request).refuse_uploads:
        return None
    return JSONResponse({"detail": f"{EMULATOR_TAG} storage refuses uploads"}, status_code=403)


async def cdn_upload(request: Request) -> Response:
    if (refused := _refused_upload(request)) is not None:
        return refused
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme != "Bearer" or token.strip() not in _state(request).cdn_tokens:
        return JSONResponse({"detail": f"{EMULATOR_TAG} invalid CDN token"}, status_code=401)
    data = await request.body()
    content_type = request.headers.get("content-type", "application/octet-stream")
    name = request.headers.get("x-fal-file-name", "upload.bin")
    url = _store(request, data, content_type, name)
    return JSONResponse(
        {"access_url": url, "content_type": content_type, "file_name": name, "file_size": len(data)}
    )


async def storage_initiate(request: Request) -> Response:
    if (refused := _refuse_unauthorised(request) or _refused_upload(request)) is not None:
        return refused
    body = await _read_json(request)
    body = body if isinstance(body, dict) else {}
    name = str(body.get("file_name") or "upload.bin")
    content_type = str(body.get("content_type") or "application/octet-stream")
    file_url = _store(request, b"", content_type, name)
    file_id = file_url.rsplit("/", 2)[1]
    return JSONResponse(
        {"upload_url": f"{_base(request)}/rest/storage/upload/{file_id}", "file_url": file_url}
    )


async def storage_put(request: Request) -> Response:
    stored = _state(request).files.get(request.path_params["file_id"])
    if stored is None:
        return JSONResponse({"detail": "Unknown upload"}, status_code=404)
    stored.data = await request.body()
    return Response(status_code=200)


async def cdn_file(request: Request) -> Response:
    stored = _state(request).files.get(request.path_params["file_id"])
    if stored is None:
        return JSONResponse({"detail": "File not found"}, status_code=404)
    return Response(stored.data, media_type=stored.content_type)


def create_fal_app(settings: FalEmulatorSettings | None = None) -> Starlette:
    """The emulated fal as an ASGI app; its state is ``app.state.fal``."""
    app = Starlette(
        routes=[
            Route("/cdn/files/upload", cdn_upload, methods=["POST"]),
            Route("/cdn/files/{file_id}/{name:path}", cdn_file, methods=["GET"]),
            Route("/rest/storage/auth/token", cdn_token, methods=["POST"]),
            Route("/rest/storage/upload/initiate", storage_initiate, methods=["POST"]),
            Route("/rest/storage/upload/{file_id}", storage_put, methods=["PUT"]),
            Route("/run/{app:path}", run, methods=["POST"]),
            Route("/{owner}/{alias}/requests/{request_id}/status", status, methods=["GET"]),
            Route("/{owner}/{alias}/requests/{request_id}/cancel", cancel, methods=["PUT"]),
            Route("/{owner}/{alias}/requests/{request_id}", result, methods=["GET"]),
            Route("/{app:path}", submit, methods=["POST"]),
        ]
    )
    app.state.fal = FalEmulatorState(settings or FalEmulatorSettings())
    return app


# --- starting it, and aiming fal-client at it ----------------------------------------------


@dataclass
class FalEmulator:
    """A running fal emulator: its server, its state and the settings clients need."""

    server: RunningServer
    state: FalEmulatorState
    ca_bundle: Path
    """The trust a client needs: the CAs it already trusted plus the emulator's CA."""

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def netloc(self) -> str:
        return f"{self.server.host}:{self.server.port}"

    @property
    def env(self) -> dict[str, str]:
        """Environment for a fal-client process started after this (hosts and trust).
        Uploads also need ``aim_fal_client`` in that process (no variable exists)."""
        return {
            "FAL_QUEUE_RUN_HOST": self.netloc,
            "FAL_RUN_HOST": f"{self.netloc}/run",
            "SSL_CERT_FILE": str(self.ca_bundle),
        }

    def inject_fault(self, kind: FaultKind, times: int = 1) -> None:
        """Make the next ``times`` submitted requests fail the ``kind`` way."""
        self.state.inject_fault(kind, times)

    def aim_fal_client(self) -> Callable[[], None]:
        return aim_fal_client(self.url, self.ca_bundle)

    def stop(self) -> None:
        # A TLS connection a client left open closes only after the client answers the
        # close_notify, so uvicorn would wait (up to RunningServer's 10 s join) for
        # clients that may never close: skip that wait, as uvicorn's second Ctrl-C does.
        self.server.stop(force=True)

    def __enter__(self) -> FalEmulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_fal_emulator(
    port: int = 0, *, host: str = "127.0.0.1", settings: FalEmulatorSettings | None = None
) -> FalEmulator:
    """Serve the fal emulator over TLS on ``host:port`` (0: a free port)."""
    import trustme

    workdir = Path(tempfile.mkdtemp(prefix="nemovlm-fal-"))
    atexit.register(shutil.rmtree, workdir, True)
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = workdir / "server.pem", workdir / "server.key"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    bundle = workdir / "ca-bundle.pem"
    bundle.write_bytes(_existing_trust() + b"\n" + ca.cert_pem.bytes())
    app = create_fal_app(settings)
    server = RunningServer(app, host=host, port=port, certfile=certfile, keyfile=keyfile)
    server.start()
    return FalEmulator(server=server, state=app.state.fal, ca_bundle=bundle)


@contextmanager
def use_fal_emulator(
    port: int = 0, *, settings: FalEmulatorSettings | None = None
) -> Iterator[FalEmulator]:
    """Start the emulator and aim this process's fal-client at it; undo both on exit."""
    emulator = start_fal_emulator(port, settings=settings)
    undo = emulator.aim_fal_client()
    try:
        yield emulator
    finally:
        undo()
        emulator.stop()


def _existing_trust() -> bytes:
    """The CAs clients trust now (``SSL_CERT_FILE`` or certifi), kept in the bundle so
    pointing ``SSL_CERT_FILE`` at it takes nothing away."""
    current = os.environ.get("SSL_CERT_FILE")
    if current and Path(current).is_file():
        return Path(current).read_bytes()
    import certifi

    return Path(certifi.where()).read_bytes()


_FAL_CLIENT_URLS = (
    "RUN_URL_FORMAT",
    "QUEUE_URL_FORMAT",
    "REALTIME_URL_FORMAT",
    "REST_URL",
    "CDN_URL",
)


def aim_at_exported_emulator() -> Callable[[], None] | None:
    """After ``nemovlm emulator``'s exports (``FAL_QUEUE_RUN_HOST`` on loopback and
    ``SSL_CERT_FILE``), send this process's fal uploads to that emulator as well: the
    queue follows the exports by itself, fal-client's upload hosts cannot. Returns the
    undo, or ``None`` when the environment names no local fal emulator."""
    host = os.environ.get("FAL_QUEUE_RUN_HOST", "")
    bundle = os.environ.get("SSL_CERT_FILE")
    hostname = urlsplit(f"https://{host}").hostname if host else None
    if not bundle or hostname not in ("127.0.0.1", "localhost", "::1"):
        return None
    return aim_fal_client(f"https://{host}", bundle)


def aim_fal_client(url: str, ca_bundle: Path | str) -> Callable[[], None]:
    """Point this process's fal-client at the emulator at ``url``; returns an undo.

    Only clients created afterwards trust the emulator (httpx reads ``SSL_CERT_FILE``
    when a client is built), so create ``fal_client.SyncClient()`` / ``AsyncClient()``
    after this rather than using module-level functions that may have cached a client.
    """
    netloc = urlsplit(url).netloc
    env = {
        "FAL_QUEUE_RUN_HOST": netloc,
        "FAL_RUN_HOST": f"{netloc}/run",
        "SSL_CERT_FILE": str(ca_bundle),
    }
    saved_env = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    # fal-client has no setting for its upload hosts (``REST_URL`` and ``CDN_URL`` are
    # module constants), and derives its queue/run URLs from FAL_*_HOST once, at import.
    # This is the one place the package redirects it: the module's URL constants, set
    # to what the environment above would give (and the emulator's upload endpoints).
    # Everything below them - auth, retries, polling, upload protocol - stays fal-client's.
    import fal_client.client as fal_module

    saved_urls = {name: getattr(fal_module, name) for name in _FAL_CLIENT_URLS}
    fal_module.RUN_URL_FORMAT = f"https://{netloc}/run/"  # type: ignore[attr-defined]
    fal_module.QUEUE_URL_FORMAT = f"https://{netloc}/"  # type: ignore[attr-defined]
    fal_module.REALTIME_URL_FORMAT = f"wss://{netloc}/run/"  # type: ignore[attr-defined]
    fal_module.REST_URL = f"https://{netloc}/rest"  # type: ignore[attr-defined]
    fal_module.CDN_URL = f"https://{netloc}/cdn"  # type: ignore[attr-defined]

    def restore() -> None:
        for name, value in saved_urls.items():
            setattr(fal_module, name, value)
        for name, old in saved_env.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old

    return restore


__all__ = [
    "BROKEN_TOOL_CALL",
    "EMULATOR_TAG",
    "FAULT_KINDS",
    "FalEmulator",
    "FalEmulatorSettings",
    "FalEmulatorState",
    "FaultKind",
    "aim_at_exported_emulator",
    "aim_fal_client",
    "create_fal_app",
    "diffusion_blocks",
    "start_fal_emulator",
    "use_fal_emulator",
]
