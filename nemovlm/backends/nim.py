"""NIM backend: the neutral conversation over OpenAI-compatible ``/v1/chat/completions``.

Input flow: ``NIMBackend.complete/stream`` -> ``pipeline.prepare`` (checks, tools,
reasoning, media) -> ``_map_request`` -> ``_map_messages`` -> ``_map_content`` ->
``openai`` SDK (``client.post``).

Output flow: the completion's JSON -> ``_process_completion`` (each choice as one raw
``Delta``, with its logprobs), or each chunk's JSON -> ``_process_chunk`` ->
``ReplyProcessor.feed`` (reasoning split, prompt tools; one processor per choice) ->
``Delta``s -> ``assemble_reply`` for ``Reply`` (several choices: ``Reply.choices``).
``available_models`` reads ``/v1/models`` (``_process_models``).
Errors from the SDK are converted once, in ``_converted_errors``.

The request goes through the SDK's ``post`` rather than ``chat.completions.create``,
and the reply comes back as plain JSON: the request is already the JSON body, and the
SDK's typed request transform and response models cost more CPU per call than all
of this package's own work (``bench/``, scenarios 1 and 5). Auth, retries, timeouts,
SSE parsing and error types are still the SDK's.
"""

from __future__ import annotations

import functools
import json
import os
import time
import warnings
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import SecretStr
from typing_extensions import assert_never

from nemovlm.backends._loops import PerLoop, aclose, default_async_http_client, unreachable
from nemovlm.backends.assets import ahosted_call, hosted_call
from nemovlm.errors import (
    IncompleteResponseError,
    MissingCredentialsError,
    RateLimitError,
    RequestError,
    RequestTimeoutError,
    http_errors,
    openai_classes,
)
from nemovlm.hosted import HostedMedia, HostedSettings, decide_hosted, default_assets_url
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
from nemovlm.secrets import SecretHeaders, SecretURL, scrub_exception, secret_values
from nemovlm.tools import map_tool, map_tool_choice

if TYPE_CHECKING:
    # Imported where a request is made: ``import openai`` takes longer than the rest
    # of the package's import, and making a model instance needs none of it.
    import openai

HOSTED_BASE_URL = "https://integrate.api.nvidia.com/v1"
_Hosted = AbstractContextManager[tuple[PreparedConversation, dict[str, str]]]
_AHosted = AbstractAsyncContextManager[tuple[PreparedConversation, dict[str, str]]]
_PATH = "/chat/completions"
_MODELS_PATH = "/models"


@dataclass(frozen=True)
class ServedModel:
    """One entry of a server's ``/v1/models``."""

    id: str
    owned_by: str | None = None
    max_model_len: int | None = None
    """The context length the server allows, when it says (vLLM-based NIMs do)."""
    known: bool = False
    """nemovlm has a profile for this id (its wire rules are applied)."""


# The SDK's own switch (``X-Stainless-Raw-Response: stream``, as its
# ``with_streaming_response`` sends) to hand back the response before reading the body,
# so a non-streamed body is read here, against the call's deadline.
_UNREAD_BODY = {"X-Stainless-Raw-Response": "stream"}


