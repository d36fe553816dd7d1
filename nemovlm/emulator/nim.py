"""An emulated NIM: the OpenAI-compatible chat API of the three NIM vision-language models.

It is the local test peer for the real ``openai`` SDK (and so for our NIM backend): it
enforces each model's documented constraints with the 400s NIM gives, answers in each
model's own shape, and builds every answer deterministically from what it received.
Every answer says it comes from the emulator. ``RULES`` is its own constraint table,
written from ``shared/seeds/nim-*.md`` and deliberately not from ``nemovlm.profiles``,
so a wrong client profile fails a test instead of being mirrored. Any other model id
is served as a generic OpenAI-compatible VLM (any image format, video, native tools,
no reasoning).

Input flow (``POST /v1/chat/completions``, handler ``_chat_completions``):
  ``_record`` keeps the body and headers -> ``_process_fault`` reads the fault headers
  (status faults and slow act at once) -> ``_process_chat`` checks the parameters and
  walks the messages: ``_process_content`` turns content into ``_Part``s, decoding
  media with ``_process_image`` / ``_process_video`` (data URLs inline, loopback URLs
  fetched, others only described) -> ``_process_reasoning`` decides whether the model
  reasons and where the trace goes.

Output flow:
  ``_compose_reply`` picks the answer (native tool call, tool-result echo,
  prompt-protocol tool call, structured output, or the description from
  ``_describe``), once per choice (``n``: the description ends with ``choice: i of
  n``, tool call ids differ), adds reasoning and the ``max_tokens`` cut -> ``_map_completion``
  (JSON) or ``_map_chunks`` (SSE ``chat.completion.chunk``s, content in small pieces so
  ``<think>`` tags get split, choices interleaved), both shaping the message per model
  with ``_map_message`` and, when asked, per-token logprobs with ``_map_logprobs``
  (the emulator's token is 4 characters); content faults
  (``malformed_json``, ``no_choices``, ``bad_tool_args``, ``break_stream``, ``stall``)
  act here.

Test hooks: request headers ``X-Emulator-Fault``, ``X-Emulator-Fault-Times``,
``X-Emulator-Fault-Key``, ``X-Emulator-Retry-After`` (and ``X-Emulator-Should-Retry``,
sent back as ``x-should-retry`` with a status fault; fault ``redirect``: a 307 back to
the same URL), ``X-Emulator-Reasoning-Style``,
``X-Emulator-Chunk-Size``; ``GET`` / ``DELETE /emulator/requests`` read and clear the
record of the last requests (``app.state.requests``: chat completions and model
listings, with whether a bearer key came but never the key).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import itertools
import json
import logging
import math
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote_to_bytes, urlsplit

import httpx
from PIL import Image
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as ASGIMessage
from typing_extensions import assert_never

from nemovlm.emulator.hosted import (
    HostedError,
    HostedState,
    asset_bytes,
    check_chat,
    hold_if_armed,
    hosted_routes,
)
from nemovlm.emulator.schema import Hint, SchemaError, hint_from_text, synthesize
from nemovlm.media import read_video_info, sniff_format

__all__ = [
    "GENERIC_RULES",
    "RULES",
    "ModelRules",
    "create_nim_app",
]

logger = logging.getLogger(__name__)


ReasoningStyle = Literal["think_tags", "closing_tag_only", "reasoning_content", "reasoning"]
_STYLES: tuple[ReasoningStyle, ...] = (
    "think_tags",
    "closing_tag_only",
    "reasoning_content",
    "reasoning",
)


@dataclass(frozen=True)
class ModelRules:
    """What one served model accepts and how it answers."""

    image_formats: frozenset[str] | None = None
    """Pillow format names (lower case) the model decodes; ``None``: any."""
    video_formats: frozenset[str] | None = None
    """Video containers accepted; ``None``: any; empty: video is refused."""
    native_tools: bool = True
    """OpenAI ``tools`` are served; ``False``: a request with tools is a 400."""
    img_tags: bool = False
    """``<img src="..." />`` inside text content is read as an image."""
    reasoning: Literal["system_think", "default_on"] | None = None
    """``system_think``: reasons when a system message holds ``/think``;
    ``default_on``: reasons unless ``chat_template_kwargs.thinking`` is false."""
    reasoning_with_video: bool = True
    include_reasoning_param: bool = False
    """``include_reasoning: false`` hides the trace; refused when streaming."""
    reasoning_style: ReasoningStyle = "think_tags"
    """Where the trace goes unless the request header overrides it."""
    json_schema: bool = True
    """``response_format`` is honoured; ``False``: ignored, the model answers in prose."""
    null_fields: bool = False
    """Replies carry ``reasoning_content: null`` and ``tool_calls: []``."""


_JPEG_PNG = frozenset({"jpeg", "png"})
_MP4 = frozenset({"mp4"})

RULES: Mapping[str, ModelRules] = {
    # seeds/nim-llama-3.1-nemotron-nano-vl-8b-v1.md: "JPG, JPEG and PNG", the <img> text
    # fallback, replies with reasoning_content null and tool_calls [], no tool calling.
    "nvidia/llama-3.1-nemotron-nano-vl-8b-v1": ModelRules(
        image_formats=_JPEG_PNG,
        video_formats=frozenset(),
        native_tools=False,
        img_tags=True,
        json_schema=False,
        null_fields=True,
    ),
    # seeds/nim-nemotron-nano-12b-v2-vl.md: JPG/JPEG/PNG, video, "/think" in the system
    # prompt, "For video inputs, reasoning is not supported".
    "nvidia/nemotron-nano-12b-v2-vl": ModelRules(
        image_formats=_JPEG_PNG,
        video_formats=_MP4,
        reasoning="system_think",
        reasoning_with_video=False,
    ),
    # seeds/nim-diffusiongemma-26b-a4b-it.md: GIF/JPG/JPEG/PNG, MP4, reasoning on by
    # default in message.reasoning, include_reasoning false not for streaming.
    "google/diffusiongemma-26b-a4b-it": ModelRules(
        image_formats=frozenset({"gif", "jpeg", "png"}),
        video_formats=_MP4,
        reasoning="default_on",
        include_reasoning_param=True,
        reasoning_style="reasoning",
    ),
}
GENERIC_RULES = ModelRules()

MAX_VIDEO_FRAMES = 128  # "The model supports a maximum of 128 frames per video"
DEFAULT_SAMPLING_FPS = 2.0  # "The default sampling rate is 2 FPS"
TOKENS_PER_IMAGE = 256
TOKENS_PER_FRAME = 64
ECHO_CHARS = 200
DEFAULT_CHUNK_SIZE = 7
RECORDED_REQUESTS = 50
MAX_CHOICES = 16
MAX_TOP_LOGPROBS = 20  # vLLM's default max_logprobs
TOKEN_CHARS = 4  # the emulator's token (usage, max_tokens, logprobs)

_ROLES = ("system", "developer", "user", "assistant", "tool")
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_SECRET_HEADERS = {"authorization", "api-key", "x-api-key"}
_IMG_TAG = re.compile(r"""<img\s+src\s*=\s*(?:"([^"]*)"|'([^']*)')\s*/?>""", re.IGNORECASE)
_TOOL_RESULT = re.compile(r"<tool_result([^>]*)>(.*?)</tool_result>", re.DOTALL)
_ATTRIBUTE = re.compile(r'(\w+)="([^"]*)"')
_STATUS_FAULTS = {
    "400": (400, "BadRequestError", "bad request"),
    "401": (401, "AuthenticationError", "not authenticated"),
    "403": (403, "PermissionDeniedError", "permission denied"),
    "404": (404, "NotFoundError", "not found"),
    "409": (409, "ConflictError", "conflict"),
    "422": (422, "UnprocessableEntityError", "unprocessable entity"),
    "429": (429, "RateLimitError", "rate limited"),
    "503": (503, "ServiceUnavailableError", "service unavailable"),
    "500": (500, "InternalServerError", "internal server error"),
    # A 401 whose message quotes the credential it refused, as some gateways do.
    "echo_key": (401, "AuthenticationError", "invalid credential"),
    # A proxy's own error page in front of the server: HTML, not JSON.
    "html_502": (502, "BadGateway", "a proxy's HTML error page"),
}
_CONTENT_FAULTS = (
    "break_stream",
    "malformed_json",
    "no_choices",
    "bad_tool_args",
    # Two tool calls sharing one id; a tool call whose function has no name.
    "duplicate_tool_ids",
    "nameless_tool_call",
    # A whole reply whose choice lacks its message, or its finish_reason (streamed: the
    # last chunk's finish_reason stays null).
    "no_message",
    "no_finish_reason",
    # A stream that fails mid-way with vLLM's ``data: {"error": {...}}``; a whole reply
    # that is a 200 carrying only that error object (as some proxies send).
    "error_event",
    # A whole reply whose body never ends: the JSON opens, then a space every
    # _TRICKLE_SECONDS until the client hangs up (each read returns, so only a
    # deadline for the whole body stops it).
    "trickle",
)
# slow: wait before answering; stall: go quiet mid-reply (after a few chunks, or half
# the body), as a server that hangs while generating does. ``inf`` waits until the
# client hangs up, so a test of a client timeout does not race a finite wait.
_TIMED_FAULTS = ("slow", "stall")
# redirect: a 307 back to the same URL (a loop, unless X-Emulator-Fault-Times ends it),
# as a gateway moving an endpoint does; the client re-sends the POST with its headers.
_REDIRECT_FAULTS = ("redirect",)
_TRICKLE_SECONDS = 0.02
_TRICKLE_LIMIT_SECONDS = 600.0
BROKEN_TOOL_ARGUMENTS = '{"city": "Par'
_CHUNKS_BEFORE_BREAK = 3


