"""NIM backend: the neutral conversation over OpenAI-compatible ``/v1/chat/completions``.

Input flow: ``NIMBackend.complete/stream`` -> ``pipeline.prepare`` (checks, tools,
reasoning, media) -> ``nim_request.map_request`` -> ``map_messages`` -> ``map_content``
-> ``openai`` SDK (``client.post``).

Output flow: the completion's JSON -> ``nim_reply.process_completion`` (each choice as
one raw ``Delta``, with its logprobs), or each chunk's JSON -> ``process_chunk`` ->
``ReplyProcessor.feed`` (reasoning split, prompt tools; one processor per choice) ->
``Delta``s -> ``assemble_reply`` for ``Reply`` (several choices: ``Reply.choices``).
``available_models`` reads ``/v1/models`` (``process_models``).
Errors from the SDK are converted once, in ``nim_errors.converted_errors``.

A stream goes through the SDK's ``post`` rather than ``chat.completions.create``, and
its chunks come back as plain JSON: the request is already the JSON body, and the SDK's
typed request transform and chunk models cost more CPU than all of this package's own
work (``bench/``, scenarios 1 and 5); SSE parsing, retries and error types are the
SDK's. A whole (non-streamed) reply goes one step lower (``nim_http``): sync on the SDK
client's own HTTP client, async on a pooled aiohttp session (or through the SDK on a
user's own async client), with the SDK's retry policy and exception classes; the SDK's
request machinery was most of a call's CPU at many requests in flight (scenario 4).
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import SecretStr

from nemovlm.backends._loops import (
    PerLoop,
    aclose,
    default_async_http_client,
    default_http_client,
)
from nemovlm.backends.assets import ahosted_call, hosted_call
from nemovlm.backends.nim_errors import converted_errors
from nemovlm.backends.nim_http import (
    USER_AGENT,
    Endpoint,
    Pool,
    apost_json,
    close_pool,
    new_pool,
    post_json,
)
from nemovlm.backends.nim_reply import (
    ReplyBody,
    ServedModel,
    StreamProgress,
    choice_count,
    process_chunk,
    process_completion,
    process_models,
)
from nemovlm.backends.nim_request import map_messages, map_request
from nemovlm.errors import MissingCredentialsError
from nemovlm.hosted import HostedMedia, HostedSettings, decide_hosted, default_assets_url
from nemovlm.media import MediaPolicy
from nemovlm.messages import Delta, Reply, Turn
from nemovlm.options import RequestOptions
from nemovlm.pipeline import PreparedConversation, aprepare, assemble_reply, prepare
from nemovlm.profiles import ModelProfile
from nemovlm.secrets import SecretHeaders, SecretURL, secret_values

__all__ = [
    "HOSTED_BASE_URL",
    "NIMBackend",
    "ServedModel",
    "StreamProgress",
    "map_messages",
    "map_request",
    "process_chunk",
    "process_completion",
    "resolve_api_key",
    "resolve_base_url",
]

if TYPE_CHECKING:
    # Imported where a request is made: ``import openai`` takes longer than the rest
    # of the package's import, and making a model instance needs none of it.
    import openai

HOSTED_BASE_URL = "https://integrate.api.nvidia.com/v1"
_Hosted = AbstractContextManager[tuple[PreparedConversation, dict[str, str]]]
_AHosted = AbstractAsyncContextManager[tuple[PreparedConversation, dict[str, str]]]
_PATH = "/chat/completions"
_MODELS_PATH = "/models"


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
    _apools: PerLoop[Pool] = field(
        default_factory=lambda: PerLoop(close=close_pool), init=False, repr=False
    )

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

    def _endpoint(self) -> Endpoint:
        """Where and how non-streamed async requests go (``nim_http``)."""
        return Endpoint.of(
            self.base_url,
            _PATH,
            api_key=self._client_kwargs()["api_key"],
            default_headers=self.default_headers,
            timeout=self.timeout,
            max_retries=self.max_retries,
        )

    def _client_kwargs(self) -> dict[str, Any]:
        key = self.api_key.get_secret_value() if self.api_key else "not-used"
        return {
            "base_url": self.base_url,
            "api_key": key,
            "timeout": self.timeout,
            "max_retries": self.max_retries,
            # One user agent for the whole model, whichever path a call takes.
            "default_headers": {"User-Agent": USER_AGENT, **(self.default_headers or {})},
        }

    @property
    def client(self) -> openai.OpenAI:
        if self._client is None:
            import openai

            http_client = self.http_client or default_http_client()
            self._client = openai.OpenAI(**self._client_kwargs(), http_client=http_client)
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
        client = self.client._client
        with self._hosted(prepared) as (prepared, headers):
            request = map_request(self.profile, prepared, options, stream=False)
            body = ReplyBody.starting(self.timeout)
            with converted_errors(self.profile.model, self.timeout, secrets=self._secrets):
                # On the SDK client's HTTP client, below its request machinery, with its
                # retries and errors (``nim_http``).
                completion = post_json(client, self._endpoint(), request, headers, body)
            return self._process_whole(completion, prepared)

    async def acomplete(self, turns: Sequence[Turn], options: RequestOptions) -> Reply:
        prepared = await aprepare(turns, options, self.profile, self.policy)
        async with self._ahosted(prepared) as (prepared, headers):
            request = map_request(self.profile, prepared, options, stream=False)
            body = ReplyBody.starting(self.timeout)
            with converted_errors(self.profile.model, self.timeout, secrets=self._secrets):
                if self.async_http_client is None:
                    # Below the SDK, with its retries and errors (``nim_http``): the
                    # SDK's request machinery is most of an async call's CPU.
                    pool = self._apools.get(lambda: new_pool(self.base_url))
                    completion = await apost_json(pool, self._endpoint(), request, headers, body)
                else:
                    completion = await self._apost_sdk(request, headers, body)
            return self._process_whole(completion, prepared)

    async def _apost_sdk(
        self, request: dict[str, Any], headers: dict[str, str], body: ReplyBody
    ) -> Any:
        """The non-streamed call through the SDK, on the user's own async HTTP client."""
        response = await self.async_client.post(
            _PATH, body=request, cast_to=httpx.Response, options=_unread_body(headers)
        )
        try:
            body.begin()
            async for piece in response.aiter_bytes():
                body.add(piece)
        finally:
            await response.aclose()
        return body.json()

    def stream(self, turns: Sequence[Turn], options: RequestOptions) -> Iterator[Delta]:
        prepared = prepare(turns, options, self.profile, self.policy, stream=True)
        # Assets live until the stream ends, is closed early or is dropped (``finally``).
        with self._hosted(prepared) as (prepared, headers):
            request = map_request(self.profile, prepared, options, stream=True)
            state = StreamProgress()
            with converted_errors(self.profile.model, self.timeout, state, self._secrets):
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
                            process_chunk(chunk, self.profile.model), prepared.processor
                        )
                finally:
                    # A consumer that stops early must not leave the connection half-read.
                    chunks.close()
            yield state.finish(prepared.processor, self.profile.model)

    async def astream(self, turns: Sequence[Turn], options: RequestOptions) -> AsyncIterator[Delta]:
        prepared = await aprepare(turns, options, self.profile, self.policy, stream=True)
        async with self._ahosted(prepared) as (prepared, headers):
            request = map_request(self.profile, prepared, options, stream=True)
            state = StreamProgress()
            with converted_errors(self.profile.model, self.timeout, state, self._secrets):
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
                            process_chunk(chunk, self.profile.model), prepared.processor
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
        if self.hosted is None:
            # Nothing to do off the catalog; an async generator entered and left per
            # call costs more than a whole-reply call's own work here (scenario 4).
            return contextlib.nullcontext((prepared, {}))
        return ahosted_call(
            prepared,
            settings=self.hosted,
            profile=self.profile,
            api_key=self.api_key,
            client=self.async_client._client,
            timeout=self.timeout,
            secrets=self._secrets,
        )

    def _process_whole(self, completion: Any, prepared: PreparedConversation) -> Reply:
        replies = []
        for index in range(choice_count(completion)):
            raw = process_completion(completion, self.profile.model, index)
            # Each choice is its own answer: its own reasoning split and held tool call.
            processor = prepared.processor if index == 0 else replace(prepared.processor)
            replies.append(assemble_reply([processor.feed(raw), processor.finish()]))
        if len(replies) == 1:
            return replies[0]
        return replace(replies[0], choices=replies)

    def available_models(self) -> list[ServedModel]:
        """The models the server serves (its ``/v1/models``); the key goes only to
        ``base_url``'s host, as for every call."""
        with converted_errors(self.profile.model, self.timeout, secrets=self._secrets):
            listing = self.client.get(_MODELS_PATH, cast_to=object)
        return process_models(listing)

    async def aavailable_models(self) -> list[ServedModel]:
        with converted_errors(self.profile.model, self.timeout, secrets=self._secrets):
            listing = await self.async_client.get(_MODELS_PATH, cast_to=object)
        return process_models(listing)

    # --- out --------------------------------------------------------------------


@functools.cache
def _stream_classes() -> tuple[Any, Any]:
    """The SDK's stream classes yielding chunks as plain dicts: the SDK's chunk models
    cost more CPU than the rest of the path."""
    import openai

    return openai.Stream[object], openai.AsyncStream[object]
