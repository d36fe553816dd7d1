"""fal backend: the neutral conversation over fal's queue API, through ``fal-client``.

Input flow: ``FalBackend.complete/acomplete/stream/astream`` -> ``pipeline.prepare``
(option ranges, one image / one video, the prompt protocol for tools and structured
output, the ``reasoning_mode`` switch, media checks) -> ``fal_arguments.map_arguments``:
``_map_prompt`` (the conversation rendered into one prompt; system text to
``system_prompt`` where the app has one), ``_map_params`` (``_map_steps``: the
diffusion step rule) and ``_plan_media`` (URLs pass through, small bytes go inline as a
data URL, large bytes and local files are uploaded with fal-client's ``upload``) ->
``fal_client.SyncClient.subscribe`` or, async, ``fal_queue.asubscribe`` (submit, poll with
logs, result; the submission shielded so a cancelled task still cancels what it queued).

Output flow: the result dict -> ``fal_result.process_result`` (one raw ``Delta``: output,
finish reason, usage, metadata with the fal request id, timings, diffusion usage and
an estimated cost) -> ``ReplyProcessor`` (reasoning split from ``<think>`` tags,
prompt-protocol tool calls) -> ``Reply``; ``stream`` yields that reply as one delta,
since fal answers whole.

Errors from fal-client are converted once, in ``fal_queue.converted_errors``. Queue progress
(position, runner logs) is logged on the ``nemovlm.backends.fal`` logger at INFO and
passed to the callback installed with ``report_queue_progress`` (the LangChain adapter
routes it to callbacks).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import fal_client
from pydantic import SecretStr

from nemovlm.backends._loops import PerLoop
from nemovlm.backends.fal_arguments import Upload, map_arguments
from nemovlm.backends.fal_queue import (
    PROGRESS,
    ProgressCallback,
    QueueTracker,
    QueueUpdate,
    asubscribe,
    cancel_quietly,
    converted_errors,
    report_queue_progress,
    upload_errors,
)
from nemovlm.backends.fal_result import cut_at_stop, process_result, reply_as_delta
from nemovlm.errors import (
    MissingCredentialsError,
    UnsupportedInputError,
)
from nemovlm.media import MediaPolicy
from nemovlm.messages import Delta, Reply, Turn
from nemovlm.options import RequestOptions
from nemovlm.pipeline import PreparedConversation, aprepare, assemble_reply, prepare
from nemovlm.profiles import ModelProfile
from nemovlm.secrets import secret_values

UPLOAD_THRESHOLD_BYTES = 1_000_000
"""Media bytes above this go up with ``fal_client.upload`` instead of inline base64."""
UPLOAD_EXPIRES_IN = "1h"
"""How long fal's storage keeps an uploaded medium (fal-client's ``StorageSettings``):
long enough for the queue wait and the run, short enough not to keep a user's photo."""
MIN_TIMEOUT_S = 1.0  # fal-client refuses a server-side start timeout of 1 s or less


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
        yield reply_as_delta(self._complete(turns, options, stream=True))

    async def astream(self, turns: Sequence[Turn], options: RequestOptions) -> AsyncIterator[Delta]:
        yield reply_as_delta(await self._acomplete(turns, options, stream=True))

    def _complete(self, turns: Sequence[Turn], options: RequestOptions, *, stream: bool) -> Reply:
        prepared = prepare(turns, options, self.profile, self.policy, stream=stream)
        arguments, upload = map_arguments(
            self.profile, prepared, options, self.upload_threshold_bytes
        )
        model = self.profile.model
        client = self.client

        def cancel(request_id: str) -> None:
            client.cancel(model, request_id)

        tracker = QueueTracker(model, PROGRESS.get(), cancel=cancel)
        with converted_errors(model, self.timeout, tracker, self._secrets):
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
            except BaseException:
                # The caller stopped waiting (Ctrl-C), a queue-update callback raised, or
                # polling failed: the queued request would run (and cost) on.
                if (request_id := tracker.abandon()) is not None:
                    cancel_quietly(cancel, request_id, model)
                raise
        return self._process_whole(result, prepared, options, arguments, tracker)

    async def _acomplete(
        self, turns: Sequence[Turn], options: RequestOptions, *, stream: bool
    ) -> Reply:
        prepared = await aprepare(turns, options, self.profile, self.policy, stream=stream)
        arguments, upload = map_arguments(
            self.profile, prepared, options, self.upload_threshold_bytes
        )
        tracker = QueueTracker(self.profile.model, PROGRESS.get())
        client = self.async_client
        with converted_errors(self.profile.model, self.timeout, tracker, self._secrets):
            if upload is not None:
                arguments[upload.field_name] = await self._aupload(upload)
            result = await asubscribe(
                client, self.profile.model, arguments, tracker, self.poll_interval, self.timeout
            )
        return self._process_whole(result, prepared, options, arguments, tracker)

    @property
    def _secrets(self) -> tuple[str, ...]:
        return secret_values(api_key=self.api_key)

    def _upload(self, upload: Upload) -> str:
        with upload_errors(self.profile.model, upload):
            if upload.path is not None:
                return self.client.upload_file(upload.path, lifecycle=self._lifecycle)
            assert upload.data is not None
            return self.client.upload(
                upload.data, upload.mime_type, upload.file_name, lifecycle=self._lifecycle
            )

    async def _aupload(self, upload: Upload) -> str:
        with upload_errors(self.profile.model, upload):
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
        tracker: QueueTracker,
    ) -> Reply:
        raw = process_result(result, self.profile, tracker.request_id, arguments)
        processor = prepared.processor
        reply = assemble_reply([processor.feed(raw), processor.finish()])
        if options.stop:
            reply = cut_at_stop(reply, options.stop)
        return reply


__all__ = [
    "UPLOAD_EXPIRES_IN",
    "UPLOAD_THRESHOLD_BYTES",
    "FalBackend",
    "ProgressCallback",
    "QueueUpdate",
    "process_result",
    "report_queue_progress",
    "resolve_fal_key",
    "with_diffusion_settings",
]