class _BadRequest(Exception):
    """A request NIM would refuse with 400; the message says what to change."""


class _StreamAborted(Exception):
    """Raised mid-response so uvicorn drops the connection (fault ``break_stream``)."""


# --- what was received ---------------------------------------------------------------


@dataclass(frozen=True)
class _Part:
    kind: Literal["text", "image", "video"]
    text: str = ""
    """The text itself, or how the image / video was described."""
    frames: int = 0
    """Video frames sampled."""


@dataclass
class _Turn:
    role: str
    parts: list[_Part]
    tool_call_id: str | None = None

    @property
    def text(self) -> str:
        return "\n".join(p.text for p in self.parts if p.kind == "text")

    def count(self, kind: str) -> int:
        return sum(1 for p in self.parts if p.kind == kind)


@dataclass(frozen=True)
class _Sampling:
    fps: float | None = None
    num_frames: int | None = None


@dataclass
class _Chat:
    model: str
    rules: ModelRules
    body: dict[str, Any]
    turns: list[_Turn]
    stream: bool
    include_usage: bool
    tools: list[dict[str, Any]]
    tool_choice: Any
    max_tokens: int | None
    max_num_tiles: int | None
    chunk_size: int = DEFAULT_CHUNK_SIZE
    n: int = 1
    """Choices to answer with (``n``)."""
    logprobs: bool = False
    top_logprobs: int = 0
    reasoning: bool = False
    style: ReasoningStyle = "think_tags"
    hide_reasoning: bool = False
    assets: Mapping[str, bytes] | None = None
    """Hosted mode: the bytes of the NVCF assets the request refers to."""

    @property
    def last_user(self) -> _Turn | None:
        return next((t for t in reversed(self.turns) if t.role == "user"), None)

    @property
    def system_text(self) -> str:
        return "\n".join(t.text for t in self.turns if t.role in ("system", "developer"))


@dataclass(frozen=True)
class _ToolCall:
    id: str
    name: str
    arguments: str


@dataclass
class _Reply:
    content: str | None
    reasoning: str | None = None
    """Trace sent in a message field (``reasoning_field``), if any."""
    reasoning_field: str | None = None
    reasoning_chars: int = 0
    """All reasoning produced, shown or not (for usage)."""
    tool_calls: list[_ToolCall] = field(default_factory=list)
    finish_reason: str = "stop"


@dataclass(frozen=True)
class _Fault:
    name: str
    seconds: float = 0.0


# --- app -----------------------------------------------------------------------------


def create_nim_app(
    *, recorded_requests: int = RECORDED_REQUESTS, hosted: bool = False
) -> Starlette:
    """The emulated NIM as a Starlette app; serve it with ``RunningServer``. ``hosted``:
    it plays NVIDIA's hosted catalog (``nemovlm.emulator.hosted``)."""
    app = Starlette(
        routes=[
            *(hosted_routes() if hosted else []),
            Route("/v1/models", _list_models, methods=["GET"]),
            Route("/v1/health/ready", _health_ready, methods=["GET"]),
            Route("/v1/health/live", _health_live, methods=["GET"]),
            Route("/v1/chat/completions", _chat_completions, methods=["POST"]),
            Route("/emulator/requests", _get_requests, methods=["GET"]),
            Route("/emulator/requests", _clear_requests, methods=["DELETE"]),
        ],
        middleware=[Middleware(_EmulatorHeaders)],
    )
    app.state.requests = deque(maxlen=recorded_requests)
    app.state.completion_ids = itertools.count(1)
    app.state.fault_counts = {}
    app.state.hosted = HostedState() if hosted else None
    _quiet_aborted_streams()
    return app


