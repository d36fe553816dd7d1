"""Non-streamed async NIM calls, sent on the package's own pooled aiohttp session.

Why not through the ``openai`` SDK (``bench/README.md``, scenario 4): at 64 requests in
flight, the SDK's request machinery -- its options model, an httpx request built, its
URL and headers merged for every call, an httpx response wrapped round aiohttp's --
costs as much CPU per request as everything else in a LangChain call together; a
request this module sends costs a fraction of it. ``NIMBackend.acomplete`` uses it when
the user gave no async HTTP client of their own (a user's client is used as it is,
through the SDK). Streams and ``/v1/models`` stay on the SDK: a stream's cost is in its
chunks, not in its one request.

What the SDK did is done the same here:

- **Retries**: the SDK's policy (openai-python ``_base_client``: ``_should_retry``,
  ``_calculate_retry_timeout``; its README, "Retries"): connection errors, timeouts,
  408, 409, 429 and 5xx are retried up to ``max_retries`` times; ``x-should-retry``
  overrides that; the wait is ``Retry-After-Ms`` / ``Retry-After`` (seconds or an HTTP
  date) when it is above 0 and at most two minutes (longer: not retried), else 0.5 s
  doubling per retry up to 8 s, less up to 25% jitter.
- **Timeouts**: ``timeout`` bounds the connect and every read, as the SDK's aiohttp
  transport sets it; ``ReplyBody`` bounds the whole reply, as before.
- **Errors**: the SDK's own exception classes, built as the SDK builds them (a status
  error carries the response, its JSON body and "Error code: N - message"), so
  ``nim_errors.converted_errors`` turns them into this package's errors exactly as it
  does the SDK's.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import functools
import importlib
import json
import logging
import math
import os
import random
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from nemovlm import __version__
from nemovlm.backends.nim_reply import ReplyBody
from nemovlm.errors import openai_status_class

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger(__name__)

_INITIAL_RETRY_DELAY = 0.5
_MAX_RETRY_DELAY = 8.0
_MAX_RETRY_AFTER = 120.0
_CONNECTIONS = 1000
"""The SDK's default pool size (``DEFAULT_CONNECTION_LIMITS``)."""
_KEEPALIVE = 5.0
"""Seconds an idle pooled connection is kept (httpx's default, which the SDK uses)."""


@dataclass(frozen=True)
class Endpoint:
    """What every request of one backend shares: computed once, not per call."""

    url: str
    headers: Mapping[str, str] = field(repr=False)  # the key is in them
    timeout: float | None
    max_retries: int
    proxy: str | None = field(default=None, repr=False)
    """From ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``ALL_PROXY`` unless ``NO_PROXY`` covers
    the host, as the SDK's client reads them."""

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
            "User-Agent": f"nemovlm/{__version__}",
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
        return cls(url, headers, timeout, max_retries, _env_proxy(url))


_PROXY_VARIABLES = ("http", "https", "all", "no")


def _env_proxy(url: str) -> str | None:
    """The proxy for ``url`` from the environment (lower-case names first, as the
    standard library reads them); read per call, as a user may set them at any time."""
    env = os.environ
    values = tuple(
        env.get(f"{name}_proxy") or env.get(f"{name.upper()}_PROXY") for name in _PROXY_VARIABLES
    )
    return _proxy_for(url, values) if any(values[:3]) else None


@functools.lru_cache(maxsize=64)
def _proxy_for(url: str, values: tuple[str | None, ...]) -> str | None:
    proxies = {k: v for k, v in zip(_PROXY_VARIABLES, values, strict=True) if v}
    parts = urlsplit(url)
    # NO_PROXY as the standard library matches it (typeshed lacks this function).
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    if bypass(parts.hostname or "", proxies):
        return None
    return proxies.get(parts.scheme) or proxies.get("all")


def new_session() -> aiohttp.ClientSession:
    """A pooled session for the running loop, trusting the CAs the SDK's client trusts
    (certifi, or ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``)."""
    import aiohttp

    connector = aiohttp.TCPConnector(
        limit=_CONNECTIONS, keepalive_timeout=_KEEPALIVE, ssl=_ssl_context(*_cert_env())
    )
    # Not ``trust_env``: aiohttp would look up netrc and the proxy in a worker thread on
    # every request; the proxy is found once per call instead (``Endpoint.proxy``).
    return aiohttp.ClientSession(connector=connector)


async def close_session(session: aiohttp.ClientSession) -> None:
    await session.close()


def _cert_env() -> tuple[str | None, str | None]:
    return os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")


@functools.lru_cache(maxsize=4)
def _ssl_context(cert_file: str | None, cert_dir: str | None) -> Any:
    # httpx's own context (certifi, or SSL_CERT_FILE / SSL_CERT_DIR): the CAs trusted are
    # those the SDK's client trusts. Cached: loading the bundle costs milliseconds.
    return httpx.create_ssl_context(trust_env=True)


