"""fal backend: the neutral conversation over fal's queue API, through ``fal-client``.

Input flow: ``FalBackend.complete/acomplete/stream/astream`` -> ``pipeline.prepare``
(option ranges, one image / one video, the prompt protocol for tools and structured
output, the ``reasoning_mode`` switch, media checks) -> ``_map_arguments``:
``_map_prompt`` (the conversation rendered into one prompt; system text to
``system_prompt`` where the app has one), ``_map_params`` (``_map_steps``: the
diffusion step rule) and ``_plan_media`` (URLs pass through, small bytes go inline as a
data URL, large bytes and local files are uploaded with fal-client's ``upload``) ->
``fal_client.SyncClient.subscribe`` or, async, ``_asubscribe`` (submit, poll with
logs, result; the submission shielded so a cancelled task still cancels what it queued).

Output flow: the result dict -> ``_process_result`` (one raw ``Delta``: output,
finish reason, usage, metadata with the fal request id, timings, diffusion usage and
an estimated cost) -> ``ReplyProcessor`` (reasoning split from ``<think>`` tags,
prompt-protocol tool calls) -> ``Reply``; ``stream`` yields that reply as one delta,
since fal answers whole.

Errors from fal-client are converted once, in ``_converted_errors``. Queue progress
(position, runner logs) is logged on the ``nemovlm.backends.fal`` logger at INFO and
passed to the callback installed with ``report_queue_progress`` (the LangChain adapter
routes it to callbacks).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import fal_client
import httpx
from pydantic import SecretStr
from typing_extensions import assert_never

from nemovlm.backends._loops import PerLoop
from nemovlm.errors import (
    IncompleteResponseError,
    MissingCredentialsError,
    RateLimitError,
    RequestError,
    RequestTimeoutError,
    UnsupportedInputError,
    openai_classes,
)
from nemovlm.media import MediaPolicy, PreparedMedia
from nemovlm.messages import Delta, Reply, Turn, Usage
from nemovlm.options import RequestOptions
from nemovlm.pipeline import PreparedConversation, PreparedTurn, aprepare, assemble_reply, prepare
from nemovlm.profiles import ModelProfile, StepSchedule
from nemovlm.secrets import scrub_exception, secret_values

logger = logging.getLogger(__name__)

UPLOAD_THRESHOLD_BYTES = 1_000_000
"""Media bytes above this go up with ``fal_client.upload`` instead of inline base64."""
UPLOAD_EXPIRES_IN = "1h"
"""How long fal's storage keeps an uploaded medium (fal-client's ``StorageSettings``):
long enough for the queue wait and the run, short enough not to keep a user's photo."""
MIN_TIMEOUT_S = 1.0  # fal-client refuses a server-side start timeout of 1 s or less


def _media_field(profile: ModelProfile) -> str | None:
    """Where the one image or video goes: the profile's field, else ``<requires>_url``."""
    if profile.media_field is not None:
        return profile.media_field
    return f"{profile.requires}_url" if profile.requires else None


# --- credentials -----------------------------------------------------------------------


def with_diffusion_settings(
    options: RequestOptions,
    profile: ModelProfile,
    *,
    num_inference_steps: int | None = None,
    block_length: int | None = None,
    threshold: float | None = None,
) -> RequestOptions:
    """``options`` with a model's diffusion settings as defaults under ``extra``.

    Extra parameters given per call or in ``model_kwargs`` win over the model's
    fields, and a per-call ``inference_steps`` alias wins over ``num_inference_steps``.
    """
    fields = {
        "num_inference_steps": num_inference_steps,
        "block_length": block_length,
        "threshold": threshold,
    }
    defaults = {k: v for k, v in fields.items() if v is not None}
    alias = profile.step_schedule.alias if profile.step_schedule else None
    if alias is not None and alias in options.extra:
        defaults.pop("num_inference_steps", None)
    return replace(options, extra={**defaults, **options.extra})