class _EmulatorHeaders:
    """Adds ``x-request-id`` (echoed when the client sent one) to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._ids = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = dict(scope["headers"]).get(b"x-request-id")
        request_id = sent or f"emu-req-{next(self._ids)}".encode()

        async def send_with_id(message: ASGIMessage) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0] != b"x-request-id"]
                headers += [(b"x-request-id", request_id), (b"x-nemovlm-emulator", b"nim")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)


class _DropAbortedStreams(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        while exc is not None:
            if isinstance(exc, _StreamAborted):
                return False
            exc = exc.__cause__ or exc.__context__
        return True


def _quiet_aborted_streams() -> None:
    # A deliberate break_stream is not a server error worth a traceback in test output.
    uvicorn_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropAbortedStreams) for f in uvicorn_log.filters):
        uvicorn_log.addFilter(_DropAbortedStreams())


async def _list_models(request: Request) -> Response:
    _record(request, None)
    data = [
        {
            "id": model,
            "object": "model",
            "created": 0,
            "owned_by": "nemovlm-emulator",
            "root": model,
            "max_model_len": 128_000,
        }
        for model in RULES
    ]
    return JSONResponse({"object": "list", "data": data})


async def _health_ready(request: Request) -> Response:
    return JSONResponse({"object": "health.response", "message": "Service is ready."})


async def _health_live(request: Request) -> Response:
    return JSONResponse({"object": "health.response", "message": "Service is live."})


async def _get_requests(request: Request) -> Response:
    return JSONResponse(list(request.app.state.requests))


async def _clear_requests(request: Request) -> Response:
    request.app.state.requests.clear()
    return JSONResponse({"cleared": True})


def _error(status: int, message: str, kind: str = "BadRequestError") -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": kind, "code": status}}, status_code=status
    )


async def _chat_completions(request: Request) -> Response:
    raw = await request.body()
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = None
    _record(request, body if body is not None else raw.decode("utf-8", "replace"))
    try:
        fault = _process_fault(request)
        if fault is not None and fault.name == "slow":
            await _wait_unless_disconnected(request, fault.seconds)
        elif fault is not None and fault.name in _STATUS_FAULTS:
            return _map_status_fault(request, fault.name)
        elif fault is not None and fault.name in _REDIRECT_FAULTS:
            return Response(status_code=307, headers={"location": str(request.url)})
        if not isinstance(body, dict):
            raise _BadRequest("The request body must be a JSON object.")
        assets = None
        if request.app.state.hosted is not None:
            assets = check_chat(body, request)
            await hold_if_armed(request)
        chat = await _process_chat(body, request, assets)
        content_fault = fault.name if fault is not None and fault.name in _CONTENT_FAULTS else None
        stall = fault.seconds if fault is not None and fault.name == "stall" else 0.0
        ident = f"chatcmpl-emu-{next(request.app.state.completion_ids)}"
        replies = [_compose_reply(chat, ident, content_fault, i) for i in range(chat.n)]
        return _map_response(chat, replies, ident, content_fault, stall)
    except _BadRequest as exc:
        return _error(400, str(exc))
    except HostedError as exc:
        kind = {413: "PayloadTooLargeError", 422: "UnprocessableEntityError"}.get(exc.status)
        return _error(exc.status, str(exc), kind or "BadRequestError")
    except Exception:  # the emulator's own bug: say so in the client's error
        logger.exception("nemovlm NIM emulator failed")
        return _error(500, "The NIM emulator failed; see its log.", "InternalServerError")


def _record(request: Request, body: Any) -> None:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _SECRET_HEADERS}
    # Whether a key came, never the key itself.
    bearer = request.headers.get("authorization", "").lower().startswith("bearer ")
    request.app.state.requests.append(
        {
            "method": request.method,
            "path": request.url.path,
            "headers": headers,
            "body": body,
            "bearer": bearer,
        }
    )


# --- faults --------------------------------------------------------------------------


def _process_fault(request: Request) -> _Fault | None:
    name = request.headers.get("x-emulator-fault")
    if not name:
        return None
    name = name.strip()
    fault: _Fault
    timed, _, seconds = name.partition(":")
    if timed in _TIMED_FAULTS:
        try:
            fault = _Fault(timed, float(seconds))
        except ValueError:
            raise _BadRequest(
                f"X-Emulator-Fault {name!r}: write {timed}:<seconds>, e.g. {timed}:0.5."
            ) from None
    elif name in _STATUS_FAULTS or name in _CONTENT_FAULTS or name in _REDIRECT_FAULTS:
        fault = _Fault(name)
    else:
        known = ", ".join(
            [
                *_STATUS_FAULTS,
                *_CONTENT_FAULTS,
                *_REDIRECT_FAULTS,
                *(f"{t}:<seconds>" for t in _TIMED_FAULTS),
            ]
        )
        raise _BadRequest(f"Unknown X-Emulator-Fault {name!r}; use one of: {known}.")
    times = request.headers.get("x-emulator-fault-times")
    if times is None:
        return fault
    if not times.strip().isdigit():
        raise _BadRequest(f"X-Emulator-Fault-Times must be a whole number, not {times!r}.")
    # One counter per key, so "fail N times then succeed" survives client retries.
    key = request.headers.get("x-emulator-fault-key", "")
    counts: dict[str, int] = request.app.state.fault_counts
    counts[key] = counts.get(key, 0) + 1
    return fault if counts[key] <= int(times) else None


def _map_status_fault(request: Request, name: str) -> Response:
    status, kind, what = _STATUS_FAULTS[name]
    if name == "html_502":
        page = "<html><body><h1>502 Bad Gateway</h1><p>emulated proxy page</p></body></html>"
        return Response(page, status_code=status, media_type="text/html")
    message = f"Emulated fault {name} ({what}), from X-Emulator-Fault."
    if name == "echo_key":
        sent = request.headers.get("authorization", "(none)")
        message = f"Emulated fault echo_key: the credential {sent!r} was refused."
    response = _error(status, message, kind)
    if status in (429, 503):
        response.headers["retry-after"] = request.headers.get("x-emulator-retry-after", "0")
    verdict = request.headers.get("x-emulator-should-retry")
    if verdict is not None:  # a server's own say on retrying, which clients obey
        response.headers["x-should-retry"] = verdict
    return response


async def _wait_unless_disconnected(request: Request, seconds: float) -> None:
    """Sleep ``seconds`` (``inf``: forever), ending early when the client hangs up."""

    async def disconnected() -> None:
        # The body is read, so the next message is the disconnect.
        while (await request.receive())["type"] != "http.disconnect":
            pass

    try:
        await asyncio.wait_for(disconnected(), None if math.isinf(seconds) else seconds)
    except asyncio.TimeoutError:
        pass


# --- request in ----------------------------------------------------------------------


async def _process_chat(
    body: dict[str, Any], request: Request, assets: Mapping[str, bytes] | None = None
) -> _Chat:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest(f"'model' is required: the model id, one of {sorted(RULES)}.")
    rules = RULES.get(model, GENERIC_RULES)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("'messages' must be a non-empty list of chat messages.")
    stream = body.get("stream") is True
    stream_options = body.get("stream_options")
    if stream_options and not stream:
        raise _BadRequest("Stream options can only be defined when `stream=True`.")
    include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
    tools, tool_choice = _process_tools(body, rules, model)
    sampling = _process_sampling(body.get("media_io_kwargs"))
    chat = _Chat(
        model=model,
        rules=rules,
        body=body,
        turns=[],
        stream=stream,
        include_usage=include_usage,
        tools=tools,
        tool_choice=tool_choice,
        max_tokens=_process_max_tokens(body),
        max_num_tiles=_process_tiles(body.get("mm_processor_kwargs")),
        chunk_size=_process_chunk_size(request),
        n=_process_n(body.get("n")),
        assets=assets,
    )
    chat.logprobs, chat.top_logprobs = _process_logprobs(body)
    for index, message in enumerate(messages):
        chat.turns.append(await _process_message(message, f"messages[{index}]", chat, sampling))
    _process_reasoning(chat, request)
    return chat


def _process_tools(
    body: dict[str, Any], rules: ModelRules, model: str
) -> tuple[list[dict[str, Any]], Any]:
    tools = body.get("tools") or []
    choice = body.get("tool_choice")
    if not isinstance(tools, list):
        raise _BadRequest("'tools' must be a list of {'type': 'function', 'function': {...}}.")
    if tools and not rules.native_tools:
        raise _BadRequest(
            f"tool calling is not enabled for this model ({model}); describe the tools in "
            "the prompt instead, or use a model with native tool calling."
        )
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _BadRequest(
                f"tools[{index}] must be {{'type': 'function', 'function': {{'name': ...}}}}."
            )
        if function.get("strict") is not None and not isinstance(function["strict"], bool):
            raise _BadRequest(f"tools[{index}].function.strict must be true or false.")
    if choice is None or choice == "none":
        return tools, choice
    if not tools:
        raise _BadRequest("When using `tool_choice`, `tools` must be set.")
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if name not in _tool_names(tools):
            raise _BadRequest(
                f"tool_choice names the function {name!r}, which is not in `tools` "
                f"({', '.join(_tool_names(tools))})."
            )
    elif choice not in ("auto", "required"):
        raise _BadRequest(
            f"tool_choice {choice!r} is not understood: use 'none', 'auto', 'required' or "
            "{'type': 'function', 'function': {'name': ...}}."
        )
    return tools, choice


def _process_n(value: Any) -> int:
    if value is None:
        return 1
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_CHOICES:
        raise _BadRequest(
            f"n must be a whole number from 1 to {MAX_CHOICES} (emulator limit), not {value!r}."
        )
    return value


def _process_logprobs(body: dict[str, Any]) -> tuple[bool, int]:
    logprobs, top = body.get("logprobs"), body.get("top_logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise _BadRequest(f"logprobs must be true or false, not {logprobs!r}.")
    if top is None:
        return bool(logprobs), 0
    if not isinstance(top, int) or isinstance(top, bool) or top < 0:
        raise _BadRequest(f"top_logprobs must be a whole number >= 0, not {top!r}.")
    if top > MAX_TOP_LOGPROBS:
        raise _BadRequest(
            f"Requested sample logprobs of {top}, which is greater than max allowed: "
            f"{MAX_TOP_LOGPROBS}."
        )
    if top and not logprobs:
        raise _BadRequest("when using `top_logprobs`, `logprobs` must be set to true.")
    return bool(logprobs), top


def _tool_names(tools: list[dict[str, Any]]) -> list[str]:
    return [tool["function"]["name"] for tool in tools]


def _process_sampling(media_io_kwargs: Any) -> _Sampling:
    video = media_io_kwargs.get("video") if isinstance(media_io_kwargs, dict) else None
    if not isinstance(video, dict):
        return _Sampling()
    fps, num_frames = video.get("fps"), video.get("num_frames")
    if fps is not None and num_frames is not None:
        raise _BadRequest("media_io_kwargs.video: give either 'fps' or 'num_frames', not both.")
    if num_frames is not None:
        if not isinstance(num_frames, int) or isinstance(num_frames, bool) or num_frames < 1:
            raise _BadRequest(f"media_io_kwargs.video.num_frames must be >= 1, not {num_frames!r}.")
        if num_frames > MAX_VIDEO_FRAMES:
            raise _BadRequest(
                f"media_io_kwargs.video.num_frames {num_frames} is above the maximum of "
                f"{MAX_VIDEO_FRAMES} frames per video."
            )
        return _Sampling(num_frames=num_frames)
    if fps is not None:
        if not isinstance(fps, (int, float)) or isinstance(fps, bool) or fps <= 0:
            raise _BadRequest(f"media_io_kwargs.video.fps must be a number > 0, not {fps!r}.")
        return _Sampling(fps=float(fps))
    return _Sampling()


def _process_chunk_size(request: Request) -> int:
    value = request.headers.get("x-emulator-chunk-size")
    if value is None:
        return DEFAULT_CHUNK_SIZE
    if not value.strip().isdigit() or int(value) < 1:
        raise _BadRequest(f"X-Emulator-Chunk-Size must be a whole number >= 1, not {value!r}.")
    return int(value)


def _process_max_tokens(body: dict[str, Any]) -> int | None:
    value = body.get("max_completion_tokens", body.get("max_tokens"))
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _BadRequest(f"max_tokens must be a whole number >= 1, not {value!r}.")
    return value


def _process_tiles(mm_processor_kwargs: Any) -> int | None:
    if not isinstance(mm_processor_kwargs, dict) or "max_num_tiles" not in mm_processor_kwargs:
        return None
    tiles = mm_processor_kwargs["max_num_tiles"]
    if not isinstance(tiles, int) or isinstance(tiles, bool) or tiles < 1:
        raise _BadRequest(f"mm_processor_kwargs.max_num_tiles must be >= 1, not {tiles!r}.")
    return tiles


async def _process_message(message: Any, where: str, chat: _Chat, sampling: _Sampling) -> _Turn:
    if not isinstance(message, dict):
        raise _BadRequest(f"{where} must be an object with 'role' and 'content'.")
    role = message.get("role")
    if role not in _ROLES:
        raise _BadRequest(f"{where}.role {role!r} is not one of: {', '.join(_ROLES)}.")
    content = message.get("content")
    if content is None and role == "user":
        raise _BadRequest(f"{where}.content is required for a user message.")
    parts = await _process_content(content, f"{where}.content", role, chat, sampling)
    tool_call_id = message.get("tool_call_id")
    return _Turn(role, parts, tool_call_id if isinstance(tool_call_id, str) else None)


async def _process_content(
    content: Any, where: str, role: str, chat: _Chat, sampling: _Sampling
) -> list[_Part]:
    if content is None:
        return []
    if isinstance(content, str):
        return await _process_text(content, where, role, chat)
    if not isinstance(content, list):
        raise _BadRequest(f"{where} must be a string or a list of content parts.")
    parts: list[_Part] = []
    for index, item in enumerate(content):
        here = f"{where}[{index}]"
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "text":
            text = item.get("text")
            if not isinstance(text, str):
                raise _BadRequest(f"{here}: a text part needs a string 'text'.")
            parts += await _process_text(text, here, role, chat)
        elif kind in ("image_url", "video_url"):
            if role != "user":
                raise _BadRequest(f"{here}: {kind} parts belong in user messages, not {role}.")
            url = _part_url(item, kind, here)
            if kind == "image_url":
                parts.append(await _process_image(url, here, chat))
            else:
                parts.append(await _process_video(url, here, chat, sampling))
        else:
            raise _BadRequest(
                f"{here}: unknown content part type {kind!r}; use text, image_url or video_url."
            )
    return parts


def _part_url(item: dict[str, Any], kind: str, where: str) -> str:
    value = item.get(kind)
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url:
        raise _BadRequest(f"{where}: a {kind} part needs {{'{kind}': {{'url': '...'}}}}.")
    return url


async def _process_text(text: str, where: str, role: str, chat: _Chat) -> list[_Part]:
    if not (chat.rules.img_tags and role == "user" and _IMG_TAG.search(text)):
        return [_Part("text", text)]
    # The 8B model's text-only fallback: <img src="..." /> tags are images, in place.
    parts: list[_Part] = []
    position = 0
    for match in _IMG_TAG.finditer(text):
        before = text[position : match.start()].strip()
        if before:
            parts.append(_Part("text", before))
        url = match.group(1) if match.group(1) is not None else match.group(2)
        parts.append(await _process_image(url, f"{where} <img> tag", chat))
        position = match.end()
    rest = text[position:].strip()
    if rest:
        parts.append(_Part("text", rest))
    return parts


async def _load_media(url: str, where: str, chat: _Chat) -> bytes | None:
    """The bytes behind a media URL; ``None`` for a remote URL the emulator won't fetch."""
    stored = asset_bytes(url, chat.assets, where)
    if stored is not None:
        return stored
    if url.startswith("data:"):
        return _decode_data_url(url, where)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise _BadRequest(
            f"{where}: unsupported URL {url[:40]!r}; send an http(s) URL or a base64 data URL."
        )
    if parts.hostname not in _LOOPBACK:
        return None
    # Loopback only (tests serve their own files); self-signed test certificates are fine.
    try:
        async with httpx.AsyncClient(verify=False, timeout=10.0) as client:
            response = await client.get(url)
    except httpx.HTTPError as exc:
        raise _BadRequest(f"{where}: could not fetch {url}: {exc!r}.") from None
    if response.status_code != 200:
        raise _BadRequest(f"{where}: fetching {url} gave status {response.status_code}.")
    return response.content


