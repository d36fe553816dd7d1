"""fal queue tracking and errors: queue progress (``QueueUpdate``,
``report_queue_progress``, ``QueueTracker``), the async subscribe whose submission is
shielded so a cancelled task still cancels what it queued (``asubscribe``), best-effort
cancelling, and fal-client's and the transport's errors as ``nemovlm.errors`` with the
key taken out (``converted_errors``, ``upload_errors``)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

import fal_client
import httpx
from typing_extensions import assert_never

from nemovlm.backends.fal_arguments import Upload
from nemovlm.errors import RateLimitError, RequestError, RequestTimeoutError, openai_classes
from nemovlm.secrets import scrubbing

# The backend's documented logger (``nemovlm.backends.fal``), wherever the code lives.
logger = logging.getLogger("nemovlm.backends.fal")


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
PROGRESS: ContextVar[ProgressCallback | None] = ContextVar("nemovlm_fal_progress", default=None)


@contextmanager
def report_queue_progress(callback: ProgressCallback | None) -> Iterator[None]:
    """Send the queue updates of fal calls started inside this block to ``callback``
    (an async callback is awaited by the async methods)."""
    token = PROGRESS.set(callback)
    try:
        yield
    finally:
        PROGRESS.reset(token)


@dataclass
class QueueTracker:
    """Turns fal-client's queue events into ``QueueUpdate``s, reporting changes only."""

    model: str
    callback: ProgressCallback | None
    request_id: str | None = None
    cancel: Callable[[str], object] | None = None
    """Cancels a request on fal's queue; set for sync calls, whose submission runs on in
    fal-client's worker thread after a timeout."""
    late_cancel: bool = False
    """Set by async calls that left a submission to be cancelled once fal answers it."""
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
            cancel_quietly(self.cancel, request_id, self.model)

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


async def asubscribe(
    client: fal_client.AsyncClient,
    model: str,
    arguments: dict[str, Any],
    tracker: QueueTracker,
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
            # fal may have queued it and not answered yet (hanging up, as fal-client
            # does, would leave it to run and bill): the answer is awaited in the
            # background and what it queued is cancelled.
            tracker.late_cancel = True
            task = asyncio.ensure_future(_acancel_when_queued(submitting, client, model))
            _LATE_CANCELS.add(task)
            task.add_done_callback(_LATE_CANCELS.discard)
            raise fal_client.FalClientTimeoutError(timeout=timeout or 0.0) from exc
        request_id = await _acancel_submitted(submitting, client, model)
        raise fal_client.FalClientTimeoutError(
            timeout=timeout or 0.0, request_id=request_id
        ) from exc
    except BaseException:
        # The awaiting task was cancelled (or the stream it fed was closed), a
        # queue-update callback raised, or polling failed: cancel the queued request
        # too, or it runs (and costs) on.
        tracker.abandon()
        await _acancel_submitted(submitting, client, model)
        raise


_LATE_CANCELS: set[asyncio.Future[None]] = set()
"""Background cancels of submissions fal had not answered at a timeout (held here: the
loop keeps only weak references to tasks)."""


async def _acancel_when_queued(
    submitting: asyncio.Future[Any], client: fal_client.AsyncClient, model: str
) -> None:
    """Wait for fal's answer to a submission the caller gave up on, and cancel the
    request it queued. If the loop shuts down first, awaiting the submission hangs up
    on it (fal-client's own behaviour): nothing more can be done then."""
    try:
        handle = await submitting
    except Exception:  # the submission failed: nothing was queued
        return
    logger.info(
        "fal %s request %s queued after its timeout; cancelling it", model, handle.request_id
    )
    await _acancel_quietly(client, model, handle.request_id)


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


def cancel_quietly(cancel: Callable[[str], object], request_id: str, model: str) -> None:
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
def upload_errors(model: str, upload: Upload) -> Iterator[None]:
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
def converted_errors(
    model: str, timeout: float | None, tracker: QueueTracker, secrets: tuple[str, ...] = ()
) -> Iterator[None]:
    """fal-client and transport errors -> ``nemovlm.errors``, keeping status, id, message,
    with the key taken out (a server may echo it)."""
    with scrubbing(secrets), _converted(model, timeout, tracker):
        yield


@contextmanager
def _converted(model: str, timeout: float | None, tracker: QueueTracker) -> Iterator[None]:
    try:
        yield
    except fal_client.FalClientTimeoutError as exc:
        queued = tracker.abandon()
        if exc.request_id is None and queued is not None and tracker.cancel is not None:
            # Queued just as fal-client gave up, too late for its own cancel.
            cancel_quietly(tracker.cancel, queued, model)
        request_id = exc.request_id or queued
        if request_id is not None:
            what = f"request id {request_id}; it was cancelled on fal's queue"
        else:
            what = "fal had not acknowledged the request yet, so nothing was cancelled"
            if tracker.cancel is not None:
                what += "; if fal queues it after all, it is cancelled as soon as fal says so"
            elif tracker.late_cancel:
                what += (
                    "; if fal queues it after all, it is cancelled as soon as fal says so, "
                    "provided this event loop is still running then"
                )
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
