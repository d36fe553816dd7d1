"""NIM error conversion: the ``openai`` SDK's and the transport's errors as
``nemovlm.errors``, with every credential the backend holds taken out."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nemovlm.backends._loops import unreachable
from nemovlm.backends.nim_reply import DeadlinePassed, StreamProgress, process_error
from nemovlm.errors import (
    IncompleteResponseError,
    RateLimitError,
    RequestError,
    RequestTimeoutError,
    http_errors,
    openai_classes,
)
from nemovlm.secrets import scrubbing

if TYPE_CHECKING:
    import openai


_BROKEN_CONNECTION = ("RemoteProtocolError", "ReadError")
_HTTP_TIMEOUTS = ("TimeoutException",)


def converted_errors(
    model: str,
    timeout: float | None,
    stream: StreamProgress | None = None,
    secrets: tuple[str, ...] = (),
) -> AbstractContextManager[None]:
    """SDK and transport errors -> ``nemovlm.errors``, keeping status, id and message,
    with every credential the backend holds taken out (a server may echo the key)."""
    return _Converting(model, timeout, stream, secrets)


@dataclass(slots=True)
class _Converting:
    """``converted_errors``: nothing to do unless an error leaves the block. Three
    generator-based context managers entered around every call cost 25 µs; this
    costs one object (``bench/``, scenario 4)."""

    model: str
    timeout: float | None
    stream: StreamProgress | None
    secrets: tuple[str, ...]

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, error: BaseException | None, trace: object) -> None:
        if error is not None:
            with _converting(self.model, self.timeout, self.stream, self.secrets):
                raise error


@contextmanager
@openai_classes
def _converting(
    model: str, timeout: float | None, stream: StreamProgress | None, secrets: tuple[str, ...]
) -> Iterator[None]:
    with scrubbing(secrets), _converted(model, timeout, stream):
        yield


@contextmanager
def _converted(model: str, timeout: float | None, stream: StreamProgress | None) -> Iterator[None]:
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
    except DeadlinePassed as exc:
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
        raise process_error(exc.body if exc.body is not None else exc.message, model) from exc
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


_TEXT_LIMIT = 500
"""Characters of a non-JSON error body kept in the message (a proxy's HTML page)."""


def _server_message(exc: openai.APIStatusError) -> str:
    """The server's own words: its JSON ``message`` (or FastAPI's ``detail``), else the
    start of a body that is not JSON, else the SDK's "Error code: N"."""
    body = exc.body
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(body.get("message"), str):
            return str(body["message"])
        if body.get("detail"):
            detail = body["detail"]
            return detail if isinstance(detail, str) else json.dumps(detail)[:_TEXT_LIMIT]
    if isinstance(body, str) and body.strip():
        # Not ``exc.message``: before openai 3 the SDK made the whole page its message.
        text = " ".join(body.split())
        return f"Error code: {exc.status_code}: {text[:_TEXT_LIMIT]}"
    return exc.message