def resolve_fal_key(api_key: SecretStr | str | None) -> SecretStr:
    """The argument, else ``FAL_KEY``, else ``FAL_KEY_ID:FAL_KEY_SECRET`` (fal-client's
    own order, minus its login-token fallback, so the key used is always explicit)."""
    if isinstance(api_key, str):
        api_key = SecretStr(api_key)
    if api_key is not None and api_key.get_secret_value().strip():
        return api_key
    env_key = os.environ.get("FAL_KEY", "").strip()
    if env_key:
        return SecretStr(env_key)
    key_id = os.environ.get("FAL_KEY_ID", "").strip()
    secret = os.environ.get("FAL_KEY_SECRET", "").strip()
    if key_id and secret:
        return SecretStr(f"{key_id}:{secret}")
    raise MissingCredentialsError(
        "fal needs an API key: set FAL_KEY (or both FAL_KEY_ID and FAL_KEY_SECRET), "
        "or pass api_key=... ."
    )


# --- queue progress ----------------------------------------------------------------------


@dataclass(frozen=True)
class QueueUpdate:
    """One change in a queued request's state, as reported to the user."""

    model: str
    request_id: str | None
    status: Literal["queued", "in_progress", "completed"]
    position: int | None = None
    """Requests ahead of this one (``queued`` only)."""
    logs: tuple[str, ...] = ()
    """Runner log lines new since the previous update."""

    def __str__(self) -> str:
        where = f"fal {self.model} request {self.request_id or '?'}"
        if self.status == "queued":
            head = f"{where}: queued at position {self.position}"
        elif self.status == "in_progress":
            head = f"{where}: in progress"
        elif self.status == "completed":
            head = f"{where}: completed"
        else:
            assert_never(self.status)
        return "\n".join([head, *(f"  log: {line}" for line in self.logs)])


ProgressCallback = Callable[[QueueUpdate], "Awaitable[None] | None"]
_PROGRESS: ContextVar[ProgressCallback | None] = ContextVar("nemovlm_fal_progress", default=None)


@contextmanager
def report_queue_progress(callback: ProgressCallback | None) -> Iterator[None]:
    """Send the queue updates of fal calls started inside this block to ``callback``
    (an async callback is awaited by the async methods)."""
    token = _PROGRESS.set(callback)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


@dataclass
class _QueueTracker:
    """Turns fal-client's queue events into ``QueueUpdate``s, reporting changes only."""

    model: str
    callback: ProgressCallback | None
    request_id: str | None = None
    cancel: Callable[[str], object] | None = None
    """Cancels a request on fal's queue; set for sync calls, whose submission runs on in
    fal-client's worker thread after a timeout."""
    _last: tuple[str, int | None] | None = None
    _logs_seen: int = 0
    _abandoned: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def on_enqueue(self, request_id: str) -> None:
        with self._lock:
            self.request_id = request_id
            late = self._abandoned
        logger.info("fal %s request %s submitted", self.model, request_id)
        if late and self.cancel is not None:
            # Queued after the caller gave up: nobody will collect it, so stop it now.
            _cancel_quietly(self.cancel, request_id, self.model)

    def abandon(self) -> str | None:
        """The caller stopped waiting; the id of the request queued so far, if any.
        One queued later is cancelled by ``on_enqueue``."""
        with self._lock:
            self._abandoned = True
            return self.request_id

    def on_update(self, status: fal_client.Status) -> None:
        outcome = self.aon_update(status)
        if inspect.iscoroutine(outcome):
            # An async callback cannot run inside a sync call; the log line still did.
            outcome.close()

    def aon_update(self, status: fal_client.Status) -> Awaitable[None] | None:
        update = self._process_status(status)
        if update is None:
            return None
        logger.info("%s", update)
        if self.callback is None:
            return None
        return self.callback(update)

    def _process_status(self, status: fal_client.Status) -> QueueUpdate | None:
        position: int | None = None
        logs: list[dict[str, Any]] = []
        kind: Literal["queued", "in_progress", "completed"]
        if isinstance(status, fal_client.Queued):
            kind, position = "queued", status.position
        elif isinstance(status, fal_client.InProgress):
            kind, logs = "in_progress", status.logs or []
        elif isinstance(status, fal_client.Completed):
            kind, logs = "completed", status.logs or []
        else:
            return None
        # fal returns every log line so far on each poll: report the new ones.
        new = [str(entry.get("message", "")) for entry in logs[self._logs_seen :]]
        self._logs_seen = max(self._logs_seen, len(logs))
        state = (kind, position)
        if state == self._last and not new:
            return None
        self._last = state
        return QueueUpdate(self.model, self.request_id, kind, position, tuple(new))