def _decode_data_url(url: str, where: str) -> bytes:
    header, comma, payload = url[len("data:") :].partition(",")
    if not comma:
        raise _BadRequest(
            f"{where}: malformed data URL (no ',' after the header); "
            "write data:<mime type>;base64,<data>."
        )
    if not header.endswith(";base64"):
        return unquote_to_bytes(payload)
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise _BadRequest(f"{where}: malformed data URL: the data is not valid base64.") from None


async def _process_image(url: str, where: str, chat: _Chat) -> _Part:
    data = await _load_media(url, where, chat)
    if data is None:
        return _Part("image", "remote image (not fetched by the emulator)")
    source = " (NVCF asset)" if ";asset_id," in url[:80] else ""
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt, (width, height) = (image.format or "unknown").lower(), image.size
            image.verify()
    except Exception as exc:  # Pillow raises many types for bad bytes
        raise _BadRequest(
            f"{where}: the image bytes could not be decoded ({type(exc).__name__}: {exc}); "
            "send a valid image file."
        ) from None
    fmt = "jpeg" if fmt == "mpo" else fmt  # Pillow's name for multi-picture JPEGs
    accepted = chat.rules.image_formats
    if accepted is not None and fmt not in accepted:
        names = ", ".join(sorted(f.upper() for f in accepted))
        raise _BadRequest(
            f"{where}: image format {fmt.upper()} is not supported by {chat.model}; "
            f"supported: {names}. Convert the image first."
        )
    return _Part("image", f"{fmt} {width}x{height}{source}")


