"""The one fetch the client makes for media itself: an http(s) image it must convert.

The URL came from message content, which may come from a tool or a web page, so it
must not make the client reach what only the client can reach. ``fetch_remote`` ->
``_fetch`` (sync, with ``MediaPolicy.http_client`` or a short-lived client, in a
thread the caller stops waiting for at the deadline) or ``_afetch`` (async calls whose
policy has an ``async_http_client``, on the caller's loop) -> per hop: ``check_url``
(http(s) only; every address the host resolves to must be public unless
``MediaPolicy.allowed_hosts`` allows it; ``refused_reason`` classifies one address) ->
one GET that does not follow redirects (with our own client, connected to the very
address just checked; ``_hop_request``: from the first hop off the URL's origin on,
without the user's client credentials) -> ``_process_response`` (a redirect goes round
again, at most ``MAX_REDIRECTS`` hops) -> the body, read against ``max_remote_bytes``
and the one deadline ``remote_timeout`` for the whole fetch."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from nemovlm.errors import UnsupportedInputError, http_errors
from nemovlm.media import worker
from nemovlm.media.sources import MediaPolicy
from nemovlm.messages import MediaPart

MAX_REDIRECTS = 5
"""Redirects followed per fetch; each hop's host is checked like the first."""

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CREDENTIAL_HEADERS = ("Authorization", "Proxy-Authorization", "Cookie")
"""What a user's client adds that must not follow a redirect to another origin (as
httpx's own redirects drop ``Authorization``); its ``auth=`` is left off too."""
_DEFAULT_PORTS = {"http": 80, "https": 443}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def refused_reason(address: IPAddress) -> str | None:
    """Why the client must not fetch from ``address`` unasked ("loopback", "private",
    "link-local", ...), or ``None`` for a public address. An IPv4 address carried
    inside IPv6 (mapped, 6to4, NAT64) is judged as the IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return refused_reason(embedded)
    for reason, hit in (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
        # Shared (carrier NAT) space, documentation ranges and the like.
        ("non-public", not address.is_global),
    ):
        if hit:
            return reason
    return None


@dataclass(frozen=True)
class CheckedHop:
    """A URL that passed ``check_url``: its host and the address the check approved."""

    url: str
    host: str
    address: IPAddress


def check_url(url: str, policy: MediaPolicy, part: MediaPart, hop: int = 0) -> CheckedHop:
    """Refuse ``url`` unless it is http(s) and every address its host resolves to is
    public or allowed by ``policy.allowed_hosts`` (a host name, an address or a network)."""
    where = f" (redirected to {url})" if hop else ""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsupportedInputError(
            f"Fetching the {part.describe()} failed: the URL{where} is malformed ({exc})."
        ) from exc
    if parts.scheme.lower() not in ("http", "https"):
        raise UnsupportedInputError(
            f"Fetching the {part.describe()} failed: the server redirected to {url!r}, "
            "which is not an http(s) URL; only http(s) is fetched."
        )
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UnsupportedInputError(
            f"Fetching the {part.describe()} failed: the URL{where} has no host."
        )
    addresses = _resolve(host, port or (443 if parts.scheme.lower() == "https" else 80), part)
    allowed_names, allowed_nets = _allow_list(policy.allowed_hosts)
    if host.lower() not in allowed_names:
        for address in addresses:
            reason = refused_reason(address)
            if reason and not any(address in net for net in allowed_nets):
                shown = host if host == str(address) else f"{host} (which resolves to {address})"
                raise UnsupportedInputError(
                    f"Fetching the {part.describe()}{where} was refused: {shown} is a "
                    f"{reason} address. Media URLs in message content may come from a tool "
                    "or a web page, so the client fetches only from public addresses. If "
                    "you trust this host, allow it with MediaPolicy.allowed_hosts "
                    "(allowed_media_hosts on the chat models), or send the image's bytes."
                )
    # Prefer IPv4: one address is dialled, with no fallback, and IPv6 is often unrouted.
    address = min(addresses, key=lambda a: a.version)
    return CheckedHop(url=url, host=host, address=address)


def _resolve(host: str, port: int, part: MediaPart) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise UnsupportedInputError(
            f"Fetching the {part.describe()} failed: cannot resolve the host {host!r} ({exc}); "
            "check the URL or send the image's bytes."
        ) from exc
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        # A scoped IPv6 address comes back as "fe80::1%eth0".
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UnsupportedInputError(
            f"Fetching the {part.describe()} failed: the host {host!r} has no address."
        )
    return addresses


@functools.lru_cache(maxsize=32)
def _allow_list(
    entries: tuple[str, ...],
) -> tuple[frozenset[str], tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]]:
    names: set[str] = set()
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for entry in entries:
        text = entry.strip().strip("[]").lower()
        try:
            nets.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            names.add(text.rstrip("."))
    return frozenset(names), tuple(nets)


def fetch_remote(url: str, policy: MediaPolicy, part: MediaPart) -> bytes:
    """The bytes at an http(s) URL the client must convert, fetched as the module
    docstring says. Every failure is ``UnsupportedInputError`` naming what to change."""
    deadline = time.monotonic() + policy.remote_timeout
    if policy.async_http_client is not None and worker.callers_loop() is not None:
        return worker.on_callers_loop(_afetch(url, policy, part, deadline))
    try:
        return _within_deadline(lambda stop: _fetch(url, policy, part, deadline, stop), deadline)
    except _Deadline as exc:
        raise _timed_out(part, policy) from exc


def _within_deadline(fetch: Callable[[threading.Event], bytes], deadline: float) -> bytes:
    """``fetch`` in a thread the caller waits for until the deadline (or its cancellation)
    and no longer: a server trickling bytes, or one that never answers, cannot hold the
    call. Left behind, the fetch stops at its next chunk or at its own read timeout."""
    stop = threading.Event()
    done = threading.Event()
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["data"] = fetch(stop)
        except BaseException as exc:  # handed to the waiting caller, raised there
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name="nemovlm-media-fetch", daemon=True).start()
    try:
        while not done.wait(max(0.0, min(0.05, deadline - time.monotonic()))):
            worker.check_cancelled()
            if time.monotonic() >= deadline:
                raise _Deadline
        worker.check_cancelled()  # done just as the call was cancelled: still cancelled
    except BaseException:
        stop.set()
        raise
    if "error" in outcome:
        raise outcome["error"]
    data: bytes = outcome["data"]
    return data


class _Deadline(Exception):
    """The whole fetch ran out of ``remote_timeout``; becomes the timeout refusal."""


def _fetch(
    url: str, policy: MediaPolicy, part: MediaPart, deadline: float, stop: threading.Event
) -> bytes:
    own_client = policy.http_client is None
    client = httpx.Client() if own_client else policy.http_client
    origin = _origin(url)
    try:
        for hop in range(MAX_REDIRECTS + 1):
            checked = check_url(url, policy, part, hop)
            target, options = _request_for(checked, pinned=own_client)
            origin = origin if origin == _origin(url) else None
            request, auth = _hop_request(client, target, options, deadline, origin is not None)
            response = client.send(request, stream=True, follow_redirects=False, **auth)
            try:
                next_url = _process_response(response, url, part, policy)
                if next_url is not None:
                    url = next_url
                    continue
                body = _Body(policy, part)
                for chunk in response.iter_bytes():
                    if stop.is_set() or time.monotonic() >= deadline:
                        raise _Deadline
                    body.add(chunk)
                return body.value()
            finally:
                response.close()
        raise _too_many_redirects(part)
    except http_errors("TimeoutException") as exc:
        raise _timed_out(part, policy) from exc
    except _Deadline as exc:
        raise _timed_out(part, policy) from exc
    except http_errors("HTTPError") as exc:
        raise _failed(part, exc) from exc
    finally:
        if own_client:
            client.close()


async def _afetch(url: str, policy: MediaPolicy, part: MediaPart, deadline: float) -> bytes:
    client = policy.async_http_client

    async def run() -> bytes:
        nonlocal url
        origin = _origin(url)
        for hop in range(MAX_REDIRECTS + 1):
            # The user's client resolves the host again itself: checked, not pinned.
            await asyncio.to_thread(check_url, url, policy, part, hop)
            origin = origin if origin == _origin(url) else None
            request, auth = _hop_request(client, url, {}, deadline, origin is not None)
            response = await client.send(request, stream=True, follow_redirects=False, **auth)
            try:
                next_url = _process_response(response, url, part, policy)
                if next_url is not None:
                    url = next_url
                    continue
                body = _Body(policy, part)
                async for chunk in response.aiter_bytes():
                    body.add(chunk)
                return body.value()
            finally:
                await response.aclose()
        raise _too_many_redirects(part)

    try:
        return await asyncio.wait_for(run(), _left(deadline))
    except asyncio.TimeoutError as exc:
        raise _timed_out(part, policy) from exc
    except http_errors("TimeoutException") as exc:
        raise _timed_out(part, policy) from exc
    except http_errors("HTTPError") as exc:
        raise _failed(part, exc) from exc


def _origin(url: str) -> tuple[str, str, int | None] | None:
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        return scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        return None


def _hop_request(
    client: Any, target: str, options: dict[str, Any], deadline: float, same_origin: bool
) -> tuple[Any, dict[str, Any]]:
    """One hop's GET built by ``client`` (its headers, cookies and settings), and the
    ``send`` arguments; off the first URL's origin (and every hop after that), without
    the client's credentials: they were meant for the URL the content named."""
    request = client.build_request("GET", target, timeout=_left(deadline), **options)
    if same_origin:
        return request, {}
    for name in _CREDENTIAL_HEADERS:
        request.headers.pop(name, None)
    return request, {"auth": None}