# --- the backend ---------------------------------------------------------------------------


@dataclass
class _Upload:
    """Media that must go up to fal's storage before the request is submitted."""

    field_name: str
    data: bytes | None = field(repr=False)
    path: Path | None
    mime_type: str
    file_name: str


@dataclass
class FalBackend:
    """One fal app, called through fal-client's queue (``subscribe``).

    Example::

        backend = FalBackend(get_profile("fal-ai/nemotron-diffusion-vlm"),
                             api_key=resolve_fal_key(None))
        reply = backend.complete([Turn("user", [TextPart("What is this?"),
                                               MediaPart("image", url=URL)])],
                                 RequestOptions())
    """

    profile: ModelProfile
    api_key: SecretStr
    timeout: float | None = 300.0
    """Seconds for the whole queued request; on expiry it is cancelled on fal's queue."""
    poll_interval: float = 0.1
    upload_threshold_bytes: int = UPLOAD_THRESHOLD_BYTES
    upload_expires_in: str | int = UPLOAD_EXPIRES_IN
    """Lifetime of uploaded media on fal's storage: never, immediate (about a minute),
    1h, 1d, 7d, 30d, 1y, or seconds."""
    policy: MediaPolicy = field(default_factory=MediaPolicy)
    _client: fal_client.SyncClient | None = field(default=None, init=False, repr=False)
    _aclients: PerLoop[fal_client.AsyncClient] = field(
        default_factory=PerLoop, init=False, repr=False
    )

    def __post_init__(self) -> None:
        if self.timeout is not None and self.timeout <= MIN_TIMEOUT_S:
            raise UnsupportedInputError(
                f"timeout must be more than {MIN_TIMEOUT_S:g} s for fal (got {self.timeout}); "
                "fal-client refuses shorter queue timeouts. Use timeout=None for no limit."
            )
        if self.poll_interval <= 0:
            raise UnsupportedInputError(f"poll_interval must be > 0 (got {self.poll_interval}).")
        try:
            fal_client.StorageSettings(expires_in=self.upload_expires_in)  # type: ignore[arg-type]
        except (ValueError, TypeError) as exc:
            raise UnsupportedInputError(
                f"upload_expires_in={self.upload_expires_in!r} is not a fal storage lifetime: "
                "use never, immediate, 1h, 1d, 7d, 30d, 1y, or a number of seconds."
            ) from exc

    @property
    def _lifecycle(self) -> fal_client.StorageSettings:
        return fal_client.StorageSettings(expires_in=self.upload_expires_in)  # type: ignore[arg-type]

    # --- clients ----------------------------------------------------------------

    @property
    def client(self) -> fal_client.SyncClient:
        if self._client is None:
            self._client = fal_client.SyncClient(key=self.api_key.get_secret_value())
        return self._client

    @property
    def async_client(self) -> fal_client.AsyncClient:
        """The async client of the running event loop: its connections belong to the
        loop, so a model used from several loops (``asyncio.run`` twice) gets one each."""
        return self._aclients.get(
            lambda: fal_client.AsyncClient(key=self.api_key.get_secret_value())
        )

    def __getstate__(self) -> dict[str, Any]:
        # Clients hold sockets and locks: a pickled backend rebuilds them where it lands.
        state = self.__dict__.copy()
        state["_client"] = None
        return state

    # --- calls ------------------------------------------------------------------

    def complete(self, turns: Sequence[Turn], options: RequestOptions) -> Reply:
        return self._complete(turns, options, stream=False)

    async def acomplete(self, turns: Sequence[Turn], options: RequestOptions) -> Reply:
        return await self._acomplete(turns, options, stream=False)

    def stream(self, turns: Sequence[Turn], options: RequestOptions) -> Iterator[Delta]:
        """The whole answer as one delta (fal apps do not stream), reasoning and usage on it."""
        yield _reply_as_delta(self._complete(turns, options, stream=True))

    async def astream(self, turns: Sequence[Turn], options: RequestOptions) -> AsyncIterator[Delta]:
        yield _reply_as_delta(await self._acomplete(turns, options, stream=True))

    def _complete(self, turns: Sequence[Turn], options: RequestOptions, *, stream: bool) -> Reply:
        prepared = prepare(turns, options, self.profile, self.policy, stream=stream)
        arguments, upload = self._map_arguments(prepared, options)
        model = self.profile.model
        client = self.client

        def cancel(request_id: str) -> None:
            client.cancel(model, request_id)

        tracker = _QueueTracker(model, _PROGRESS.get(), cancel=cancel)
        with _converted_errors(model, self.timeout, tracker, self._secrets):
            if upload is not None:
                arguments[upload.field_name] = self._upload(upload)
            try:
                result = client.subscribe(
                    model,
                    arguments,
                    with_logs=True,
                    interval=self.poll_interval,
                    on_enqueue=tracker.on_enqueue,
                    on_queue_update=tracker.on_update,
                    client_timeout=self.timeout,
                )
            except KeyboardInterrupt:
                # The caller stopped waiting: the queued request would run (and cost) on.
                if (request_id := tracker.abandon()) is not None:
                    _cancel_quietly(cancel, request_id, model)
                raise
        return self._process_whole(result, prepared, options, arguments, tracker)

    async def _acomplete(
        self, turns: Sequence[Turn], options: RequestOptions, *, stream: bool
    ) -> Reply:
        prepared = await aprepare(turns, options, self.profile, self.policy, stream=stream)
        arguments, upload = self._map_arguments(prepared, options)
        tracker = _QueueTracker(self.profile.model, _PROGRESS.get())
        client = self.async_client
        with _converted_errors(self.profile.model, self.timeout, tracker, self._secrets):
            if upload is not None:
                arguments[upload.field_name] = await self._aupload(upload)
            result = await _asubscribe(
                client, self.profile.model, arguments, tracker, self.poll_interval, self.timeout
            )
        return self._process_whole(result, prepared, options, arguments, tracker)

    @property
    def _secrets(self) -> tuple[str, ...]:
        return secret_values(api_key=self.api_key)

    def _upload(self, upload: _Upload) -> str:
        with _upload_errors(self.profile.model, upload):
            if upload.path is not None:
                return self.client.upload_file(upload.path, lifecycle=self._lifecycle)
            assert upload.data is not None
            return self.client.upload(
                upload.data, upload.mime_type, upload.file_name, lifecycle=self._lifecycle
            )

    async def _aupload(self, upload: _Upload) -> str:
        with _upload_errors(self.profile.model, upload):
            if upload.path is not None:
                return await self.async_client.upload_file(upload.path, lifecycle=self._lifecycle)
            assert upload.data is not None
            return await self.async_client.upload(
                upload.data, upload.mime_type, upload.file_name, lifecycle=self._lifecycle
            )

    def _process_whole(
        self,
        result: Any,
        prepared: PreparedConversation,
        options: RequestOptions,
        arguments: Mapping[str, Any],
        tracker: _QueueTracker,
    ) -> Reply:
        raw = _process_result(result, self.profile, tracker.request_id, arguments)
        processor = prepared.processor
        reply = assemble_reply([processor.feed(raw), processor.finish()])
        if options.stop:
            reply = _cut_at_stop(reply, options.stop)
        return reply

    # --- out --------------------------------------------------------------------

    def _map_arguments(
        self, prepared: PreparedConversation, options: RequestOptions
    ) -> tuple[dict[str, Any], _Upload | None]:
        profile = self.profile
        prompt, system = _map_prompt(prepared.turns, profile)
        arguments: dict[str, Any] = {"prompt": prompt}
        if system:
            assert profile.system_field is not None
            arguments[profile.system_field] = system
        upload: _Upload | None = None
        media = prepared.images + prepared.videos
        media_field = _media_field(profile)
        if media and media_field:
            url, upload = _plan_media(media[0], media_field, self.upload_threshold_bytes)
            if url is not None:
                arguments[media_field] = url
        arguments.update(prepared.params)
        arguments.update(_map_params(options, profile))
        return arguments, upload