def _unread_body(headers: Mapping[str, str]) -> Any:
    return {"headers": {**headers, **_UNREAD_BODY}}


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
    """Seconds. A whole reply: a deadline from the call to its last byte. A stream: the
    longest wait for the connection, the first chunk, or the next chunk."""
    max_retries: int = 2
    default_headers: dict[str, str] | None = None
    # The HTTP client type follows the installed ``openai`` SDK (httpx, or httpx2 in 3.x).
    http_client: Any = None
    async_http_client: Any = None
    policy: MediaPolicy = field(default_factory=MediaPolicy)
    hosted: HostedSettings | None = None
    """NVIDIA's hosted catalog rules and NVCF assets (``nemovlm.hosted``); ``None``: off."""
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
        hosted: bool | None = None,
        assets_url: str | None = None,
        hosted_media: HostedMedia = "auto",
        **settings: Any,
    ) -> NIMBackend:
        """A backend whose URL and key follow the documented order (argument, then
        ``NVIDIA_BASE_URL`` / ``NVIDIA_API_KEY``, then the hosted catalog); ``hosted``
        ``None`` is decided from that URL (``nemovlm.hosted.decide_hosted``)."""
        url = resolve_base_url(base_url)
        if decide_hosted(hosted, url):
            settings["hosted"] = HostedSettings(assets_url or default_assets_url(), hosted_media)
        elif hosted_media != "auto" or assets_url:
            warnings.warn(
                f"hosted_media / assets_url apply only on NVIDIA's hosted catalog, and {url} "
                "is not treated as hosted: set hosted=True if it is.",
                stacklevel=2,
            )
        return cls(profile, url, resolve_api_key(api_key, url), **settings)

    def __post_init__(self) -> None:
        # Credentials in the URL or the headers stay out of this backend's repr.
        self.base_url = SecretURL(self.base_url)
        if self.default_headers is not None:
            self.default_headers = SecretHeaders(self.default_headers)

    @property
    def _secrets(self) -> tuple[str, ...]:
        """Every credential this backend sends, to be kept out of its errors."""
        return secret_values(
            api_key=self.api_key, headers=self.default_headers, base_url=self.base_url
        )

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
        # Held until the body is read: a client dropped by a racing first use elsewhere
        # would close its pool, and this response's socket with it.
        client = self.client
        with self._hosted(prepared) as (prepared, headers):
            request = self._map_request(prepared, options, stream=False)
            body = _Body.starting(self.timeout)
            with _converted_errors(self.profile.model, self.timeout, secrets=self._secrets):
                response = client.post(
                    _PATH, body=request, cast_to=httpx.Response, options=_unread_body(headers)
                )
                try:
                    body.begin()
                    for piece in response.iter_bytes():
                        body.add(piece)
                finally:
                    response.close()
                completion = body.json()
            return self._process_whole(completion, prepared)

    async def acomplete(self, turns: Sequence[Turn], options: RequestOptions) -> Reply:
        prepared = await aprepare(turns, options, self.profile, self.policy)
        client = self.async_client
        async with self._ahosted(prepared) as (prepared, headers):
            request = self._map_request(prepared, options, stream=False)
            body = _Body.starting(self.timeout)
            with _converted_errors(self.profile.model, self.timeout, secrets=self._secrets):
                response = await client.post(
                    _PATH, body=request, cast_to=httpx.Response, options=_unread_body(headers)
                )
                try:
                    body.begin()
                    async for piece in response.aiter_bytes():
                        body.add(piece)
                finally:
                    await response.aclose()
                completion = body.json()
            return self._process_whole(completion, prepared)

    def stream(self, turns: Sequence[Turn], options: RequestOptions) -> Iterator[Delta]:
        prepared = prepare(turns, options, self.profile, self.policy, stream=True)
        # Assets live until the stream ends, is closed early or is dropped (``finally``).
        with self._hosted(prepared) as (prepared, headers):
            request = self._map_request(prepared, options, stream=True)
            state = _StreamProgress()
            with _converted_errors(self.profile.model, self.timeout, state, self._secrets):
                chunks = self.client.post(
                    _PATH,
                    body=request,
                    cast_to=object,
                    options={"headers": headers},
                    stream=True,
                    stream_cls=_stream_classes()[0],
                )
                try:
                    for chunk in chunks:
                        yield state.feed(
                            _process_chunk(chunk, self.profile.model), prepared.processor
                        )
                finally:
                    # A consumer that stops early must not leave the connection half-read.
                    chunks.close()
            yield state.finish(prepared.processor, self.profile.model)

    async def astream(self, turns: Sequence[Turn], options: RequestOptions) -> AsyncIterator[Delta]:
        prepared = await aprepare(turns, options, self.profile, self.policy, stream=True)
        async with self._ahosted(prepared) as (prepared, headers):
            request = self._map_request(prepared, options, stream=True)
            state = _StreamProgress()
            with _converted_errors(self.profile.model, self.timeout, state, self._secrets):
                achunks = await self.async_client.post(
                    _PATH,
                    body=request,
                    cast_to=object,
                    options={"headers": headers},
                    stream=True,
                    stream_cls=_stream_classes()[1],
                )
                try:
                    async for chunk in achunks:
                        yield state.feed(
                            _process_chunk(chunk, self.profile.model), prepared.processor
                        )
                finally:
                    await achunks.close()
            yield state.finish(prepared.processor, self.profile.model)

    def _hosted(self, prepared: PreparedConversation) -> _Hosted:
        """On the hosted catalog: its message rules, and large media as NVCF assets for
        the duration of the call (``nemovlm.backends.assets``)."""
        return hosted_call(
            prepared,
            settings=self.hosted,
            profile=self.profile,
            api_key=self.api_key,
            client=self.client._client if self.hosted else None,
            timeout=self.timeout,
            secrets=self._secrets,
        )

    def _ahosted(self, prepared: PreparedConversation) -> _AHosted:
        return ahosted_call(
            prepared,
            settings=self.hosted,
            profile=self.profile,
            api_key=self.api_key,
            client=self.async_client._client if self.hosted else None,
            timeout=self.timeout,
            secrets=self._secrets,
        )

    def _process_whole(self, completion: Any, prepared: PreparedConversation) -> Reply:
        replies = []
        for index in range(_choice_count(completion)):
            raw = _process_completion(completion, self.profile.model, index)
            # Each choice is its own answer: its own reasoning split and held tool call.
            processor = prepared.processor if index == 0 else replace(prepared.processor)
            replies.append(assemble_reply([processor.feed(raw), processor.finish()]))
        if len(replies) == 1:
            return replies[0]
        return replace(replies[0], choices=replies)

    def available_models(self) -> list[ServedModel]:
        """The models the server serves (its ``/v1/models``); the key goes only to
        ``base_url``'s host, as for every call."""
        with _converted_errors(self.profile.model, self.timeout, secrets=self._secrets):
            listing = self.client.get(_MODELS_PATH, cast_to=object)
        return _process_models(listing)

    async def aavailable_models(self) -> list[ServedModel]:
        with _converted_errors(self.profile.model, self.timeout, secrets=self._secrets):
            listing = await self.async_client.get(_MODELS_PATH, cast_to=object)
        return _process_models(listing)

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
        for name in ("max_tokens", "temperature", "top_p", "seed", "n"):
            value = getattr(options, name)
            if value is not None:
                request[name] = value
        if options.stop:
            request["stop"] = list(options.stop)
        if prepared.native_tools:
            request["tools"] = [map_tool(t) for t in options.tools]
            if options.tool_choice is not None:
                request["tool_choice"] = map_tool_choice(options.tool_choice)
        if prepared.json_mode == "native" and options.json_schema is not None:
            request["response_format"] = {
                "type": "json_schema",
                "json_schema": dict(options.json_schema),
            }
        elif prepared.json_mode == "native" and options.json_mode:
            request["response_format"] = {"type": "json_object"}
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
        elif turn.role == "user":
            messages.append({"role": "user", "content": _map_content(turn, options)})
        else:
            assert_never(turn.role)
    return messages