def _left(deadline: float) -> float:
    return max(0.001, deadline - time.monotonic())


def _request_for(checked: CheckedHop, pinned: bool) -> tuple[str, dict[str, Any]]:
    """The URL and request options for one hop. ``pinned`` (our own client): connect to
    the address the check approved, so a second DNS answer cannot lead elsewhere (DNS
    rebinding); the Host header and TLS (SNI, certificate check) still name the host."""
    if not pinned or checked.host == str(checked.address):
        return checked.url, {}
    original = httpx.URL(checked.url)
    target = original.copy_with(host=str(checked.address))
    return str(target), {
        "headers": {"Host": original.netloc.decode("ascii")},
        "extensions": {"sni_hostname": checked.host},
    }


def _process_response(response: Any, url: str, part: MediaPart, policy: MediaPolicy) -> str | None:
    """The next hop's URL for a redirect, ``None`` for a body worth reading; refuses
    error statuses and a declared length over the cap."""
    status = response.status_code
    if status in _REDIRECTS:
        location = response.headers.get("location")
        if not location:
            raise UnsupportedInputError(
                f"Fetching the {part.describe()} failed: HTTP {status} without a Location."
            )
        return urljoin(url, location)
    if not 200 <= status < 300:
        raise UnsupportedInputError(
            f"Fetching the {part.describe()} (to convert it for the model) failed "
            f"with HTTP {status}; check the URL or send the bytes."
        )
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > policy.max_remote_bytes:
        raise _too_big(part, policy)
    return None