def _map_prompt(turns: list[PreparedTurn], profile: ModelProfile) -> tuple[str, str | None]:
    """The conversation as the app's one prompt (and system prompt, where it has one)."""
    system = "\n\n".join(t.text.strip() for t in turns if t.role == "system" and t.text.strip())
    rest = [t for t in turns if t.role != "system"]
    if len(rest) == 1 and rest[0].role == "user":
        prompt = rest[0].text.strip()
    else:
        # Earlier turns become a transcript the model reads as context.
        labels = {"user": "User", "assistant": "Assistant", "tool": "Tool result"}
        prompt = "\n\n".join(f"{labels[t.role]}: {t.text.strip()}" for t in rest if t.text.strip())
    if system and profile.system_field is None:
        prompt = f"{system}\n\n{prompt}" if prompt else system
        system = ""
    if not prompt:
        raise UnsupportedInputError(
            f"{profile.model} needs a text prompt with the media: add a text part "
            "(your question or instruction) to the message."
        )
    return prompt, system or None


def _plan_media(
    media: PreparedMedia, field_name: str, threshold: int
) -> tuple[str | None, _Upload | None]:
    """The media's URL now, or the upload that will give one."""
    if media.url is not None:
        return media.url, None
    mime = media.mime_type or "application/octet-stream"
    name = f"{media.kind}.{media.format or 'bin'}"
    if media.path is not None:
        # A local file goes up from disk, never as base64 inside the JSON request.
        return None, _Upload(field_name, None, media.path, mime, media.path.name)
    assert media.data is not None
    if len(media.data) > threshold:
        return None, _Upload(field_name, media.data, None, mime, name)
    return media.as_url(), None