def _map_content(turn: PreparedTurn, options: RequestOptions) -> str | list[dict[str, Any]]:
    if not turn.media:
        return turn.text
    if options.image_transport == "img_tag":
        return _map_tagged_text(turn)
    if options.image_transport != "parts":
        assert_never(options.image_transport)
    parts: list[dict[str, Any]] = []
    for part in turn.parts:
        if isinstance(part, TextPart):
            if part.text:
                parts.append({"type": "text", "text": part.text})
        elif part.kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": part.as_url()}})
        elif part.kind == "video":
            parts.append({"type": "video_url", "video_url": {"url": part.as_url()}})
        else:
            assert_never(part.kind)
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


def _process_logprobs(logprobs: Any) -> list[dict[str, Any]] | None:
    """The per-token entries of a choice's ``logprobs`` (OpenAI's ``{"content": [...]}``).
    They are metadata: an odd shape is dropped rather than costing the answer."""
    content = logprobs.get("content") if isinstance(logprobs, Mapping) else None
    if not isinstance(content, list):
        return None
    return [dict(entry) for entry in content if isinstance(entry, Mapping)]


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _label(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _choice_count(completion: Any) -> int:
    choices = completion.get("choices") if isinstance(completion, Mapping) else None
    return len(choices) if isinstance(choices, list) and choices else 1


def _process_completion(completion: Any, model: str, index: int = 0) -> Delta:
    """Choice ``index`` of a whole completion as one raw ``Delta``."""
    if isinstance(completion, Mapping) and completion.get("error"):
        # Some proxies answer 200 with the error object a failed request would carry.
        raise _process_error(completion["error"], model)
    choices = completion.get("choices") if isinstance(completion, Mapping) else None
    if not choices:
        raise IncompleteResponseError(
            f"The server answered 200 but with no choices (model {model}); nothing to return."
        )
    with _shape_checked(model):
        choice = choices[index]
        message = choice.get("message")
        # Every whole reply says why it ended; without that (or without a message) it
        # may have been cut short, and an empty answer must not pass as the model's.
        if not isinstance(message, Mapping):
            raise IncompleteResponseError(
                f"The server answered 200 but its choice has no message (model {model}): "
                "the answer is missing. Retry the request."
            )
        if not choice.get("finish_reason"):
            raise IncompleteResponseError(
                f"The server's reply for {model} has no finish_reason: it may be cut short, "
                "so it is not returned as a whole answer. Retry the request."
            )
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
            logprobs=_process_logprobs(choice.get("logprobs")),
        )


def _process_chunk(chunk: Any, model: str = "") -> Delta:
    if isinstance(chunk, Mapping) and chunk.get("error"):
        # vLLM-based servers report a failure mid-stream as ``data: {"error": {...}}``.
        raise _process_error(chunk["error"], model)
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
        out.logprobs = _process_logprobs(choice.get("logprobs"))
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