class _Body:
    """The body so far, refused the moment it passes ``max_remote_bytes``."""

    def __init__(self, policy: MediaPolicy, part: MediaPart) -> None:
        self.policy, self.part = policy, part
        self.chunks: list[bytes] = []
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        if self.total > self.policy.max_remote_bytes:
            raise _too_big(self.part, self.policy)
        self.chunks.append(chunk)

    def value(self) -> bytes:
        return b"".join(self.chunks)


def _too_big(part: MediaPart, policy: MediaPolicy) -> UnsupportedInputError:
    return UnsupportedInputError(
        f"The {part.describe()} is larger than MediaPolicy.max_remote_bytes "
        f"({policy.max_remote_bytes} bytes); raise the limit or send a smaller file."
    )


def _too_many_redirects(part: MediaPart) -> UnsupportedInputError:
    return UnsupportedInputError(
        f"Fetching the {part.describe()} failed: more than {MAX_REDIRECTS} redirects; "
        "send the final URL or the image's bytes."
    )


def _timed_out(part: MediaPart, policy: MediaPolicy) -> UnsupportedInputError:
    return UnsupportedInputError(
        f"Fetching the {part.describe()} timed out after {policy.remote_timeout} s "
        "(MediaPolicy.remote_timeout, a deadline for the whole fetch); raise it or send "
        "the bytes."
    )


def _failed(part: MediaPart, exc: Exception) -> UnsupportedInputError:
    return UnsupportedInputError(
        f"Fetching the {part.describe()} failed ({type(exc).__name__}: {exc}); "
        "check the URL or send the bytes."
    )
