"""The package's own small error hierarchy.

Backends convert client errors (``openai``, ``fal-client``, ``httpx``) into these in
one place at their boundary, keeping status, request id and the server's message.
Input errors are raised before any request leaves the process.

Every error that comes from the server or the transport is *also* an instance of the
``openai`` SDK's class for the same failure (``openai.RateLimitError`` for a 429,
``openai.AuthenticationError`` for a 401, ``openai.APITimeoutError`` for a timeout,
...; ``openai_twin``), so retry and fallback settings written for ``ChatOpenAI`` or
``OpenAILike`` (``with_retry(retry_if_exception_type=(openai.RateLimitError,))``)
keep working. The twin class is made when the error is raised: importing ``openai``
costs more than importing all of this package, and a model object needs none of it.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeVar

_E = TypeVar("_E", bound=BaseException)
_P = ParamSpec("_P")


class NemoVLMError(Exception):
    """Base class of every error this package raises on purpose."""


class UnsupportedInputError(NemoVLMError, ValueError):
    """The request cannot be sent as given; the message says what to change."""


class MissingCredentialsError(NemoVLMError, ValueError):
    """A key the backend needs is not set; the message names the variable."""


class RequestError(NemoVLMError):
    """The server refused or failed the request."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        request_id: str | None = None,
        model: str | None = None,
        code: str | int | None = None,
    ) -> None:
        self.status_code = status_code
        self.request_id = request_id
        self.model = model
        self.server_message = message
        self.code = code
        """The server's own error code, when it sent one (``error.code`` in its JSON)."""
        bits = [f"status {status_code}" if status_code is not None else None]
        if code is not None and code != status_code:
            bits.append(f"code {code}")
        bits.append(f"model {model}" if model else None)
        bits.append(f"request id {request_id}" if request_id else None)
        where = ", ".join(b for b in bits if b)
        # Not ``super()``: in an ``openai_twin`` the next class is the SDK's, whose
        # constructor differs between SDK versions; its fields are copied instead.
        Exception.__init__(self, f"{message} ({where})" if where else message)


class RateLimitError(RequestError):
    """429 after every retry was spent."""


class RequestTimeoutError(NemoVLMError, TimeoutError):
    """No answer in time; the message names the setting to raise."""


class IncompleteResponseError(NemoVLMError):
    """A stream broke off, or a reply lacked what every reply must have."""


@functools.cache
def http_errors(*names: str) -> tuple[type[Exception], ...]:
    """The named exception classes of httpx and, where installed, of httpx2 (the fork
    openai 3.x speaks through), so transport errors are caught whichever client is in
    use. Called in an ``except`` clause, which is evaluated only on an error, so
    importing a module that uses it does not import httpx2."""
    modules: list[Any] = [importlib.import_module("httpx")]
    try:
        modules.append(importlib.import_module("httpx2"))
    except ImportError:
        pass
    return tuple(getattr(module, name) for module in modules for name in names)


# --- the openai SDK's classes ----------------------------------------------------------

# Status -> the SDK's class name, as the SDK picks it (``_make_status_error``).
_STATUS_CLASSES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    409: "ConflictError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
}


def openai_status_class(status: int) -> Any:
    """The ``openai`` SDK's exception class for an HTTP status, as the SDK picks it."""
    import openai

    name = _STATUS_CLASSES.get(status, "InternalServerError" if status >= 500 else "")
    return getattr(openai, name) if name else openai.APIStatusError


def openai_twin(error: _E, source: BaseException | None = None) -> _E:
    """``error``, as an instance of a class that is both ``type(error)`` and the
    ``openai`` SDK's class for the same failure.

    ``source`` is the SDK's own exception when there is one (its fields ``response``,
    ``request``, ``body``, ``code``... are kept). Otherwise (fal, httpx) the SDK class
    follows from ``error``: its ``status_code`` (``openai.APIStatusError`` and its
    per-status subclasses), a timeout (``openai.APITimeoutError``), or any other
    ``RequestError`` (``openai.APIConnectionError``). Our message (``str(error)``,
    also ``.message``), ``status_code``, ``request_id`` and ``model`` stay.
    """
    import openai

    sdk: type[BaseException]
    fields: dict[str, Any] = dict.fromkeys(("request", "body", "code", "param", "type"))
    if isinstance(source, openai.OpenAIError):
        sdk = type(source)
        fields.update(vars(source))
    elif isinstance(error, RequestTimeoutError):
        sdk = openai.APITimeoutError
    elif isinstance(error, RequestError):
        status = getattr(error, "status_code", None)
        if status is None:
            sdk = openai.APIConnectionError
        else:
            sdk = openai_status_class(status)
            response = getattr(source, "response", None)
            fields.update(response=response, request=_request_of(response))
    else:
        return error
    if isinstance(error, sdk):
        return error
    twin = _twin_class(type(error), sdk)
    out = twin.__new__(twin, *error.args)
    out.args = error.args
    out.__dict__.update(fields)
    out.__dict__.update(vars(error))
    out.message = str(error)  # type: ignore[attr-defined]
    return out  # type: ignore[return-value]


def openai_classes(
    convert: Callable[_P, Iterator[None]],
) -> Callable[_P, Iterator[None]]:
    """For a backend's error-converting generator (before ``@contextmanager``): every
    error it raises leaves as its ``openai_twin``, the original error as the cause."""

    @functools.wraps(convert)
    def converted(*args: _P.args, **kwargs: _P.kwargs) -> Iterator[None]:
        try:
            yield from convert(*args, **kwargs)
        except NemoVLMError as error:
            twin = openai_twin(error, error.__cause__)
            if twin is error:
                raise
            raise twin from error.__cause__

    return converted


_TWINS: dict[tuple[type[BaseException], type[BaseException]], type[BaseException]] = {}


def _twin_class(ours: type[BaseException], sdk: type[BaseException]) -> type[BaseException]:
    if issubclass(ours, sdk):
        return ours
    twin = _TWINS.get((ours, sdk))
    if twin is None:
        namespace = {
            "__module__": ours.__module__,
            "__qualname__": ours.__qualname__,
            "__reduce__": _reduce_twin,
        }
        twin = _TWINS.setdefault((ours, sdk), type(ours.__name__, (ours, sdk), namespace))
    return twin


def _request_of(response: Any) -> Any:
    try:
        return response.request if response is not None else None
    except RuntimeError:  # an httpx.Response made without a request
        return None


def _reduce_twin(self: BaseException) -> tuple[Any, ...]:
    # The twin class is made at run time, so pickle (Ray, multiprocessing) cannot find
    # it by name; it is rebuilt from the two classes it joins.
    ours, sdk = type(self).__bases__
    state = {k: v for k, v in vars(self).items() if k not in ("response", "request")}
    return (_rebuild_twin, (ours, sdk, self.args, state))


def _rebuild_twin(
    ours: type[BaseException],
    sdk: type[BaseException],
    args: tuple[Any, ...],
    state: dict[str, Any],
) -> BaseException:
    twin = _twin_class(ours, sdk)
    out = twin.__new__(twin, *args)
    out.args = args
    out.__dict__.update(state)
    return out