async def _process_video(url: str, where: str, chat: _Chat, sampling: _Sampling) -> _Part:
    accepted = chat.rules.video_formats
    if accepted is not None and not accepted:
        raise _BadRequest(f"{where}: video input is not supported by {chat.model}; send images.")
    data = await _load_media(url, where, chat)
    if data is None:
        return _Part("video", "remote video (not fetched by the emulator)")
    source = " (NVCF asset)" if ";asset_id," in url[:80] else ""
    fmt = sniff_format(data) or "unknown"
    if accepted is not None and fmt not in accepted:
        names = ", ".join(sorted(f.upper() for f in accepted))
        raise _BadRequest(
            f"{where}: video format {fmt.upper()} is not supported by {chat.model}; "
            f"supported: {names}."
        )
    try:
        info = read_video_info(data)
    except Exception as exc:  # whatever the parser trips on, the bytes are not a video
        raise _BadRequest(
            f"{where}: the video could not be read ({type(exc).__name__}: {exc}); "
            "send a valid MP4 file."
        ) from None
    frames, how = _sample_frames(info.duration_s, info.fps, info.frames, sampling, where)
    rate = f" {info.fps:g} fps" if info.fps else ""
    described = (
        f"{fmt} {info.duration_s:.1f}s {info.width}x{info.height}{rate}, "
        f"{frames} frames sampled ({how}){source}"
    )
    return _Part("video", described, frames)


def _sample_frames(
    duration_s: float, fps: float | None, own_frames: int | None, sampling: _Sampling, where: str
) -> tuple[int, str]:
    """Frames the model would see, and how they were chosen; unknown own values pass."""
    if sampling.num_frames is not None:
        if own_frames is not None and sampling.num_frames > own_frames:
            raise _BadRequest(
                f"{where}: media_io_kwargs.video.num_frames {sampling.num_frames} is above "
                f"the video's own frame count ({own_frames})."
            )
        return sampling.num_frames, f"num_frames {sampling.num_frames}"
    if sampling.fps is not None:
        if fps is not None and sampling.fps > fps + 1e-6:
            raise _BadRequest(
                f"{where}: media_io_kwargs.video.fps {sampling.fps:g} is above the video's "
                f"own frame rate ({fps:g} fps)."
            )
        rate, how = sampling.fps, f"fps {sampling.fps:g}"
    else:
        rate, how = DEFAULT_SAMPLING_FPS, f"default {DEFAULT_SAMPLING_FPS:g} fps"
    frames = min(max(1, math.floor(duration_s * rate + 1e-9)), MAX_VIDEO_FRAMES)
    return (min(frames, own_frames) if own_frames else frames), how