def _map_params(options: RequestOptions, profile: ModelProfile) -> dict[str, Any]:
    model = profile.model
    for name in ("seed", "temperature", "top_p"):
        documented = name in profile.sampling_params or name in profile.param_ranges
        if getattr(options, name) is not None and not documented:
            raise UnsupportedInputError(f"{model} on fal takes no {name}; remove {name}.")
    params: dict[str, Any] = {}
    for name in ("max_tokens", "temperature", "top_p"):
        value = getattr(options, name)
        if value is not None:
            params[name] = value
    extra = dict(options.extra)
    schedule = profile.step_schedule
    if schedule is not None:
        max_tokens = options.max_tokens or profile.default_max_tokens or schedule.default_max_tokens
        extra = _map_steps(extra, max_tokens, schedule, profile)
    params.update(extra)
    return params


def _map_steps(
    extra: dict[str, Any], max_tokens: int, schedule: StepSchedule, profile: ModelProfile
) -> dict[str, Any]:
    """Apply the diffusion step rule: an explicit ``num_inference_steps`` (or its alias)
    must be a multiple of the block count, at least one step per block; when omitted,
    the default is rounded up to the nearest such multiple. The range itself was checked
    with the other options (``param_ranges``)."""
    model = profile.model
    block_length = extra.get("block_length", schedule.default_block_length)
    blocks = schedule.blocks(max_tokens, block_length)
    steps = extra.pop("num_inference_steps", None)
    alias = schedule.alias
    aliased = extra.pop(alias, None) if alias else None
    if steps is not None and aliased is not None and steps != aliased:
        raise UnsupportedInputError(
            f"num_inference_steps={steps} and its alias {alias}={aliased} disagree; "
            "set only num_inference_steps."
        )
    name = "num_inference_steps" if steps is not None or alias is None else alias
    steps = steps if steps is not None else aliased
    if steps is None:
        steps = math.ceil(schedule.default_steps / blocks) * blocks
    elif steps < blocks or steps % blocks:
        nearest = max(blocks, math.ceil(steps / blocks) * blocks)
        most = profile.param_ranges.get("num_inference_steps", (1, math.inf))[1]
        hint = f" such as {nearest}" if nearest <= most else ""
        raise UnsupportedInputError(
            f"{name}={steps} does not fit the diffusion schedule of {model}: with "
            f"max_tokens={max_tokens} and block_length={block_length} there are "
            f"{blocks} blocks, so the steps must be a multiple of {blocks} (at least "
            f"{blocks}). Pick a multiple{hint}, or change max_tokens or block_length."
        )
    extra["num_inference_steps"] = steps
    return extra


