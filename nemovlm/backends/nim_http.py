"""Whole (non-streamed) NIM replies, sent below the ``openai`` SDK: sync on the SDK
client's own httpx client (``post_json``), async on a pooled aiohttp session of the
package's own (``apost_json``).

Why not through the SDK (``bench/README.md``, scenario 4): at 64 requests in flight,
the SDK's request machinery -- its options model, an httpx request built, its URL and
headers merged for every call, an httpx response wrapped round aiohttp's -- cost as
much CPU per request as everything else in a LangChain call together. A user's own
``http_client`` carries the sync requests as it is; with a user's own async client,
``NIMBackend.acomplete`` goes through the SDK on it. Streams and ``/v1/models`` stay
on the SDK: a stream's cost is in its chunks, not in its one request.

What the SDK did is done the same here:

- **Retries**: the SDK's policy (openai-python ``_base_client``: ``_should_retry``,
  ``_calculate_retry_timeout``; its README, "Retries"): connection errors, timeouts,
  408, 409, 429 and 5xx are retried up to ``max_retries`` times; ``x-should-retry``
  overrides that; the wait is ``Retry-After-Ms`` / ``Retry-After`` (seconds or an HTTP
  date) when it is above 0 and at most two minutes (longer: not retried), else 0.5 s
  doubling per retry up to 8 s, less up to 25% jitter.
- **Timeouts**: ``timeout`` bounds the connect and every read, as the SDK sets it on
  httpx and on its aiohttp transport; ``ReplyBody`` bounds the whole reply.
- **Errors**: the SDK's own exception classes, built as the SDK builds them (a status
  error carries the response, its JSON body and "Error code: N - message"), so
  ``nim_errors.converted_errors`` turns them into this package's errors exactly as it
  does the SDK's.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import email.utils
import functools
import importlib
import json
import logging
import math
import os
import random
import ssl
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx
import pydantic

from nemovlm import __version__
from nemovlm.backends.nim_reply import ReplyBody
from nemovlm.errors import UnsupportedInputError, http_errors, openai_status_class
from nemovlm.secrets import redact_url

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger(__name__)

USER_AGENT = f"nemovlm/{__version__}"
"""Every NIM request's ``User-Agent`` (streams through the SDK too), unless
``default_headers`` names another."""
_INITIAL_RETRY_DELAY = 0.5
_MAX_RETRY_DELAY = 8.0
_MAX_RETRY_AFTER = 120.0
_CONNECTIONS = 1000
"""The SDK's default pool size (``DEFAULT_CONNECTION_LIMITS``)."""
_KEEPALIVE = 5.0
"""Seconds an idle pooled connection is kept (httpx's default, which the SDK uses)."""


@dataclass(frozen=True)
class Endpoint:
    """Where a backend's whole replies go, with what headers, timeout and retries; made
    from the backend's settings at each call (a few µs)."""

    url: str
    headers: Mapping[str, str] = field(repr=False)  # the key is in them
    timeout: float | None
    max_retries: int

    @classmethod
    def of(
        cls,
        base_url: str,
        path: str,
        *,
        api_key: str,
        default_headers: Mapping[str, str] | None,
        timeout: float | None,
        max_retries: int,
    ) -> Endpoint:
        headers = {
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "Authorization": f"Bearer {api_key}",
            **(default_headers or {}),
        }
        url = base_url.rstrip("/") + path
        parts = urlsplit(url)
        if parts.username is not None or parts.password is not None:
            # Credentials in the URL are sent as Basic auth in place of the key, as the
            # SDK's httpx client sends them; aiohttp refuses both at once.
            pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
            url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        return cls(url, headers, timeout, max_retries)


@dataclass
class Pool:
    """One event loop's connections to one server, and the proxy they go through."""

    session: aiohttp.ClientSession
    proxy: str | None
    """From ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``ALL_PROXY`` unless ``NO_PROXY`` covers
    the host: read when the pool is made, as httpx reads them when a client is made."""


