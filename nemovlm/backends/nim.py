"""NIM backend: the neutral conversation over OpenAI-compatible ``/v1/chat/completions``.

Input flow: ``NIMBackend.complete/stream`` -> ``pipeline.prepare`` (checks, tools,
reasoning, media) -> ``_map_request`` -> ``_map_messages`` -> ``_map_content`` ->
``openai`` SDK (``client.post``).

Output flow: the completion's JSON -> ``_process_completion`` (whole reply as one raw
``Delta``), or each chunk's JSON -> ``_process_chunk`` -> ``ReplyProcessor.feed``
(reasoning split, prompt tools) -> ``Delta``s -> ``assemble_reply`` for ``Reply``.
Errors from the SDK are converted once, in ``_converted_errors``.

The request goes through the SDK's ``post`` rather than ``chat.completions.create``,
and the reply comes back as plain JSON: the request is already the JSON body, and the
SDK's typed request transform and response models cost more CPU per call than all
of this package's own work (``bench/``, scenarios 1 and 5). Auth, retries, timeouts,
SSE parsing and error types are still the SDK's.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import SecretStr

from nemovlm.backends._loops import PerLoop, aclose, default_async_http_client, unreachable
from nemovlm.errors import (
    IncompleteResponseError,
    MissingCredentialsError,
    RateLimitError,
    RequestError,
    RequestTimeoutError,
)
from nemovlm.media import MediaPolicy, PreparedMedia
from nemovlm.messages import Delta, Reply, TextPart, ToolCallChunk, Turn, Usage
from nemovlm.options import RequestOptions
from nemovlm.pipeline import (
    PreparedConversation,
    PreparedTurn,
    ReplyProcessor,
    aprepare,
    assemble_reply,
    prepare,
)
from nemovlm.profiles import ModelProfile
from nemovlm.tools import _map_tool, _map_tool_choice

if TYPE_CHECKING:
    # Imported where a request is made: ``import openai`` takes longer than the rest
    # of the package's import, and making a model instance needs none of it.
    import openai

HOSTED_BASE_URL = "https://integrate.api.nvidia.com/v1"
_PATH = "/chat/completions"


def resolve_base_url(base_url: str | None) -> str:
    """The argument, else ``NVIDIA_BASE_URL``, else NVIDIA's hosted API catalog."""
    return (base_url or os.environ.get("NVIDIA_BASE_URL") or HOSTED_BASE_URL).rstrip("/")


def resolve_api_key(api_key: SecretStr | str | None, base_url: str) -> SecretStr | None:
    """The argument, else ``NVIDIA_API_KEY``; the hosted catalog needs one, a local NIM not."""
    if isinstance(api_key, str):
        api_key = SecretStr(api_key)
    if api_key is None and os.environ.get("NVIDIA_API_KEY"):
        api_key = SecretStr(os.environ["NVIDIA_API_KEY"])
    if api_key is None and base_url == HOSTED_BASE_URL:
        raise MissingCredentialsError(
            "NVIDIA's hosted API catalog needs a key: set NVIDIA_API_KEY or pass api_key=..., "
            "or point base_url / NVIDIA_BASE_URL at a local NIM."
        )
    return api_key