# --- in --------------------------------------------------------------------------------

_TOKEN_KEYS = frozenset(
    {"prompt_tokens", "completion_tokens", "total_tokens", "input_tokens", "output_tokens"}
)


def _process_result(
    result: Any, profile: ModelProfile, request_id: str | None, arguments: Mapping[str, Any]
) -> Delta:
    model = profile.model
    if not isinstance(result, dict) or not isinstance(result.get("output"), str):
        raise IncompleteResponseError(
            f"fal's result for {model} has no text 'output' (request id {request_id}); "
            "nothing to return."
        )
    raw_usage: dict[str, Any] = result["usage"] if isinstance(result.get("usage"), dict) else {}
    usage = _process_usage(raw_usage) if raw_usage else None
    metadata: dict[str, Any] = {"fal_request_id": request_id}
    if isinstance(result.get("timings"), dict):
        metadata["timings"] = result["timings"]
    diffusion = {k: v for k, v in raw_usage.items() if k not in _TOKEN_KEYS}
    if diffusion:
        metadata["diffusion_usage"] = diffusion
    if usage is not None and profile.price_per_1k_tokens is not None:
        metadata["estimated_cost_usd"] = round(
            usage.total_tokens / 1000 * profile.price_per_1k_tokens, 8
        )
    return Delta(
        text=result["output"],
        finish_reason=_process_finish_reason(result, usage, arguments),
        usage=usage,
        model=model,
        response_id=request_id,
        metadata=metadata,
    )


def _process_usage(raw: Mapping[str, Any]) -> Usage:
    # Omni says input/output_tokens; the diffusion app prompt/completion_tokens.
    inputs = _count(raw.get("input_tokens", raw.get("prompt_tokens", 0)))
    outputs = _count(raw.get("output_tokens", raw.get("completion_tokens", 0)))
    total = _count(raw.get("total_tokens", 0)) or inputs + outputs
    return Usage(inputs, outputs, total)


def _count(value: Any) -> int:
    # Token counts are metadata: an odd one is dropped rather than costing the answer.
    try:
        return int(value or 0)
    except (TypeError, ValueError, OverflowError):
        return 0