def _process_reasoning(chat: _Chat, request: Request) -> None:
    rules, body = chat.rules, chat.body
    style = request.headers.get("x-emulator-reasoning-style")
    if style is not None and style not in _STYLES:
        raise _BadRequest(f"X-Emulator-Reasoning-Style {style!r}: use one of {', '.join(_STYLES)}.")
    chat.style = style if style is not None else rules.reasoning_style
    if rules.include_reasoning_param and body.get("include_reasoning") is False:
        if chat.stream:
            raise _BadRequest(
                "include_reasoning: false is not supported for streaming responses; "
                "drop it or set stream to false."
            )
        chat.hide_reasoning = True
    if rules.reasoning == "system_think":
        chat.reasoning = "/think" in chat.system_text
        has_video = any(t.count("video") for t in chat.turns)
        if chat.reasoning and has_video and not rules.reasoning_with_video:
            raise _BadRequest(
                "reasoning is not supported with video input: remove /think from the system "
                "prompt, or send images instead of the video."
            )
    elif rules.reasoning == "default_on":
        template = body.get("chat_template_kwargs")
        chat.reasoning = not (isinstance(template, dict) and template.get("thinking") is False)
    elif rules.reasoning is not None:
        assert_never(rules.reasoning)


# --- reply out -----------------------------------------------------------------------


def _compose_reply(chat: _Chat, ident: str, fault: str | None, index: int = 0) -> _Reply:
    """What the model says: one answer (choice ``index`` of ``n``), picked by what the
    request asked for."""
    last = chat.turns[-1]
    hint = _hint(chat.last_user)
    choice = chat.tool_choice
    if fault == "bad_tool_args":
        name = _chosen_tool(chat.tools, choice)["function"]["name"] if chat.tools else "get_weather"
        call = _ToolCall(f"call_{ident}_{index}", name, BROKEN_TOOL_ARGUMENTS)
        return _Reply(None, tool_calls=[call], finish_reason="tool_calls")
    if fault in ("duplicate_tool_ids", "nameless_tool_call"):
        name = _chosen_tool(chat.tools, choice)["function"]["name"] if chat.tools else "get_weather"
        faulty_calls = [
            _ToolCall(f"call_{ident}_0", name, '{"city": "Paris"}'),
            _ToolCall(f"call_{ident}_0", name, '{"city": "Rome"}'),
        ]
        if fault == "nameless_tool_call":
            faulty_calls = [_ToolCall(f"call_{ident}_0", "", '{"city": "Paris"}')]
        return _Reply(None, tool_calls=faulty_calls, finish_reason="tool_calls")
    # A user turn right after tool results carries what the tools returned (images):
    # the model reads it and answers, as a real one would, instead of calling again.
    after_tools = len(chat.turns) > 1 and chat.turns[-2].role == "tool"
    if chat.tools and choice != "none" and last.role == "user" and not after_tools:
        tool = _chosen_tool(chat.tools, choice)["function"]
        arguments = _synthesize(tool.get("parameters") or {}, hint)
        arguments_json = json.dumps(arguments, ensure_ascii=False)
        call = _ToolCall(f"call_{ident}_{index}", tool["name"], arguments_json)
        reply = _Reply(None, tool_calls=[call], finish_reason="tool_calls")
        return _with_reasoning(reply, chat, tool_call=True)
    if last.role == "tool":
        results = [t.text for t in _trailing_tool_turns(chat.turns)]
        return _finish(_tool_result_answer(results), chat)
    prompt_tools = _prompt_tools(chat.system_text)
    user_text = last.text if last.role == "user" else ""
    if prompt_tools is not None and "<tool_result" not in user_text and last.role == "user":
        tools, prompt_choice = prompt_tools
        if prompt_choice != "none":
            tool = _chosen_prompt_tool(tools, prompt_choice)
            params = tool.get("parameters")
            arguments = _synthesize(params or {}, hint)
            calls = [{"name": tool["name"], "arguments": arguments}]
            content = json.dumps({"tool_calls": calls}, ensure_ascii=False)
            return _finish(content, chat)
    if "<tool_result" in user_text:
        results = [m.group(2).strip() for m in _TOOL_RESULT.finditer(user_text)]
        return _finish(_tool_result_answer(results or [user_text]), chat)
    structured = _structured_output(chat, hint, user_text)
    if structured is not None:
        return _finish(json.dumps(structured, ensure_ascii=False), chat)
    return _finish(_describe(chat, index), chat)


def _finish(answer: str, chat: _Chat) -> _Reply:
    reply = _with_reasoning(_Reply(answer), chat, tool_call=False)
    return _cut_to_max_tokens(reply, chat.max_tokens)


def _with_reasoning(reply: _Reply, chat: _Chat, *, tool_call: bool) -> _Reply:
    if not chat.reasoning:
        return reply
    trace = _reasoning_text(chat)
    if chat.style in ("reasoning", "reasoning_content"):
        reply.reasoning_chars = len(trace)
        if not chat.hide_reasoning:
            reply.reasoning, reply.reasoning_field = trace, chat.style
        return reply
    if tool_call:
        # A tool call keeps content null, so a tag-style trace has nowhere to go.
        return reply
    reply.reasoning_chars = len(trace)
    if chat.hide_reasoning:
        return reply
    opening = "<think>\n" if chat.style == "think_tags" else ""
    reply.content = f"{opening}{trace}\n</think>\n\n{reply.content}"
    return reply


def _cut_to_max_tokens(reply: _Reply, max_tokens: int | None) -> _Reply:
    if max_tokens is None:
        return reply
    budget = max_tokens * 4  # the emulator's token is 4 characters
    shown = len(reply.reasoning or "") + len(reply.content or "")
    if shown <= budget:
        return reply
    if reply.reasoning is not None:
        reply.reasoning = reply.reasoning[:budget]
        budget -= len(reply.reasoning)
    reply.content = (reply.content or "")[:budget]
    reply.finish_reason = "length"
    return reply


def _trailing_tool_turns(turns: list[_Turn]) -> list[_Turn]:
    trailing: list[_Turn] = []
    for turn in reversed(turns):
        if turn.role != "tool":
            break
        trailing.insert(0, turn)
    return trailing


def _tool_result_answer(results: list[str]) -> str:
    quoted = "; ".join(_clip(r.strip(), ECHO_CHARS) for r in results)
    return f"[nemovlm emulator] Tool result received: {quoted}"


