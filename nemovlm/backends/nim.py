"""NIM backend: the neutral conversation over OpenAI-compatible ``/v1/chat/completions``.

Input flow: ``NIMBackend.complete/stream`` -> ``pipeline.prepare`` (checks, tools,
reasoning, media) -> ``_map_request`` -> ``_map_messages`` -> ``_map_content`` ->
``openai`` SDK.

Output flow: SDK completion -> ``_process_completion`` (whole reply as one raw
``Delta``), or each SDK chunk -> ``_process_chunk`` -> ``ReplyProcessor.feed``
(reasoning split, prompt tools) -> ``Delta``s -> ``assemble_reply`` for ``Reply``.
Errors from the SDK are converted once, in ``_converted_errors``.
"""

from __future__ import annotations

import asyncio
import json
import os
import weakref
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
from pydantic import SecretStr

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
    assemble_reply,
    prepare,
)
from nemovlm.profiles import ModelProfile
from nemovlm.tools import _map_tool, _map_tool_choice

HOSTED_BASE_URL = "https://integrate.api.nvidia.com/v1"


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
    _aclients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, openai.AsyncOpenAI] = field(
        default_factory=weakref.WeakKeyDictionary, init=False, repr=False
    )
    _aclient_own: openai.AsyncOpenAI | None = field(default=None, init=False, repr=False)

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
            self._client = openai.OpenAI(**self._client_kwargs(), http_client=self.http_client)
        return self._client

    @property
    def async_client(self) -> openai.AsyncOpenAI:
        """The async client of the running event loop: pooled connections belong to the
        loop that opened them, so a model used from several loops (``asyncio.run`` twice,
        one loop per test) gets one client each instead of reusing dead connections."""
        if self.async_http_client is not None:
            # The caller's own client is bound to whichever loop they made it for.
            if self._aclient_own is None:
                self._aclient_own = openai.AsyncOpenAI(
                    **self._client_kwargs(), http_client=self.async_http_client
                )
            return self._aclient_own
        loop = asyncio.get_running_loop()
        # A client holds its loop through its connections, so weak keys alone never
        # let go: drop the clients of loops that have closed.
        for done in [old for old in self._aclients if old.is_closed()]:
            del self._aclients[done]
        client = self._aclients.get(loop)
        if client is None:
            # The SDK's default wrapper would try to close a dropped client on the
            # *current* loop; its plain default client just lets go.
            client = openai.AsyncOpenAI(
                **self._client_kwargs(), http_client=openai.DefaultAsyncHttpxClient()
            )
            self._aclients[loop] = client
        return client

    def __getstate__(self) -> dict[str, Any]:
        # Clients hold sockets and locks: a pickled backend rebuilds them where it lands.
        state = self.__dict__.copy()
        state.update(_client=None, _aclient_own=None, http_client=None, async_http_client=None)
        state["_aclients"] = weakref.WeakKeyDictionary()
        return state

    # --- calls ------------------------------------------------------------------

    def complete(self, turns: Sequence[Turn], options: RequestOptions) -> Reply:
        prepared = prepare(turns, options, self.profile, self.policy)
        request = self._map_request(prepared, options, stream=False)
        with _converted_errors(self.profile.model, self.timeout):
            completion = self.client.chat.completions.create(**request)
        return self._process_whole(completion, prepared)

    async def acomplete(self, turns: Sequence[Turn], options: RequestOptions) -> Reply:
        prepared = prepare(turns, options, self.profile, self.policy)
        request = self._map_request(prepared, options, stream=False)
        with _converted_errors(self.profile.model, self.timeout):
            completion = await self.async_client.chat.completions.create(**request)
        return self._process_whole(completion, prepared)

    def stream(self, turns: Sequence[Turn], options: RequestOptions) -> Iterator[Delta]:
        prepared = prepare(turns, options, self.profile, self.policy, stream=True)
        request = self._map_request(prepared, options, stream=True)
        state = _StreamState()
        with _converted_errors(self.profile.model, self.timeout, state):
            for chunk in self.client.chat.completions.create(**request):
                yield state.feed(_process_chunk(chunk), prepared.processor)
        yield state.finish(prepared.processor, self.profile.model)

    async def astream(self, turns: Sequence[Turn], options: RequestOptions) -> AsyncIterator[Delta]:
        prepared = prepare(turns, options, self.profile, self.policy, stream=True)
        request = self._map_request(prepared, options, stream=True)
        state = _StreamState()
        with _converted_errors(self.profile.model, self.timeout, state):
            async for chunk in await self.async_client.chat.completions.create(**request):
                yield state.feed(_process_chunk(chunk), prepared.processor)
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
        if extra:
            request["extra_body"] = extra
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
    if usage is None:
        return None
    details = getattr(usage, "completion_tokens_details", None)
    reasoning = getattr(details, "reasoning_tokens", None) if details is not None else None
    prompt = usage.prompt_tokens or 0
    completion = usage.completion_tokens or 0
    return Usage(prompt, completion, usage.total_tokens or prompt + completion, reasoning)


def _field_reasoning(obj: Any) -> str:
    # vLLM-based NIMs use ``reasoning_content``; newer ones (DiffusionGemma) ``reasoning``.
    return getattr(obj, "reasoning_content", None) or getattr(obj, "reasoning", None) or ""


def _process_completion(completion: Any, model: str) -> Delta:
    if not getattr(completion, "choices", None):
        raise IncompleteResponseError(
            f"The server answered 200 but with no choices (model {model}); nothing to return."
        )
    choice = completion.choices[0]
    message = choice.message
    chunks = [
        ToolCallChunk(i, call.id, call.function.name, call.function.arguments or "")
        for i, call in enumerate(message.tool_calls or [])
    ]
    return Delta(
        text=message.content or "",
        reasoning=_field_reasoning(message),
        tool_call_chunks=chunks,
        finish_reason=choice.finish_reason,
        usage=_process_usage(completion.usage),
        model=completion.model,
        response_id=completion.id,
    )


def _process_chunk(chunk: Any) -> Delta:
    out = Delta(
        usage=_process_usage(getattr(chunk, "usage", None)),
        model=chunk.model,
        response_id=chunk.id,
    )
    if not chunk.choices:
        return out
    choice = chunk.choices[0]
    delta = choice.delta
    out.finish_reason = choice.finish_reason
    if delta is None:
        return out
    out.text = delta.content or ""
    out.reasoning = _field_reasoning(delta)
    for call in delta.tool_calls or []:
        fn = call.function
        out.tool_call_chunks.append(
            ToolCallChunk(
                call.index,
                call.id,
                fn.name if fn else None,
                (fn.arguments or "") if fn else "",
            )
        )
    return out


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


@contextmanager
def _converted_errors(
    model: str, timeout: float | None, stream: _StreamState | None = None
) -> Iterator[None]:
    """SDK and transport errors -> ``nemovlm.errors``, keeping status, id and message."""
    try:
        yield
    except openai.APITimeoutError as exc:
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
        if stream is not None and stream.started:
            # The SDK reports a connection cut mid-stream as a connection error.
            raise IncompleteResponseError(
                f"The stream from {model} broke off mid-reply ({exc.__cause__ or exc}): "
                "the answer is incomplete. Retry the request."
            ) from exc
        raise RequestError(f"Could not reach the server: {exc}", model=model) from exc
    except openai.APIResponseValidationError as exc:
        raise IncompleteResponseError(
            f"The server's reply for {model} did not have the expected shape: {exc}"
        ) from exc
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
        raise IncompleteResponseError(
            f"The connection to the server broke mid-reply ({model}): {exc}. "
            "The answer is incomplete; retry the request."
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