def _process_finish_reason(
    result: Mapping[str, Any], usage: Usage | None, arguments: Mapping[str, Any]
) -> str:
    reason = result.get("finish_reason")
    if isinstance(reason, str) and reason:
        return reason
    # Apps without the field (the diffusion VLM): inferred from the token budget.
    limit = arguments.get("max_tokens")
    if usage is not None and isinstance(limit, int) and usage.output_tokens >= limit:
        return "length"
    return "stop"


def _cut_at_stop(reply: Reply, stop: Sequence[str]) -> Reply:
    """fal apps take no stop sequences, so they are applied to the answer here."""
    cut = min((i for s in stop if s and (i := reply.text.find(s)) >= 0), default=-1)
    if cut < 0:
        return reply
    return replace(reply, text=reply.text[:cut], finish_reason="stop")


def _reply_as_delta(reply: Reply) -> Delta:
    return Delta(
        text=reply.text,
        reasoning=reply.reasoning or "",
        tool_calls=list(reply.tool_calls),
        invalid_tool_calls=list(reply.invalid_tool_calls),
        finish_reason=reply.finish_reason,
        usage=reply.usage,
        model=reply.model,
        response_id=reply.response_id,
        metadata=dict(reply.metadata),
    )


async def _asubscribe(
    client: fal_client.AsyncClient,
    model: str,
    arguments: dict[str, Any],
    tracker: _QueueTracker,
    interval: float,
    timeout: float | None,
) -> Any:
    """fal-client's ``AsyncClient.subscribe`` (submit, poll with logs, result, a
    deadline that cancels the queued request), with the submission shielded: a task
    cancelled after fal queued the request but before its answer was read still learns
    the request id, and cancels that request instead of leaving it to run (and bill)."""
    submitting = asyncio.ensure_future(
        client.submit(model, arguments, start_timeout=timeout)  # as subscribe sends it
    )

    async def follow() -> Any:
        handle = await asyncio.shield(submitting)
        tracker.on_enqueue(handle.request_id)
        async for status in handle.iter_events(with_logs=True, interval=interval):
            update = tracker.aon_update(status)
            if update is not None:
                await update
        return await handle.get(interval=interval)

    try:
        return await asyncio.wait_for(follow(), timeout)
    except asyncio.TimeoutError as exc:
        tracker.abandon()
        if not submitting.done():
            submitting.cancel()  # hang up, as fal-client does: fal has not queued it
            raise fal_client.FalClientTimeoutError(timeout=timeout or 0.0) from exc
        request_id = await _acancel_submitted(submitting, client, model)
        raise fal_client.FalClientTimeoutError(
            timeout=timeout or 0.0, request_id=request_id
        ) from exc
    except asyncio.CancelledError:
        # The awaiting task was cancelled (or the stream it fed was closed): cancel the
        # queued request too, or it runs (and costs) on.
        tracker.abandon()
        await _acancel_submitted(submitting, client, model)
        raise


async def _acancel_submitted(
    submitting: asyncio.Future[Any], client: fal_client.AsyncClient, model: str
) -> str | None:
    """Once the submission has answered (waited for through further cancellations),
    cancel the request it queued; its id, or ``None`` when nothing was queued."""
    cancelled = False
    while not submitting.done():
        try:
            await asyncio.shield(submitting)
        except asyncio.CancelledError:
            cancelled = cancelled or not submitting.cancelled()
        except Exception:
            break
    if submitting.cancelled() or submitting.exception() is not None:
        request_id = None
    else:
        request_id = submitting.result().request_id
        await _acancel_quietly(client, model, request_id)
    if cancelled:
        raise asyncio.CancelledError
    return request_id


# --- errors ---------------------------------------------------------------------------------


def _cancel_quietly(cancel: Callable[[str], object], request_id: str, model: str) -> None:
    try:
        cancel(request_id)
    except Exception as exc:  # best effort: the caller's own error matters more
        logger.warning("fal %s request %s could not be cancelled: %s", model, request_id, exc)