def _process_models(listing: Any) -> list[ServedModel]:
    data = listing.get("data") if isinstance(listing, Mapping) else None
    if not isinstance(data, list):
        raise IncompleteResponseError(
            "The server's /v1/models answer has no 'data' list; is base_url an "
            "OpenAI-compatible server?"
        )
    from nemovlm.profiles import PROFILES

    models = []
    for entry in data:
        ident = entry.get("id") if isinstance(entry, Mapping) else None
        if isinstance(ident, str):
            length = entry.get("max_model_len")
            models.append(
                ServedModel(
                    ident,
                    _label(entry.get("owned_by")),
                    length if isinstance(length, int) and not isinstance(length, bool) else None,
                    ident in PROFILES,
                )
            )
    return models


def _process_error(error: Any, model: str) -> RequestError:
    """The server's error object (``{"message", "type", "code"}``) as our error."""
    message = error.get("message") if isinstance(error, Mapping) else error
    code = error.get("code") if isinstance(error, Mapping) else None
    if not isinstance(code, (int, str)) or isinstance(code, bool):
        code = None
    status = code if isinstance(code, int) and 400 <= code < 600 else None
    cls = RateLimitError if status == 429 else RequestError
    text = message if isinstance(message, str) and message else "no message"
    return cls(f"The server reported an error: {text}", status_code=status, model=model, code=code)


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
class _StreamProgress:
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


class _DeadlinePassed(Exception):
    """A non-streamed body was still arriving when the call's time was up."""


@dataclass
class _Body:
    """A non-streamed reply's bytes, collected against the call's deadline: the SDK's
    ``timeout`` bounds each wait, so a server sending a byte now and then could
    otherwise hold the call for as long as it liked."""

    timeout: float | None
    started: float
    deadline: float | None = None
    pieces: list[bytes] = field(default_factory=list)

    @classmethod
    def starting(cls, timeout: float | None) -> _Body:
        return cls(timeout, time.monotonic())

    def begin(self) -> None:
        """The headers are in. The deadline counts from the call; if the SDK's retries
        (429, 503) already used it up, the answering attempt gets a whole ``timeout``."""
        if self.timeout is not None:
            now = time.monotonic()
            start = self.started if now <= self.started + self.timeout else now
            self.deadline = start + self.timeout

    def add(self, piece: bytes) -> None:
        self.pieces.append(piece)
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise _DeadlinePassed

    def json(self) -> Any:
        return json.loads(b"".join(self.pieces))


@functools.cache
def _stream_classes() -> tuple[Any, Any]:
    """The SDK's stream classes yielding chunks as plain dicts: the SDK's chunk models
    cost more CPU than the rest of the path."""
    import openai

    return openai.Stream[object], openai.AsyncStream[object]


_BROKEN_CONNECTION = ("RemoteProtocolError", "ReadError")
_HTTP_TIMEOUTS = ("TimeoutException",)


@contextmanager
@openai_classes
def _converted_errors(
    model: str,
    timeout: float | None,
    stream: _StreamProgress | None = None,
    secrets: tuple[str, ...] = (),
) -> Iterator[None]:
    """SDK and transport errors -> ``nemovlm.errors``, keeping status, id and message,
    with every credential the backend holds taken out (a server may echo the key)."""
    try:
        with _converted(model, timeout, stream):
            yield
    except BaseException as exc:
        scrub_exception(exc, secrets)
        raise


@contextmanager
def _converted(model: str, timeout: float | None, stream: _StreamProgress | None) -> Iterator[None]:
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
    except _DeadlinePassed as exc:
        raise RequestTimeoutError(
            f"{model} was still sending its reply when timeout={timeout} s had passed: the "
            "timeout bounds a whole (non-streamed) reply. Raise the model's `timeout` "
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
        broken = http_errors(*_BROKEN_CONNECTION)
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
    except openai.APIError as exc:
        # The SDK raises its base error for an error object inside a stream.
        raise _process_error(exc.body if exc.body is not None else exc.message, model) from exc
    except http_errors(*_BROKEN_CONNECTION) as exc:
        raise IncompleteResponseError(
            f"The reply from {model} broke off before it was complete ({exc}): "
            "the answer is incomplete. Retry the request."
        ) from exc
    except http_errors(*_HTTP_TIMEOUTS) as exc:
        raise RequestTimeoutError(
            f"{model} went quiet for longer than timeout={timeout} s mid-reply: raise the "
            "model's `timeout` setting, or check the server."
        ) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
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
