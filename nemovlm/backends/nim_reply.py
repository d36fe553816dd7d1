"""NIM reply processing: a completion's or a stream chunk's JSON as raw ``Delta``s
(``process_completion``, ``process_chunk``), ``/v1/models`` (``process_models``), the
server's error objects (``process_error``), and the bookkeeping that tells a whole reply
from a cut one (``StreamProgress``, ``ReplyBody``)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from nemovlm.errors import IncompleteResponseError, RateLimitError, RequestError
from nemovlm.messages import Delta, ToolCallChunk, Usage
from nemovlm.pipeline import ReplyProcessor


@dataclass(frozen=True)
class ServedModel:
    """One entry of a server's ``/v1/models``."""

    id: str
    owned_by: str | None = None
    max_model_len: int | None = None
    """The context length the server allows, when it says (vLLM-based NIMs do)."""
    known: bool = False
    """nemovlm has a profile for this id (its wire rules are applied)."""


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


def choice_count(completion: Any) -> int:
    choices = completion.get("choices") if isinstance(completion, Mapping) else None
    return len(choices) if isinstance(choices, list) and choices else 1


def process_completion(completion: Any, model: str, index: int = 0) -> Delta:
    """Choice ``index`` of a whole completion as one raw ``Delta``."""
    if isinstance(completion, Mapping) and completion.get("error"):
        # Some proxies answer 200 with the error object a failed request would carry.
        raise process_error(completion["error"], model)
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


def process_chunk(chunk: Any, model: str = "") -> Delta:
    if isinstance(chunk, Mapping) and chunk.get("error"):
        # vLLM-based servers report a failure mid-stream as ``data: {"error": {...}}``.
        raise process_error(chunk["error"], model)
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


def process_models(listing: Any) -> list[ServedModel]:
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


def process_error(error: Any, model: str) -> RequestError:
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
class StreamProgress:
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


class DeadlinePassed(Exception):
    """A non-streamed body was still arriving when the call's time was up."""


@dataclass
class ReplyBody:
    """A non-streamed reply's bytes, collected against the call's deadline: the SDK's
    ``timeout`` bounds each wait, so a server sending a byte now and then could
    otherwise hold the call for as long as it liked."""

    timeout: float | None
    started: float
    deadline: float | None = None
    pieces: list[bytes] = field(default_factory=list)

    @classmethod
    def starting(cls, timeout: float | None) -> ReplyBody:
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
            raise DeadlinePassed

    def json(self) -> Any:
        return json.loads(b"".join(self.pieces))