async def _acancel_quietly(client: fal_client.AsyncClient, model: str, request_id: str) -> None:
    try:
        await asyncio.shield(client.cancel(model, request_id))
    except Exception as exc:
        logger.warning("fal %s request %s could not be cancelled: %s", model, request_id, exc)


@contextmanager
def _upload_errors(model: str, upload: _Upload) -> Iterator[None]:
    """A failed upload says it was the upload, and where it went (fal-client's storage
    host is a module constant: only ``aim_fal_client`` moves it to the emulator)."""
    try:
        yield
    except (httpx.HTTPError, fal_client.FalClientHTTPError) as exc:
        host = getattr(fal_client.client, "REST_URL", "fal's storage")
        status = getattr(getattr(exc, "response", None), "status_code", None)
        raise RequestError(
            f"Uploading {upload.file_name} ({upload.mime_type}) to fal storage ({host}) "
            f"failed before the request was submitted: {type(exc).__name__}: {exc}",
            status_code=status,
            model=model,
        ) from exc


@contextmanager
@openai_classes
def _converted_errors(
    model: str, timeout: float | None, tracker: _QueueTracker, secrets: tuple[str, ...] = ()
) -> Iterator[None]:
    """fal-client and transport errors -> ``nemovlm.errors``, keeping status, id, message,
    with the key taken out (a server may echo it)."""
    try:
        with _converted(model, timeout, tracker):
            yield
    except BaseException as exc:
        scrub_exception(exc, secrets)
        raise


@contextmanager
def _converted(model: str, timeout: float | None, tracker: _QueueTracker) -> Iterator[None]:
    try:
        yield
    except fal_client.FalClientTimeoutError as exc:
        queued = tracker.abandon()
        if exc.request_id is None and queued is not None and tracker.cancel is not None:
            # Queued just as fal-client gave up, too late for its own cancel.
            _cancel_quietly(tracker.cancel, queued, model)
        request_id = exc.request_id or queued
        if request_id is not None:
            what = f"request id {request_id}; it was cancelled on fal's queue"
        else:
            what = "fal had not acknowledged the request yet, so nothing was cancelled"
            if tracker.cancel is not None:
                what += "; if fal queues it after all, it is cancelled as soon as fal says so"
        raise RequestTimeoutError(
            f"{model} on fal did not finish within timeout={timeout} s ({what}): raise "
            "the model's `timeout` setting, or set it to None to wait as long as it takes."
        ) from exc
    except fal_client.FalClientHTTPError as exc:
        headers = {k.lower(): v for k, v in exc.response_headers.items()}
        cls = RateLimitError if exc.status_code == 429 else RequestError
        raise cls(
            _server_message(exc),
            status_code=exc.status_code,
            request_id=headers.get("x-fal-request-id") or tracker.request_id,
            model=model,
        ) from exc
    except httpx.TimeoutException as exc:
        raise RequestTimeoutError(
            f"An HTTP call to fal for {model} timed out ({type(exc).__name__}); check the "
            "network, or raise the model's `timeout` setting."
        ) from exc
    except httpx.HTTPError as exc:
        raise RequestError(
            f"Could not reach fal for {model}: {type(exc).__name__}: {exc}",
            request_id=tracker.request_id,
            model=model,
        ) from exc


def _server_message(exc: fal_client.FalClientHTTPError) -> str:
    detail: Any = exc.message
    if isinstance(detail, list):
        # FastAPI validation errors: one "field: message" per refused input.
        items = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                items.append(f"{loc}: {item.get('msg', item)}" if loc else str(item.get("msg")))
            else:
                items.append(str(item))
        return "fal refused the input: " + "; ".join(items)
    return str(detail) if detail else f"fal answered HTTP {exc.status_code}"


__all__ = [
    "UPLOAD_THRESHOLD_BYTES",
    "FalBackend",
    "QueueUpdate",
    "report_queue_progress",
    "resolve_fal_key",
]