def new_pool(url: str) -> Pool:
    """A pooled session for the running loop, trusting the CAs the SDK's client trusts
    (certifi, or ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``)."""
    import aiohttp

    proxy = _env_proxy(url)
    if proxy is not None and urlsplit(proxy).scheme not in ("http", "https"):
        raise UnsupportedInputError(
            f"The environment names the proxy {redact_url(proxy)} for {redact_url(url)}, "
            "which async calls cannot use (only http:// and https:// proxies). Pass "
            "http_async_client=httpx.AsyncClient(proxy=...) (with httpx[socks] for a SOCKS "
            "proxy), or set NO_PROXY for this host."
        )
    connector = aiohttp.TCPConnector(
        limit=_CONNECTIONS, keepalive_timeout=_KEEPALIVE, ssl=shared_ssl_context()
    )
    # Not ``trust_env``: aiohttp would look up netrc and the proxy in a worker thread on
    # every request; the proxy is looked up once, here.
    return Pool(aiohttp.ClientSession(connector=connector), proxy)


async def close_pool(pool: Pool) -> None:
    await pool.session.close()


_PROXY_VARIABLES = ("http", "https", "all", "no")


def _env_proxy(url: str) -> str | None:
    """The proxy for ``url`` from the environment, lower-case names first, as the
    standard library (and httpx through it) reads them."""
    env = os.environ
    proxies = {}
    for name in _PROXY_VARIABLES:
        value = env.get(f"{name}_proxy") or env.get(f"{name.upper()}_PROXY")
        if value:
            proxies[name] = value
    parts = urlsplit(url)
    # NO_PROXY as the standard library matches it (typeshed lacks this function).
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    if not proxies or bypass(parts.hostname or "", proxies):
        return None
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    # ``host:port`` is an http proxy, as httpx reads it (``get_environment_proxies``).
    return proxy if proxy is None or "://" in proxy else f"http://{proxy}"


def shared_ssl_context() -> ssl.SSLContext:
    """One TLS context for every client the package makes (the CAs httpx trusts:
    certifi, or ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``, as they are set now). Building
    one loads the CA bundle, about 28 ms: once, not per model and per event loop."""
    return _ssl_context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@functools.lru_cache(maxsize=4)