@dataclass
class NIMBackend:
    """One model on one NIM endpoint, with one connection pool per sync/async client.

    Example::

        backend = NIMBackend(get_profile("nvidia/nemotron-nano-12b-v2-vl"),
                             base_url="http://localhost:8000/v1")
        reply = backend.complete([Turn("user", [TextPart("Hello")])], RequestOptions())
    """

    profile: ModelProfile
    base_url: str
    api_key: SecretStr | None = None
    timeout: float | None = 60.0
    max_retries: int = 2
    default_headers: dict[str, str] | None = None
    # The HTTP client type follows the installed ``openai`` SDK (httpx, or httpx2 in 3.x).
    http_client: Any = None
    async_http_client: Any = None
    policy: MediaPolicy = field(default_factory=MediaPolicy)
    _client: openai.OpenAI | None = field(default=None, init=False, repr=False)
    _aclients: PerLoop[openai.AsyncOpenAI] = field(
        default_factory=lambda: PerLoop(close=aclose), init=False, repr=False
    )
    _aclient_own: openai.AsyncOpenAI | None = field(default=None, init=False, repr=False)

    @classmethod
    def connect(
        cls,
        profile: ModelProfile,
        *,
        base_url: str | None,
        api_key: SecretStr | str | None,
        **settings: Any,
    ) -> NIMBackend:
        """A backend whose URL and key follow the documented order (argument, then
        ``NVIDIA_BASE_URL`` / ``NVIDIA_API_KEY``, then the hosted catalog)."""
        url = resolve_base_url(base_url)
        return cls(profile, url, resolve_api_key(api_key, url), **settings)

    # --- clients ----------------------------------------------------------------

    def _client_kwargs(self) -> dict[str, Any]:
        key = self.api_key.get_secret_value() if self.api_key else "not-used"
        return {
            "base_url": self.base_url,
            "api_key": key,
            "timeout": self.timeout,
            "max_retries": self.max_retries,
            "default_headers": self.default_headers,
        }

    @property
    def client(self) -> openai.OpenAI:
        if self._client is None:
            import openai

            self._client = openai.OpenAI(**self._client_kwargs(), http_client=self.http_client)
        return self._client

    @property
    def async_client(self) -> openai.AsyncOpenAI:
        """The async client of the running event loop: pooled connections belong to the
        loop that opened them, so a model used from several loops (``asyncio.run`` twice,
        one loop per test) gets one client each instead of reusing dead connections."""
        import openai

        if self.async_http_client is not None:
            # The caller's own client is bound to whichever loop they made it for.
            if self._aclient_own is None:
                self._aclient_own = openai.AsyncOpenAI(
                    **self._client_kwargs(), http_client=self.async_http_client
                )
            return self._aclient_own
        # Not the SDK's own default (httpx): aiohttp, for CPU per request at many in
        # flight (``default_async_http_client``); closed with its loop (``PerLoop``).
        return self._aclients.get(
            lambda: openai.AsyncOpenAI(
                **self._client_kwargs(), http_client=default_async_http_client()
            )
        )

    def __getstate__(self) -> dict[str, Any]:
        # Clients hold sockets and locks: a pickled backend rebuilds them where it lands.
        state = self.__dict__.copy()
        state.update(_client=None, _aclient_own=None, http_client=None, async_http_client=None)
        return state

    # --- calls ------------------------------------------------------------------

    def complete(self, turns: Sequence[Turn], options: RequestOptions) -> Reply:
        prepared = prepare(turns, options, self.profile, self.policy)
        request = self._map_request(prepared, options, stream=False)
        with _converted_errors(self.profile.model, self.timeout):
            completion = self.client.post(_PATH, body=request, cast_to=object)
        return self._process_whole(completion, prepared)

    async def acomplete(self, turns: Sequence[Turn], options: RequestOptions) -> Reply:
        prepared = await aprepare(turns, options, self.profile, self.policy)
        request = self._map_request(prepared, options, stream=False)
        with _converted_errors(self.profile.model, self.timeout):
            completion = await self.async_client.post(_PATH, body=request, cast_to=object)
        return self._process_whole(completion, prepared)

    def stream(self, turns: Sequence[Turn], options: RequestOptions) -> Iterator[Delta]:
        prepared = prepare(turns, options, self.profile, self.policy, stream=True)
        request = self._map_request(prepared, options, stream=True)
        state = _StreamState()
        with _converted_errors(self.profile.model, self.timeout, state):
            chunks = self.client.post(
                _PATH, body=request, cast_to=object, stream=True, stream_cls=_stream_classes()[0]
            )
            try:
                for chunk in chunks:
                    yield state.feed(_process_chunk(chunk, self.profile.model), prepared.processor)
            finally:
                # A consumer that stops early must not leave the connection half-read.
                chunks.close()
        yield state.finish(prepared.processor, self.profile.model)

    async def astream(self, turns: Sequence[Turn], options: RequestOptions) -> AsyncIterator[Delta]:
        prepared = await aprepare(turns, options, self.profile, self.policy, stream=True)
        request = self._map_request(prepared, options, stream=True)
        state = _StreamState()
        with _converted_errors(self.profile.model, self.timeout, state):
            achunks = await self.async_client.post(
                _PATH, body=request, cast_to=object, stream=True, stream_cls=_stream_classes()[1]
            )
            try:
                async for chunk in achunks:
                    yield state.feed(_process_chunk(chunk, self.profile.model), prepared.processor)
            finally:
                await achunks.close()
        yield state.finish(prepared.processor, self.profile.model)

    def _process_whole(self, completion: Any, prepared: PreparedConversation) -> Reply:
        raw = _process_completion(completion, self.profile.model)
        processor = prepared.processor
        return assemble_reply([processor.feed(raw), processor.finish()])

    # --- out --------------------------------------------------------------------

    def _map_request(
        self, prepared: PreparedConversation, options: RequestOptions, *, stream: bool
    ) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self.profile.model,
            "messages": _map_messages(prepared.turns, options),
            "stream": stream,
        }
        if stream:
            request["stream_options"] = {"include_usage": True}
        for name in ("max_tokens", "temperature", "top_p", "seed"):
            value = getattr(options, name)
            if value is not None:
                request[name] = value
        if options.stop:
            request["stop"] = list(options.stop)
        if prepared.native_tools:
            request["tools"] = [_map_tool(t) for t in options.tools]
            if options.tool_choice is not None:
                request["tool_choice"] = _map_tool_choice(options.tool_choice)
        if prepared.json_mode == "native" and options.json_schema is not None:
            request["response_format"] = {
                "type": "json_schema",
                "json_schema": dict(options.json_schema),
            }
        extra: dict[str, Any] = dict(prepared.params)
        video: dict[str, Any] = {}
        if options.video_fps is not None:
            video["fps"] = options.video_fps
        if options.video_num_frames is not None:
            video["num_frames"] = options.video_num_frames
        if not video and prepared.video_fps_hint and self.profile.video_sampling:
            video["fps"] = prepared.video_fps_hint
        if video and prepared.videos:
            extra["media_io_kwargs"] = {"video": video}
        if options.max_num_tiles is not None:
            extra["mm_processor_kwargs"] = {"max_num_tiles": options.max_num_tiles}
        extra.update(options.extra)
        # NIM's own fields go in the body beside the OpenAI ones (the SDK's extra_body).
        request.update(extra)
        return request