async def apost_json(
    session: aiohttp.ClientSession,
    endpoint: Endpoint,
    body: Mapping[str, Any],
    headers: Mapping[str, str],
    reply: ReplyBody,
) -> Any:
    """POST ``body`` as JSON and return the reply's JSON, retrying as the SDK does.

    Raises the SDK's exceptions (``openai.APIStatusError`` and its per-status classes,
    ``openai.APIConnectionError``, ``openai.APITimeoutError``) and httpx's ``ReadError``
    / ``ReadTimeout`` for a body cut off or stalled, as the SDK on aiohttp does.
    """
    import aiohttp

    data = json.dumps(body, allow_nan=False).encode()
    sent = {**endpoint.headers, **headers} if headers else endpoint.headers
    timeout = aiohttp.ClientTimeout(
        total=None, connect=endpoint.timeout, sock_connect=endpoint.timeout,
        sock_read=endpoint.timeout,
    )  # fmt: skip
    retries = endpoint.max_retries
    for attempt in range(retries + 1):
        left = retries - attempt
        try:
            async with session.post(
                endpoint.url,
                data=data,
                headers=sent,
                timeout=timeout,
                # Followed as the SDK's client follows them; aiohttp drops the key on a
                # redirect to another origin, as httpx does.
                allow_redirects=True,
                proxy=endpoint.proxy,
            ) as response:
                if response.status < 300:
                    return await _read_json(response, reply)
                error = await _status_error(response, endpoint.url, reply)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            if left <= 0:
                raise _transport_error(exc, endpoint.url) from exc
            await _wait(_backoff(retries, left), attempt, retries)
            continue
        wait = _retry_wait(error.response.headers, error.status_code, retries, left)
        if wait is None:
            raise error
        await _wait(wait, attempt, retries)
    raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover


async def _read_json(response: aiohttp.ClientResponse, reply: ReplyBody) -> Any:
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


async def _status_error(response: aiohttp.ClientResponse, url: str, reply: ReplyBody) -> Any:
    """The SDK's error for a non-2xx answer (``_make_status_error_from_response``)."""
    content = await _read_bytes(response, reply)
    http = _sdk_http()
    mirrored = http.Response(
        response.status,
        headers=list(response.raw_headers),
        content=content,
        request=http.Request("POST", url),
    )
    text = content.decode(errors="replace").strip()
    message = f"Error code: {response.status}"
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
    return openai_status_class(response.status)(message, response=mirrored, body=body)


async def _read_bytes(response: aiohttp.ClientResponse, reply: ReplyBody) -> bytes:
    import aiohttp

    pieces = ReplyBody.starting(reply.timeout)
    try:
        pieces.begin()
        async for piece in response.content.iter_chunked(1 << 16):
            pieces.add(piece)
    except (aiohttp.ClientError, asyncio.TimeoutError):
        pass  # the status says what failed; a cut-off error body does not change it
    return b"".join(pieces.pieces)


@functools.cache
def _sdk_http() -> Any:
    """The HTTP library the installed SDK speaks (httpx2 from openai 3, httpx before):
    the errors raised here carry its request and response types, as the SDK's do."""
    import openai

    client_class = openai.DefaultAsyncHttpxClient.__mro__[1]
    return importlib.import_module(client_class.__module__.partition(".")[0])


def _transport_error(exc: BaseException, url: str) -> Exception:
    import openai

    request = _sdk_http().Request("POST", url)
    if isinstance(exc, asyncio.TimeoutError):
        return openai.APITimeoutError(request=request)
    return openai.APIConnectionError(request=request)


def _retry_wait(headers: Mapping[str, str], status: int, retries: int, left: int) -> float | None:
    """Seconds to wait before retrying a status error, or ``None``: do not retry."""
    if left <= 0:
        return None
    after = _retry_after(headers)
    if after is not None and math.isfinite(after) and after > _MAX_RETRY_AFTER:
        return None
    verdict = headers.get("x-should-retry")
    if verdict == "false" or (verdict != "true" and status not in (408, 409, 429) and status < 500):
        return None
    if after is not None and math.isfinite(after) and 0 < after <= _MAX_RETRY_AFTER:
        return after
    return _backoff(retries, left)


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


def _backoff(retries: int, left: int) -> float:
    delay = min(_INITIAL_RETRY_DELAY * 2.0 ** min(retries - left, 1000), _MAX_RETRY_DELAY)
    return delay * (1 - 0.25 * random.random())  # noqa: S311 - jitter, not a secret


async def _wait(seconds: float, attempt: int, retries: int) -> None:
    log.info("Retrying request in %f seconds (retry %i of %s)", seconds, attempt + 1, retries)
    await asyncio.sleep(seconds)