def _ssl_context(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    # Keyed by the variables, so a changed SSL_CERT_FILE gets its own context.
    return httpx.create_ssl_context(trust_env=True)


def post_json(
    client: Any,
    endpoint: Endpoint,
    body: Mapping[str, Any],
    headers: Mapping[str, str],
    reply: ReplyBody,
) -> Any:
    """``apost_json`` for sync calls, on the SDK client's own httpx client (the user's
    ``http_client`` when they gave one), which brings its proxies, TLS and pool."""
    request = client.build_request(
        "POST", endpoint.url, content=_dumps(body), headers=_headers(endpoint, headers),
        timeout=endpoint.timeout,
    )  # fmt: skip
    retries = endpoint.max_retries
    for attempt in range(retries + 1):
        try:
            # Redirects as the client follows them, as the SDK sends: its own client
            # follows them (``DefaultHttpxClient``), a user's as they set it.
            response = client.send(request, stream=True)
        except Exception as exc:  # noqa: BLE001 - as the SDK: no answer is its connection error
            # A redirect loop or a user's event hook failing too, not only the transport.
            time.sleep(_pause_after_failure(exc, endpoint.url, attempt, retries))
            continue
        try:
            if response.status_code < 300:
                # Read errors (a body cut off, a stall) are the HTTP library's, as in
                # the SDK: ``converted_errors`` reports them as a broken reply.
                reply.begin()
                for piece in response.iter_bytes():
                    reply.add(piece)
                return reply.json()
            error = _status_error(
                response.status_code, response.headers.raw, _read_error_body(response, reply),
                endpoint.url,
            )  # fmt: skip
        finally:
            response.close()
        time.sleep(_pause_after_status(error, attempt, retries))
    raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover


async def apost_json(
    pool: Pool,
    endpoint: Endpoint,
    body: Mapping[str, Any],
    headers: Mapping[str, str],
    reply: ReplyBody,
) -> Any:
    """POST ``body`` as JSON and return the reply's JSON, retrying as the SDK does.

    Raises the SDK's exceptions (``openai.APIStatusError`` and its per-status classes,
    ``openai.APIConnectionError``, ``openai.APITimeoutError``) and its HTTP library's
    ``ReadError`` / ``ReadTimeout`` for a body cut off or stalled, as the SDK does.
    """
    import aiohttp

    data = _dumps(body)
    sent = _headers(endpoint, headers)
    timeout = aiohttp.ClientTimeout(
        total=None, connect=endpoint.timeout, sock_connect=endpoint.timeout,
        sock_read=endpoint.timeout,
    )  # fmt: skip
    retries = endpoint.max_retries
    for attempt in range(retries + 1):
        try:
            async with pool.session.post(
                endpoint.url,
                data=data,
                headers=sent,
                timeout=timeout,
                # Followed as the SDK's client follows them; aiohttp drops the key on a
                # redirect to another origin, as httpx does.
                allow_redirects=True,
                proxy=pool.proxy,
            ) as response:
                if response.status < 300:
                    return await _aread_json(response, reply)
                content = await _aread_error_body(response, reply)
                error = _status_error(response.status, response.raw_headers, content, endpoint.url)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            await asyncio.sleep(_pause_after_failure(exc, endpoint.url, attempt, retries))
            continue
        await asyncio.sleep(_pause_after_status(error, attempt, retries))
    raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover


def _dumps(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, allow_nan=False, default=_json_default).encode()


def _json_default(value: Any) -> Any:
    """What the SDK's JSON encoder (``openai._utils._json``) also writes: a datetime as
    ISO text, a pydantic model as its JSON (``extra_body`` may hold either)."""
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json", exclude_unset=True, by_alias=True)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _headers(endpoint: Endpoint, headers: Mapping[str, str]) -> Mapping[str, str]:
    return {**endpoint.headers, **headers} if headers else endpoint.headers


async def _aread_json(response: aiohttp.ClientResponse, reply: ReplyBody) -> Any:
    import aiohttp

    reply.begin()
    try:
        async for piece in response.content.iter_chunked(1 << 16):
            reply.add(piece)
    except asyncio.TimeoutError as exc:
        raise _sdk_http().ReadTimeout(str(exc) or "the reply stalled") from exc
    except aiohttp.ClientError as exc:
        raise _sdk_http().ReadError(str(exc) or type(exc).__name__) from exc
    return reply.json()


def _status_error(status: int, raw_headers: Any, content: bytes, url: str) -> Any:
    """The SDK's error for a non-2xx answer, made as its
    ``_make_status_error_from_response`` makes it."""
    http = _sdk_http()
    mirrored = http.Response(
        status, headers=list(raw_headers), content=content, request=http.Request("POST", url)
    )
    text = content.decode(errors="replace").strip()
    message = f"Error code: {status}"
    body: Any = text
    try:
        body = json.loads(text)
    except ValueError:
        pass
    else:
        error = body.get("error", body) if isinstance(body, dict) else None
        detail = error.get("message") if isinstance(error, dict) else None
        if isinstance(detail, str) and detail:
            message += f" - {detail}"
    # The SDK's error holds the server's error object, not the envelope round it, so
    # its ``code``, ``type`` and ``param`` are the server's (``_make_status_error``).
    data = body.get("error", body) if isinstance(body, dict) else body
    return openai_status_class(status)(message, response=mirrored, body=data)


def _read_error_body(response: Any, reply: ReplyBody) -> bytes:
    pieces = ReplyBody.starting(reply.timeout)
    pieces.begin()
    try:
        for piece in response.iter_bytes():
            pieces.add(piece)
    except _sdk_transport_errors():
        pass  # the status says what failed; a cut-off error body does not change it
    return b"".join(pieces.pieces)


async def _aread_error_body(response: aiohttp.ClientResponse, reply: ReplyBody) -> bytes:
    import aiohttp

    pieces = ReplyBody.starting(reply.timeout)
    pieces.begin()
    try:
        async for piece in response.content.iter_chunked(1 << 16):
            pieces.add(piece)
    except (aiohttp.ClientError, asyncio.TimeoutError):
        pass  # the status says what failed; a cut-off error body does not change it
    return b"".join(pieces.pieces)


def _sdk_transport_errors() -> tuple[type[Exception], ...]:
    """Every transport error of httpx and httpx2 (which one a client raises depends on
    the SDK and on the client a user gave)."""
    return http_errors("TransportError")


@functools.cache
def _sdk_http() -> Any:
    """The HTTP library the installed SDK speaks (httpx2 from openai 3, httpx before):
    the errors raised here carry its request and response types, as the SDK's do."""
    import openai

    client_class = openai.DefaultAsyncHttpxClient.__mro__[1]
    return importlib.import_module(client_class.__module__.partition(".")[0])


def _transport_error(exc: BaseException, url: str) -> Exception:
    """The SDK's error for a request that got no answer: a timeout, or any other failure."""
    import openai

    request = _sdk_http().Request("POST", url)
    if isinstance(exc, (asyncio.TimeoutError, *http_errors("TimeoutException"))):
        return openai.APITimeoutError(request=request)
    return openai.APIConnectionError(request=request)


def _pause_after_failure(exc: BaseException, url: str, attempt: int, retries: int) -> float:
    """Seconds to wait before retrying a request that got no answer; the SDK's error
    for it when no retry is left. Shared by the sync and async loops."""
    if attempt >= retries:
        raise _transport_error(exc, url) from exc
    return _logged(_backoff(attempt), attempt, retries)


def _pause_after_status(error: Any, attempt: int, retries: int) -> float:
    """Seconds to wait before retrying after a status error; ``error`` itself when the
    SDK's policy does not retry it or no retry is left."""
    wait = _retry_wait(error.response.headers, error.status_code, attempt, retries)
    if wait is None:
        raise error
    return _logged(wait, attempt, retries)


def _retry_wait(
    headers: Mapping[str, str], status: int, attempt: int, retries: int
) -> float | None:
    """Seconds to wait before retrying a status error, or ``None``: do not retry."""
    if attempt >= retries:
        return None
    after = _retry_after(headers)
    if after is not None and math.isfinite(after) and after > _MAX_RETRY_AFTER:
        return None
    verdict = headers.get("x-should-retry")
    if verdict == "false" or (verdict != "true" and status not in (408, 409, 429) and status < 500):
        return None
    if after is not None and math.isfinite(after) and 0 < after <= _MAX_RETRY_AFTER:
        return after
    return _backoff(attempt)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    for name, divisor in (("retry-after-ms", 1000), ("retry-after", 1)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return float(value) / divisor
        except ValueError:
            continue
    value = headers.get("retry-after")
    try:
        date = email.utils.parsedate_tz(value) if value else None
        return None if date is None else float(email.utils.mktime_tz(date) - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


def _backoff(attempt: int) -> float:
    """0.5 s doubling with each retry already made, at most 8 s, less up to 25%."""
    delay = min(_INITIAL_RETRY_DELAY * 2.0 ** min(attempt, 1000), _MAX_RETRY_DELAY)
    return delay * (1 - 0.25 * random.random())  # noqa: S311 - jitter, not a secret


def _logged(seconds: float, attempt: int, retries: int) -> float:
    # In openai 3.x's words, on this module's logger (``nemovlm.backends.nim_http``):
    # whole replies are retried here, not by the SDK, so its ``OPENAI_LOG`` shows none.
    log.info("Retrying request in %f seconds (retry %i of %s)", seconds, attempt + 1, retries)
    return seconds