def _map_messages(turns: list[PreparedTurn], options: RequestOptions) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for turn in turns:
        if turn.role == "assistant":
            message: dict[str, Any] = {"role": "assistant", "content": turn.text or None}
            if turn.tool_calls:
                message["tool_calls"] = [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
                    }
                    for c in turn.tool_calls
                ]
            elif message["content"] is None:
                message["content"] = ""
            messages.append(message)
        elif turn.role == "tool":
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": turn.tool_call_id or "",
                    "content": _map_tagged_text(turn) if turn.media else turn.text,
                }
            )
        elif turn.role == "system":
            messages.append({"role": "system", "content": turn.text})
        else:
            messages.append({"role": "user", "content": _map_content(turn, options)})
    return messages


def _map_content(turn: PreparedTurn, options: RequestOptions) -> str | list[dict[str, Any]]:
    if not turn.media:
        return turn.text
    if options.image_transport == "img_tag":
        return _map_tagged_text(turn)
    parts: list[dict[str, Any]] = []
    for part in turn.parts:
        if isinstance(part, TextPart):
            if part.text:
                parts.append({"type": "text", "text": part.text})
        elif part.kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": part.as_url()}})
        else:
            parts.append({"type": "video_url", "video_url": {"url": part.as_url()}})
    return parts


def _map_tagged_text(turn: PreparedTurn) -> str:
    """Images as ``<img src="..." />`` inside plain text (the seed's text-only fallback)."""
    pieces = []
    for part in turn.parts:
        if isinstance(part, PreparedMedia):
            src = part.as_url().replace('"', "%22")
            pieces.append(f'<img src="{src}" />')
        elif part.text:
            pieces.append(part.text)
    return " ".join(pieces)