def _chosen_tool(tools: list[dict[str, Any]], choice: Any) -> dict[str, Any]:
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        return next(t for t in tools if t["function"]["name"] == name)
    return tools[0]


def _prompt_tools(system_text: str) -> tuple[list[dict[str, Any]], str] | None:
    """The core's prompt tool protocol: ``<tools>[...]</tools>`` and ``<tool_choice>``."""
    found = re.search(r"<tools>(.*?)</tools>", system_text, re.DOTALL)
    if found is None:
        return None
    try:
        tools = json.loads(found.group(1))
    except ValueError:
        tools = None
    if not isinstance(tools, list) or not all(
        isinstance(t, dict) and isinstance(t.get("name"), str) for t in tools
    ):
        raise _BadRequest(
            "<tools> in the system prompt must hold a JSON list of "
            '{"name", "description", "parameters"} objects (emulator check).'
        )
    choice_match = re.search(r"<tool_choice>(.*?)</tool_choice>", system_text, re.DOTALL)
    choice = choice_match.group(1).strip() if choice_match else "auto"
    if choice not in ("auto", "required", "none") and choice not in [t["name"] for t in tools]:
        raise _BadRequest(
            f"<tool_choice>{choice}</tool_choice> names no tool listed in <tools> (emulator check)."
        )
    return tools, choice


def _chosen_prompt_tool(tools: list[dict[str, Any]], choice: str) -> dict[str, Any]:
    if not tools:
        raise _BadRequest("<tools> in the system prompt is empty (emulator check).")
    return next((t for t in tools if t["name"] == choice), tools[0])


def _json_object(hint: Hint, user_text: str) -> dict[str, Any]:
    """JSON mode without a schema: the keys the user named in quotes (``'setup'`` and
    ``'punchline'``), as a model that follows the instruction would, each valued with
    a word of the question; else an object that says it is the emulator's."""
    keys = dict.fromkeys(re.findall(r"""['"]([A-Za-z_][A-Za-z0-9_]{0,40})['"]""", user_text))
    if keys:
        return {key: f"[nemovlm emulator] {hint.text}" for key in keys}
    return {"emulator": "nemovlm", "answer": hint.text}


def _structured_output(chat: _Chat, hint: Hint, user_text: str = "") -> Any | None:
    """A JSON value when ``response_format`` or a ``<json_schema>`` prompt asks for one."""
    response_format = chat.body.get("response_format")
    if chat.rules.json_schema and isinstance(response_format, dict):
        kind = response_format.get("type")
        if kind == "json_schema":
            spec = response_format.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, dict) else None
            if not isinstance(schema, dict):
                raise _BadRequest(
                    "response_format json_schema needs {'json_schema': {'name': ..., "
                    "'schema': {...}}}."
                )
            return _synthesize(schema, hint)
        if kind == "json_object":
            return _json_object(hint, user_text)
        if kind not in ("text", None):
            raise _BadRequest(
                f"response_format type {kind!r}: use 'text', 'json_object' or 'json_schema'."
            )
    found = re.search(r"<json_schema>(.*?)</json_schema>", chat.system_text, re.DOTALL)
    if found is None:
        # The core's JSON mode without a schema, for models without response_format.
        if "<response_format>json_object</response_format>" in chat.system_text:
            return _json_object(hint, user_text)
        return None
    try:
        schema = json.loads(found.group(1))
    except ValueError:
        raise _BadRequest(
            "<json_schema> in the system prompt is not valid JSON (emulator check)."
        ) from None
    return _synthesize(schema, hint)


def _hint(turn: _Turn | None) -> Hint:
    return hint_from_text(turn.text if turn else "")


def _synthesize(schema: Any, hint: Hint) -> Any:
    try:
        return synthesize(schema, hint)
    except SchemaError as exc:
        raise _BadRequest(str(exc)) from exc


def _reasoning_text(chat: _Chat) -> str:
    last = chat.last_user
    asked = _clip(last.text, 80) if last else ""
    images = _plural(last.count("image") if last else 0, "image")
    videos = _plural(last.count("video") if last else 0, "video")
    return (
        f'Reasoning (emulated): the user asked "{asked}"; I see {images} and {videos}. '
        "I will report what I received."
    )


def _describe(chat: _Chat, choice: int = 0) -> str:
    """The answer: what the emulator received, for the last user message."""
    last = chat.last_user
    if last is None:
        return f"[nemovlm emulator] {chat.model} received no user message."
    kinds = ", ".join(p.kind for p in last.parts) or "none"
    lines = [
        f"[nemovlm emulator] {chat.model} received parts: {kinds}",
        "messages: " + ", ".join(t.role for t in chat.turns),
    ]
    images = [p for p in last.parts if p.kind == "image"]
    videos = [p for p in last.parts if p.kind == "video"]
    lines += [f"image {i}: {p.text}" for i, p in enumerate(images, 1)]
    lines += [f"video {i}: {p.text}" for i, p in enumerate(videos, 1)]
    if chat.max_num_tiles is not None:
        lines.append(f"max_num_tiles: {chat.max_num_tiles}")
    lines.append(f"images in conversation: {sum(t.count('image') for t in chat.turns)}")
    lines.append(f"text: {_clip(last.text, ECHO_CHARS) or '(none)'}")
    if chat.n > 1:
        lines.append(f"choice: {choice + 1} of {chat.n}")
    return "\n".join(lines)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _usage(chat: _Chat, replies: list[_Reply]) -> dict[str, Any]:
    text_chars = sum(len(p.text) for t in chat.turns for p in t.parts if p.kind == "text")
    images = sum(t.count("image") for t in chat.turns)
    frames = sum(p.frames for t in chat.turns for p in t.parts if p.kind == "video")
    prompt = math.ceil(text_chars / 4) + TOKENS_PER_IMAGE * images + TOKENS_PER_FRAME * frames
    completion = reasoning = 0
    for reply in replies:  # every choice's tokens count, as vLLM counts them
        shown_reasoning = len(reply.reasoning or "")
        hidden_reasoning = reply.reasoning_chars if reply.reasoning is None else 0
        calls = sum(len(c.name) + len(c.arguments) for c in reply.tool_calls)
        chars = len(reply.content or "") + shown_reasoning + hidden_reasoning + calls
        completion += math.ceil(chars / 4)
        reasoning += math.ceil(reply.reasoning_chars / 4)
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": None,
    }
    if reasoning:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return usage


def _map_response(
    chat: _Chat, replies: list[_Reply], ident: str, fault: str | None, stall: float = 0.0
) -> Response:
    created = int(time.time())
    usage = _usage(chat, replies)
    if chat.stream:
        chunks = _map_chunks(chat, replies, ident, created, usage, fault)
        return StreamingResponse(
            _sse(chunks, fault, stall),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache"},
        )
    completion = _map_completion(chat, replies, ident, created, usage)
    if fault == "no_choices":
        completion["choices"] = []
    if fault == "no_message":
        del completion["choices"][0]["message"]
    if fault == "no_finish_reason":
        completion["choices"][0]["finish_reason"] = None
    if fault == "error_event":
        completion = {"error": _stream_error()}
    encoded = json.dumps(completion)
    if fault == "trickle":
        return StreamingResponse(_trickled_body(encoded), media_type="application/json")
    if fault == "malformed_json":
        return Response(encoded[: len(encoded) // 2], media_type="application/json")
    if fault == "break_stream":
        return StreamingResponse(_broken_body(encoded), media_type="application/json")
    if stall:
        return StreamingResponse(_stalled_body(encoded, stall), media_type="application/json")
    return Response(encoded, media_type="application/json")


def _map_message(chat: _Chat, reply: _Reply) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant"}
    if chat.rules.null_fields:
        message["reasoning_content"] = None
    if reply.reasoning_field is not None:
        message[reply.reasoning_field] = reply.reasoning
    message["content"] = reply.content
    if reply.tool_calls:
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name or None, "arguments": call.arguments},
            }
            for call in reply.tool_calls
        ]
    elif chat.rules.null_fields:
        message["tool_calls"] = []
    return message


def _map_completion(
    chat: _Chat, replies: list[_Reply], ident: str, created: int, usage: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": ident,
        "object": "chat.completion",
        "created": created,
        "model": chat.model,
        "system_fingerprint": "nemovlm-emulator",
        "choices": [
            {
                "index": index,
                "message": _map_message(chat, reply),
                "logprobs": _map_logprobs(chat, reply.content),
                "finish_reason": reply.finish_reason,
                "stop_reason": None,
            }
            for index, reply in enumerate(replies)
        ],
        "usage": usage,
        "prompt_logprobs": None,
    }


def _map_chunks(
    chat: _Chat,
    replies: list[_Reply],
    ident: str,
    created: int,
    usage: dict[str, Any],
    fault: str | None,
) -> list[dict[str, Any]]:
    """Each choice's chunks, interleaved as vLLM sends them, then the usage chunk."""
    per_choice = [
        _map_choice_chunks(chat, r, ident, created, i, fault) for i, r in enumerate(replies)
    ]
    if fault == "no_choices":
        return [{**per_choice[0][0], "choices": []}]
    chunks = [c for row in itertools.zip_longest(*per_choice) for c in row if c is not None]
    if fault == "error_event":
        chunks.insert(_CHUNKS_BEFORE_BREAK, {"error": _stream_error()})
    if chat.include_usage:
        chunks.append({**chunks[0], "choices": [], "usage": usage})
    return chunks


def _map_choice_chunks(
    chat: _Chat, reply: _Reply, ident: str, created: int, choice: int, fault: str | None
) -> list[dict[str, Any]]:
    def chunk(
        delta: dict[str, Any], finish: str | None = None, logprobs: Any = None
    ) -> dict[str, Any]:
        return {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": chat.model,
            "system_fingerprint": "nemovlm-emulator",
            "choices": [
                {"index": choice, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            ],
        }

    size = chat.chunk_size
    chunks = [chunk({"role": "assistant", "content": ""})]
    if reply.reasoning is not None and reply.reasoning_field is not None:
        field_name = reply.reasoning_field
        chunks += [chunk({field_name: piece}) for piece in _pieces(reply.reasoning, size)]
    if reply.content:
        if chat.logprobs:
            size = -(-size // TOKEN_CHARS) * TOKEN_CHARS  # whole tokens per chunk
        chunks += [
            chunk({"content": piece}, logprobs=_map_logprobs(chat, piece))
            for piece in _pieces(reply.content, size)
        ]
    for index, call in enumerate(reply.tool_calls):
        head = {
            "index": index,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name or None, "arguments": ""},
        }
        chunks.append(chunk({"tool_calls": [head]}))
        chunks += [
            chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
            for piece in _pieces(call.arguments, size)
        ]
    chunks.append(chunk({}, None if fault == "no_finish_reason" else reply.finish_reason))
    return chunks


def _stream_error() -> dict[str, Any]:
    # vLLM's shape for a failure after the stream began (an ErrorResponse's fields).
    return {
        "message": "Emulated fault error_event: the engine failed mid-generation.",
        "type": "InternalServerError",
        "param": None,
        "code": 500,
    }


def _map_logprobs(chat: _Chat, text: str | None) -> dict[str, Any] | None:
    """OpenAI's per-token logprobs for ``text``, in the emulator's 4-character tokens.

    The values are made up but follow from the token (a token with more distinct
    characters is less likely); the alternatives in ``top_logprobs`` are labelled as
    the emulator's own."""
    if not chat.logprobs:
        return None
    content = []
    for token in _pieces(text or "", TOKEN_CHARS):
        logprob = -round(len(set(token)) / 8, 4)
        top = [_token_logprob(token, logprob)] if chat.top_logprobs else []
        top += [
            _token_logprob(f"<emulator alt {k}>", logprob - k) for k in range(1, chat.top_logprobs)
        ]
        content.append({**_token_logprob(token, logprob), "top_logprobs": top})
    return {"content": content}


def _token_logprob(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


async def _sse(
    chunks: list[dict[str, Any]], fault: str | None, stall: float = 0.0
) -> AsyncIterator[str]:
    for count, item in enumerate(chunks):
        if fault == "break_stream" and count == _CHUNKS_BEFORE_BREAK:
            raise _StreamAborted("X-Emulator-Fault: break_stream")
        if stall and count == _CHUNKS_BEFORE_BREAK:
            await asyncio.sleep(stall)
        encoded = json.dumps(item)
        if fault == "malformed_json":
            encoded = encoded[: len(encoded) // 2]
        yield f"data: {encoded}\n\n"
        await asyncio.sleep(0)  # let each chunk leave on its own
    if fault == "break_stream":
        raise _StreamAborted("X-Emulator-Fault: break_stream")
    yield "data: [DONE]\n\n"


async def _trickled_body(encoded: str) -> AsyncIterator[str]:
    yield encoded[:1]
    for _ in range(int(_TRICKLE_LIMIT_SECONDS / _TRICKLE_SECONDS)):
        await asyncio.sleep(_TRICKLE_SECONDS)
        yield " "  # JSON allows whitespace between tokens: still a valid reply so far
    yield encoded[1:]


async def _stalled_body(encoded: str, seconds: float) -> AsyncIterator[str]:
    yield encoded[: len(encoded) // 2]
    await asyncio.sleep(seconds)
    yield encoded[len(encoded) // 2 :]


async def _broken_body(encoded: str) -> AsyncIterator[str]:
    yield encoded[: len(encoded) // 2]
    await asyncio.sleep(0)
    raise _StreamAborted("X-Emulator-Fault: break_stream")