# --- in ----------------------------------------------------------------------------


def _process_usage(usage: Any) -> Usage | None:
    if not isinstance(usage, Mapping):
        return None
    details = usage.get("completion_tokens_details")
    reasoning = details.get("reasoning_tokens") if isinstance(details, Mapping) else None
    prompt = _count(usage.get("prompt_tokens"))
    completion = _count(usage.get("completion_tokens"))
    total = _count(usage.get("total_tokens")) or prompt + completion
    valid = isinstance(reasoning, int) and not isinstance(reasoning, bool)
    return Usage(prompt, completion, total, reasoning if valid else None)


def _field_reasoning(obj: Mapping[str, Any]) -> str:
    # vLLM-based NIMs use ``reasoning_content``; newer ones (DiffusionGemma) ``reasoning``.
    return _text(obj.get("reasoning_content"), "reasoning_content") or _text(
        obj.get("reasoning"), "reasoning"
    )


# Field readers for the reply's JSON. A text field of another type means the reply is
# malformed: the TypeError becomes IncompleteResponseError in ``_shape_checked``, instead
# of surfacing later, deep in the reply processor. Counts and labels are only metadata:
# odd ones are dropped rather than costing the answer.


def _text(value: Any, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"'{name}' is a {type(value).__name__}, not a string")
    return value


def _arguments(value: Any) -> str:
    # Some OpenAI-compatible servers send arguments as an object instead of JSON text.
    return json.dumps(value) if isinstance(value, Mapping) else _text(value, "arguments")


def _index(value: Any, default: int) -> int:
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"a tool call 'index' is a {type(value).__name__}, not an integer")
    return value


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _label(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _process_completion(completion: Any, model: str) -> Delta:
    choices = completion.get("choices") if isinstance(completion, Mapping) else None
    if not choices:
        raise IncompleteResponseError(
            f"The server answered 200 but with no choices (model {model}); nothing to return."
        )
    with _shape_checked(model):
        choice = choices[0]
        message = choice.get("message") or {}
        chunks = [
            ToolCallChunk(
                i,
                _label(call.get("id")),
                _label(call["function"].get("name")),
                _arguments(call["function"].get("arguments")),
            )
            for i, call in enumerate(message.get("tool_calls") or [])
        ]
        return Delta(
            text=_text(message.get("content"), "content"),
            reasoning=_field_reasoning(message),
            tool_call_chunks=chunks,
            finish_reason=_label(choice.get("finish_reason")),
            usage=_process_usage(completion.get("usage")),
            model=_label(completion.get("model")),
            response_id=_label(completion.get("id")),
        )


def _process_chunk(chunk: Any, model: str = "") -> Delta:
    with _shape_checked(model):
        out = Delta(
            usage=_process_usage(chunk.get("usage")),
            model=_label(chunk.get("model")),
            response_id=_label(chunk.get("id")),
        )
        choices = chunk.get("choices")
        if not choices:
            return out
        choice = choices[0]
        delta = choice.get("delta")
        out.finish_reason = _label(choice.get("finish_reason"))
        if delta is None:
            return out
        out.text = _text(delta.get("content"), "content")
        out.reasoning = _field_reasoning(delta)
        for i, call in enumerate(delta.get("tool_calls") or []):
            fn = call.get("function") or {}
            out.tool_call_chunks.append(
                ToolCallChunk(
                    _index(call.get("index"), i),
                    _label(call.get("id")),
                    _label(fn.get("name")),
                    _arguments(fn.get("arguments")),
                )
            )
        return out


@contextmanager
def _shape_checked(model: str) -> Iterator[None]:
    """A reply whose JSON is not shaped like a chat completion fails as incomplete."""
    try:
        yield
    except (AttributeError, TypeError, KeyError, IndexError) as exc:
        raise IncompleteResponseError(
            f"The server's reply for {model or 'the model'} did not have the shape of a chat "
            f"completion ({type(exc).__name__}: {exc})."
        ) from exc


@dataclass
class _StreamState:
    """Whether a stream has begun and whether the model said it was done."""

    started: bool = False
    ended: bool = False

    def feed(self, raw: Delta, processor: ReplyProcessor) -> Delta:
        self.started = True
        self.ended = self.ended or raw.finish_reason is not None
        return processor.feed(raw)

    def finish(self, processor: ReplyProcessor, model: str) -> Delta:
        if not self.ended:
            raise IncompleteResponseError(
                f"The stream from {model} ended before the model finished (no finish_reason): "
                "the answer is incomplete. Retry the request."
            )
        return processor.finish()


@functools.cache
def _stream_classes() -> tuple[Any, Any]:
    """The SDK's stream classes yielding chunks as plain dicts: the SDK's chunk models
    cost more CPU than the rest of the path."""
    import openai

    return openai.Stream[object], openai.AsyncStream[object]


@functools.cache
def _http_errors(*names: str) -> tuple[type[Exception], ...]:
    """The named exception classes of httpx and, where installed, of httpx2 (the fork
    openai 3.x speaks through), so transport errors are caught whichever is in use.
    Looked up on the first error (an ``except`` clause is evaluated only then), so
    importing this module does not import httpx2."""
    modules: list[Any] = [httpx]
    try:
        modules.append(importlib.import_module("httpx2"))
    except ImportError:
        pass
    return tuple(getattr(module, name) for module in modules for name in names)


_BROKEN_CONNECTION = ("RemoteProtocolError", "ReadError")
_HTTP_TIMEOUTS = ("TimeoutException",)


@contextmanager
def _converted_errors(
    model: str, timeout: float | None, stream: _StreamState | None = None
) -> Iterator[None]:
    """SDK and transport errors -> ``nemovlm.errors``, keeping status, id and message."""
    import openai

    try:
        yield
    except openai.APITimeoutError as exc:
        if (cause := unreachable(exc)) is not None:
            raise RequestError(
                f"Could not reach the server ({type(cause).__name__}: {cause}): check "
                "base_url and that the server is up.",
                model=model,
            ) from exc
        raise RequestTimeoutError(
            f"{model} did not answer within timeout={timeout} s: raise the model's `timeout` "
            "setting, or check the server."
        ) from exc
    except openai.APIStatusError as exc:
        cls = RateLimitError if exc.status_code == 429 else RequestError
        raise cls(
            _server_message(exc),
            status_code=exc.status_code,
            request_id=exc.request_id or exc.response.headers.get("x-request-id"),
            model=model,
        ) from exc
    except openai.APIConnectionError as exc:
        cause = exc.__cause__
        # The SDK reports a connection cut mid-reply as a connection error too; but the
        # server was reached, and what it sent is a broken answer.
        broken = _http_errors(*_BROKEN_CONNECTION)
        if (stream is not None and stream.started) or isinstance(cause, broken):
            raise IncompleteResponseError(
                f"The reply from {model} broke off before it was complete ({cause or exc}): "
                "the answer is incomplete. Retry the request."
            ) from exc
        reason = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
        raise RequestError(
            f"Could not reach the server ({reason}): check base_url and that the server is up.",
            model=model,
        ) from exc
    except openai.APIResponseValidationError as exc:
        raise IncompleteResponseError(
            f"The server's reply for {model} did not have the expected shape: {exc}"
        ) from exc
    except _http_errors(*_BROKEN_CONNECTION) as exc:
        raise IncompleteResponseError(
            f"The connection to the server broke mid-reply ({model}): {exc}. "
            "The answer is incomplete; retry the request."
        ) from exc
    except _http_errors(*_HTTP_TIMEOUTS) as exc:
        raise RequestTimeoutError(
            f"{model} went quiet for longer than timeout={timeout} s mid-reply: raise the "
            "model's `timeout` setting, or check the server."
        ) from exc
    except json.JSONDecodeError as exc:
        raise IncompleteResponseError(
            f"The server's reply for {model} was not valid JSON: {exc}"
        ) from exc


def _server_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(body.get("message"), str):
            return str(body["message"])
    return exc.message
