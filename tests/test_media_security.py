"""Media that attack the client, and the fetch the client makes itself (issue 13).

Fetches go over real HTTP to a loopback server, allow-listed to reach it. Names that
resolve to refused ranges are resolved through a hook on ``socket.getaddrinfo``, and
every test here that could connect runs with a guard that lets only loopback
connections through: nothing is ever sent to another address.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import os
import socket
import struct
import subprocess
import sys
import threading
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from nemovlm.emulator.server import RunningServer
from nemovlm.errors import UnsupportedInputError
from nemovlm.media import (
    MediaPolicy,
    VideoInfo,
    aprepare_media,
    cache_info,
    clear_cache,
    prepare_media,
    read_video_info,
    to_data_url,
)
from nemovlm.media.fetch import MAX_REDIRECTS, refused_reason
from nemovlm.messages import MediaPart
from nemovlm.profiles import get_profile
from nemovlm.samples import make_image, make_mp4

LLAMA = get_profile("nvidia/llama-3.1-nemotron-nano-vl-8b-v1")  # jpeg/png: a .gif is fetched
OMNI = get_profile("nvidia/nemotron-3-nano-omni/video")  # mp4 only, <= 2 min, <= 1080p
LOOPBACK = MediaPolicy(allowed_hosts=("127.0.0.1",))


def gif() -> bytes:
    return make_image(40, 30, "gif")


# --- where the client may fetch from: one address at a time -------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.9", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("169.254.169.254", "link-local"),  # the cloud metadata service
        ("fe80::1", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "non-public"),  # carrier-grade NAT
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:10.0.0.1", "private"),
        ("2002:0a00:0001::1", "private"),  # 6to4 around 10.0.0.1
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 around 169.254.169.254
    ],
)
def test_a_non_public_address_is_refused_with_its_kind(address: str, reason: str) -> None:
    assert refused_reason(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111"])
def test_a_public_address_is_allowed(address: str) -> None:
    assert refused_reason(ipaddress.ip_address(address)) is None


# --- a resolver hook and a connection guard: no traffic leaves loopback ---------------------


@pytest.fixture()
def names(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Host names the test makes resolve to given addresses (no DNS asked); connections
    to anything but loopback fail the test instead of leaving the machine."""
    fake: dict[str, str] = {}
    real_getaddrinfo = socket.getaddrinfo
    real_connection = socket.create_connection

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name in fake:
            fake.setdefault(f"resolved:{name}", "")
            fake[f"resolved:{name}"] += "x"
            return real_getaddrinfo(fake[name], port, *args, **kwargs)
        return real_getaddrinfo(host, port, *args, **kwargs)

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> Any:
        host = address[0]
        ips = {ipaddress.ip_address(i[4][0]) for i in getaddrinfo(host, address[1])}
        if not all(ip.is_loopback for ip in ips):
            raise AssertionError(f"the client tried to connect to {host} ({ips})")
        return real_connection(address, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    return fake


def image_at(url: str) -> MediaPart:
    return MediaPart(kind="image", url=url)


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.5/a.gif",
        "http://169.254.169.254/latest/meta-data/a.gif",
        "http://[::1]:8080/a.gif",
        "http://0x7f000001/a.gif",  # 127.0.0.1 spelt in hex
        "http://2130706433/a.gif",  # and as one number
        "http://[::ffff:192.168.0.1]/a.gif",
    ],
)
def test_a_url_naming_a_non_public_address_is_refused_before_connecting(
    names: dict[str, str], url: str
) -> None:
    with pytest.raises(UnsupportedInputError, match=r"was refused: .* address.*allowed_hosts"):
        prepare_media(image_at(url), LLAMA, MediaPolicy())


@pytest.mark.parametrize("address", ["10.20.30.40", "192.168.7.7", "169.254.169.254", "::1"])
def test_a_host_name_resolving_to_a_non_public_address_is_refused(
    names: dict[str, str], address: str
) -> None:
    names["intranet.example"] = address
    with pytest.raises(UnsupportedInputError, match=f"resolves to {address}"):
        prepare_media(image_at("http://intranet.example/chart.gif"), LLAMA, MediaPolicy())


def test_a_host_that_does_not_resolve_is_refused_clearly(names: dict[str, str]) -> None:
    with pytest.raises(UnsupportedInputError, match="cannot resolve the host 'nowhere.invalid'"):
        prepare_media(image_at("http://nowhere.invalid/a.gif"), LLAMA, MediaPolicy())


# --- the fetch over loopback ----------------------------------------------------------------

HELD = threading.Event()


@pytest.fixture(scope="module")
def web() -> Iterator[tuple[str, Counter[str]]]:
    hits: Counter[str] = Counter()

    async def serve(request: Request) -> Response:
        name = request.path_params["name"]
        hits[name] += 1
        hits[f"host:{request.headers.get('host', '').split(':')[0]}"] += 1
        if name == "pic.gif":
            return Response(gif(), media_type="image/gif")
        if name == "members-only.gif":
            if request.headers.get("x-media-pass") != "let-me-in":
                return Response("forbidden", status_code=403)
            return Response(gif(), media_type="image/gif")
        if name == "hop.gif":  # a redirect that stays on the allowed host
            return RedirectResponse("/pic.gif", status_code=302)
        if name == "loop.gif":
            return RedirectResponse("/loop.gif", status_code=302)
        if name == "to-private.gif":
            return RedirectResponse("http://10.0.0.5/pic.gif", status_code=302)
        if name == "to-metadata.gif":
            return RedirectResponse("http://169.254.169.254/latest/a.gif", status_code=307)
        if name == "to-intranet.gif":
            return RedirectResponse("http://intranet.example/pic.gif", status_code=301)
        if name == "to-elsewhere.gif":  # to another origin: another port
            return RedirectResponse(request.query_params["to"], status_code=302)
        if name == "to-file.gif":
            return RedirectResponse("file:///etc/passwd", status_code=302)
        if name == "held.gif":  # says nothing until the test lets it, noting a hang-up

            async def hold() -> AsyncIterator[bytes]:
                try:
                    while not HELD.is_set():
                        await asyncio.sleep(0.01)
                    yield gif()
                finally:
                    if not HELD.is_set():  # the client hung up while held
                        hits["held.gif:gone"] += 1

            return StreamingResponse(hold(), media_type="image/gif")
        return Response("not here", status_code=404)

    app = Starlette(routes=[Route("/{name}", serve)])
    with RunningServer(app) as server:
        yield server.url, hits


def test_a_loopback_server_is_refused_when_not_allow_listed(
    web: tuple[str, Counter[str]],
) -> None:
    base, hits = web
    with pytest.raises(UnsupportedInputError, match="127.0.0.1 is a loopback address"):
        prepare_media(image_at(f"{base}/pic.gif?refused"), LLAMA, MediaPolicy())
    assert hits["pic.gif"] == 0


@pytest.mark.parametrize("entry", ["127.0.0.1", "127.0.0.0/8", "::ffff:127.0.0.1/128"])
def test_an_allow_listed_address_or_network_is_fetched(
    web: tuple[str, Counter[str]], entry: str
) -> None:
    base, _ = web
    policy = MediaPolicy(allowed_hosts=(entry,))
    if ":" in entry:  # an IPv6 network does not cover the IPv4 address itself
        with pytest.raises(UnsupportedInputError, match="loopback"):
            prepare_media(image_at(f"{base}/pic.gif"), LLAMA, policy)
        return
    assert prepare_media(image_at(f"{base}/pic.gif"), LLAMA, policy).format == "png"


def test_an_allow_listed_host_name_is_fetched_and_connected_to_as_checked(
    names: dict[str, str], web: tuple[str, Counter[str]]
) -> None:
    base, hits = web
    port = base.rsplit(":", 1)[1]
    names["media.internal"] = "127.0.0.1"
    policy = MediaPolicy(allowed_hosts=("Media.Internal",))
    prepared = prepare_media(image_at(f"http://media.internal:{port}/pic.gif"), LLAMA, policy)
    assert prepared.format == "png"
    assert hits["host:media.internal"] >= 1  # the server saw the name, not the address
    # Resolved once, by the check; the connection went to that answer, not a second one.
    assert names["resolved:media.internal"] == "x"


def test_an_https_host_connected_to_as_checked_still_has_its_certificate_verified(
    names: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loopback import tls_files

    certfile, keyfile, bundle = tls_files(tmp_path, "media.internal")
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))  # our short-lived client trusts the CA
    names["media.internal"] = "127.0.0.1"
    names["wrong.internal"] = "127.0.0.1"

    async def serve(request: Request) -> Response:
        return Response(gif(), media_type="image/gif")

    app = Starlette(routes=[Route("/{name}", serve)])
    policy = MediaPolicy(allowed_hosts=("media.internal", "wrong.internal"))
    with RunningServer(app, certfile=certfile, keyfile=keyfile) as server:
        port = server.port
        # Dialled at 127.0.0.1, yet TLS names media.internal: the certificate matches.
        ok = prepare_media(image_at(f"https://media.internal:{port}/a.gif"), LLAMA, policy)
        assert ok.format == "png"
        # A host the certificate does not name is still refused by TLS.
        with pytest.raises(UnsupportedInputError, match="CERTIFICATE_VERIFY_FAILED|hostname"):
            prepare_media(image_at(f"https://wrong.internal:{port}/a.gif"), LLAMA, policy)


def test_a_redirect_on_an_allowed_host_is_followed(web: tuple[str, Counter[str]]) -> None:
    base, hits = web
    before = hits["pic.gif"]
    assert prepare_media(image_at(f"{base}/hop.gif"), LLAMA, LOOPBACK).format == "png"
    assert hits["pic.gif"] == before + 1


@pytest.mark.parametrize(
    ("name", "refused"),
    [
        ("to-private.gif", "10.0.0.5 is a private address"),
        ("to-metadata.gif", "169.254.169.254 is a link-local address"),
        ("to-intranet.gif", "intranet.example \\(which resolves to 10.9.8.7\\)"),
    ],
)
def test_every_redirect_hop_is_checked_like_the_first(
    names: dict[str, str], web: tuple[str, Counter[str]], name: str, refused: str
) -> None:
    base, _ = web
    names["intranet.example"] = "10.9.8.7"
    with pytest.raises(
        UnsupportedInputError, match=rf"\(redirected to .*\) was refused: {refused}"
    ):
        prepare_media(image_at(f"{base}/{name}"), LLAMA, LOOPBACK)


def test_a_redirect_to_a_file_url_is_refused(web: tuple[str, Counter[str]]) -> None:
    base, _ = web
    with pytest.raises(UnsupportedInputError, match="'file:///etc/passwd', which is not an http"):
        prepare_media(image_at(f"{base}/to-file.gif"), LLAMA, LOOPBACK)


def test_redirects_are_followed_a_bounded_number_of_times(web: tuple[str, Counter[str]]) -> None:
    base, hits = web
    before = hits["loop.gif"]
    with pytest.raises(UnsupportedInputError, match=f"more than {MAX_REDIRECTS} redirects"):
        prepare_media(image_at(f"{base}/loop.gif"), LLAMA, LOOPBACK)
    assert hits["loop.gif"] - before == MAX_REDIRECTS + 1


def test_the_users_http_client_follows_no_redirect_on_its_own(
    names: dict[str, str], web: tuple[str, Counter[str]]
) -> None:
    base, _ = web
    with httpx.Client(follow_redirects=True) as client:
        policy = MediaPolicy(http_client=client, allowed_hosts=("127.0.0.1",))
        with pytest.raises(UnsupportedInputError, match="10.0.0.5 is a private address"):
            prepare_media(image_at(f"{base}/to-private.gif"), LLAMA, policy)


@pytest.fixture(scope="module")
def elsewhere() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A second loopback server, on another port (another origin): records the headers
    of each request; ``/hop.gif`` redirects to its own ``/pic.gif``."""
    seen: list[dict[str, str]] = []

    async def serve(request: Request) -> Response:
        seen.append(dict(request.headers))
        if request.path_params["name"] == "hop.gif":
            return RedirectResponse("/pic.gif", status_code=302)
        return Response(gif(), media_type="image/gif")

    app = Starlette(routes=[Route("/{name}", serve)])
    with RunningServer(app) as server:
        yield server.url, seen


CREDENTIALS = {"Authorization": "Bearer users-own-token", "Proxy-Authorization": "Basic cHJv"}
SENT = ("authorization", "proxy-authorization", "cookie")


def credentialed_client(cls: Any) -> Any:
    return cls(headers=CREDENTIALS, cookies={"session": "users-session"})


def test_the_users_client_credentials_do_not_follow_a_redirect_to_another_origin(
    web: tuple[str, Counter[str]], elsewhere: tuple[str, list[dict[str, str]]]
) -> None:
    base, _ = web
    other, seen = elsewhere
    seen.clear()
    with credentialed_client(httpx.Client) as client:
        policy = MediaPolicy(http_client=client, allowed_hosts=("127.0.0.1",))
        prepare_media(image_at(f"{base}/to-elsewhere.gif?to={other}/pic.gif"), LLAMA, policy)
    [received] = seen
    assert [name for name in SENT if name in received] == []


def test_the_users_client_auth_does_not_follow_a_redirect_to_another_origin(
    web: tuple[str, Counter[str]], elsewhere: tuple[str, list[dict[str, str]]]
) -> None:
    base, _ = web
    other, seen = elsewhere
    seen.clear()
    with httpx.Client(auth=("user", "users-password")) as client:
        policy = MediaPolicy(http_client=client, allowed_hosts=("127.0.0.1",))
        prepare_media(image_at(f"{base}/to-elsewhere.gif?to={other}/pic.gif"), LLAMA, policy)
    [received] = seen
    assert "authorization" not in received


def test_the_users_client_credentials_follow_a_redirect_on_the_same_origin(
    elsewhere: tuple[str, list[dict[str, str]]],
) -> None:
    other, seen = elsewhere
    seen.clear()
    with credentialed_client(httpx.Client) as client:
        policy = MediaPolicy(http_client=client, allowed_hosts=("127.0.0.1",))
        prepare_media(image_at(f"{other}/hop.gif"), LLAMA, policy)
    assert [[n for n in SENT if n in r] for r in seen] == [list(SENT), list(SENT)]


def test_the_async_clients_credentials_do_not_follow_a_redirect_to_another_origin(
    web: tuple[str, Counter[str]], elsewhere: tuple[str, list[dict[str, str]]]
) -> None:
    base, _ = web
    other, seen = elsewhere
    seen.clear()

    async def main() -> None:
        async with credentialed_client(httpx.AsyncClient) as client:
            policy = MediaPolicy(async_http_client=client, allowed_hosts=("127.0.0.1",))
            url = f"{base}/to-elsewhere.gif?to={other}/pic.gif"
            await aprepare_media(image_at(url), LLAMA, policy)

    asyncio.run(main())
    [received] = seen
    assert [name for name in SENT if name in received] == []


def test_an_async_call_fetches_through_the_async_http_client(
    web: tuple[str, Counter[str]],
) -> None:
    base, _ = web

    async def main() -> str | None:
        async with httpx.AsyncClient(headers={"x-media-pass": "let-me-in"}) as client:
            policy = MediaPolicy(async_http_client=client, allowed_hosts=("127.0.0.1",))
            prepared = await aprepare_media(image_at(f"{base}/members-only.gif"), LLAMA, policy)
            assert not client.is_closed
            return prepared.format

    assert asyncio.run(main()) == "png"  # the server saw the async client's header


def test_an_async_call_without_an_async_client_fetches_through_the_sync_one(
    web: tuple[str, Counter[str]],
) -> None:
    base, _ = web
    with httpx.Client(headers={"x-media-pass": "let-me-in"}) as client:
        policy = MediaPolicy(http_client=client, allowed_hosts=("127.0.0.1",))
        part = image_at(f"{base}/members-only.gif")
        assert asyncio.run(aprepare_media(part, LLAMA, policy)).format == "png"


def test_the_async_client_checks_hosts_too(names: dict[str, str]) -> None:
    sent: list[httpx.Request] = []

    def transport(request: httpx.Request) -> httpx.Response:
        sent.append(request)  # never reached: the check refuses first
        return httpx.Response(500)

    async def main() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(transport)) as client:
            policy = MediaPolicy(async_http_client=client)
            await aprepare_media(image_at("http://10.1.1.1/a.gif"), LLAMA, policy)

    with pytest.raises(UnsupportedInputError, match="10.1.1.1 is a private address"):
        asyncio.run(main())
    assert sent == []


def test_cancelling_an_async_call_hangs_up_the_fetch(web: tuple[str, Counter[str]]) -> None:
    base, hits = web

    async def main() -> None:
        async with httpx.AsyncClient() as client:
            policy = MediaPolicy(async_http_client=client, allowed_hosts=("127.0.0.1",))
            call = asyncio.create_task(aprepare_media(image_at(f"{base}/held.gif"), LLAMA, policy))
            while hits["held.gif"] == 0:
                await asyncio.sleep(0.01)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            while hits["held.gif:gone"] == 0:  # the server sees the connection close
                await asyncio.sleep(0.01)

    HELD.clear()
    try:
        asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        HELD.set()
    assert hits["held.gif:gone"] == 1


def test_a_cancelled_async_call_decodes_nothing_it_fetched_late(
    web: tuple[str, Counter[str]],
) -> None:
    base, hits = web
    clear_cache()
    before = cache_info().decodes
    held_before = hits["held.gif"]

    async def main() -> None:
        call = asyncio.create_task(aprepare_media(image_at(f"{base}/held.gif"), LLAMA, LOOPBACK))
        while hits["held.gif"] == held_before:
            await asyncio.sleep(0.01)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        HELD.set()  # the image arrives now; the cancelled work must not decode it

    HELD.clear()
    try:
        asyncio.run(main())  # returns once the worker thread is done
    finally:
        HELD.set()
    assert cache_info().decodes == before


# --- the chat models' settings ------------------------------------------------------------


def test_the_chat_models_media_settings_reach_the_policy() -> None:
    from nemovlm.settings import NimSettings

    sync_client, async_client = object(), object()
    settings = NimSettings(
        model="m",
        allowed_media_hosts=["media.internal", "10.0.0.0/8"],
        max_decode_pixels=5_000_000,
        max_video_bytes=1234,
        http_client=sync_client,
        async_http_client=async_client,
    )
    policy = settings.media_policy()
    assert policy.allowed_hosts == ("media.internal", "10.0.0.0/8")
    assert (policy.max_decode_pixels, policy.max_video_bytes) == (5_000_000, 1234)
    assert policy.http_client is sync_client and policy.async_http_client is async_client


def test_the_media_settings_default_to_the_policys_defaults() -> None:
    from nemovlm.settings import NimSettings

    policy = NimSettings(model="m").media_policy()
    assert (policy.allowed_hosts, policy.max_decode_pixels, policy.max_video_bytes) == (
        (),
        MediaPolicy().max_decode_pixels,
        MediaPolicy().max_video_bytes,
    )


# --- decode bombs ---------------------------------------------------------------------------


def png_of_one_colour(width: int, height: int) -> bytes:
    """An RGB PNG of ``width`` x ``height`` black pixels, compressed row by row, so making
    even a gigapixel one takes little memory (and the file is small)."""
    compressor = zlib.compressobj(9)
    row = bytes(1 + 3 * width)  # filter byte 0, then black pixels
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return png_of_one_colour(13_000, 13_000)


def test_a_decode_bomb_is_refused_from_its_header_even_with_pillows_limit_off(
    bomb: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # as ML code often does
    clear_cache()
    before = cache_info().decodes
    part = MediaPart(kind="image", data=bomb)
    with pytest.raises(UnsupportedInputError, match=r"13000x13000 .*max_decode_pixels"):
        prepare_media(part, LLAMA, MediaPolicy())
    assert cache_info().decodes == before


def test_max_decode_pixels_is_ours_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    photo = MediaPart(kind="image", data=make_image(400, 300, "png"))
    with pytest.raises(UnsupportedInputError, match="400x300"):
        prepare_media(photo, LLAMA, MediaPolicy(max_decode_pixels=100_000))
    assert prepare_media(photo, LLAMA, MediaPolicy(max_decode_pixels=120_000)).width == 400


_PEAK_SCRIPT = """
import sys
from nemovlm.errors import UnsupportedInputError
from nemovlm.media import MediaPolicy, prepare_media
from nemovlm.messages import MediaPart
from nemovlm.profiles import get_profile
from nemovlm.samples import make_image
profile = get_profile("nvidia/llama-3.1-nemotron-nano-vl-8b-v1")
data = open(sys.argv[1], "rb").read()
# Warm up: Pillow's plugins and the package's first-call costs are not the picture's.
prepare_media(MediaPart(kind="image", data=make_image(16, 16, "png")), profile, MediaPolicy())
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # Linux: the peak (VmHWM) starts again from here
before = status("VmRSS")
try:
    out = prepare_media(MediaPart(kind="image", data=data), profile, MediaPolicy())
    print("prepared", out.width, out.height, end=" ")
except UnsupportedInputError:
    print("refused", end=" ")
print(max(0, status("VmHWM") - before))
"""


def peak_growth(data: bytes, tmp_path: Path) -> tuple[str, int]:
    """What preparing ``data`` did and how far it raised a fresh process's peak memory."""
    source = tmp_path / "image.bin"
    source.write_bytes(data)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(source)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    *outcome, growth = run.stdout.split()
    return " ".join(outcome), int(growth)


def test_a_refused_decode_bomb_costs_almost_no_memory(bomb: bytes, tmp_path: Path) -> None:
    outcome, growth = peak_growth(bomb, tmp_path)
    one_copy = 13_000 * 13_000 * 4
    assert outcome == "refused"
    assert growth < one_copy / 50


def test_downscaling_a_large_picture_peaks_near_one_decoded_copy(tmp_path: Path) -> None:
    width = height = 6_000  # 36 megapixels under the cap; the model takes 3.1
    outcome, growth = peak_growth(png_of_one_colour(width, height), tmp_path)
    assert outcome.startswith("prepared")
    # Pillow holds RGB in 4 bytes a pixel. One decoded copy is unavoidable for PNG; a
    # turned or converted full-size copy on top of it would double this.
    one_copy = width * height * 4
    assert growth < 1.6 * one_copy


def test_a_large_jpeg_is_decoded_at_reduced_scale(tmp_path: Path) -> None:
    width = height = 8_000  # 64 megapixels; the model takes 3.1, so 1/4 scale is enough
    buffer = io.BytesIO()
    Image.new("L", (width, height), 90).save(buffer, "JPEG", quality=80)
    outcome, growth = peak_growth(buffer.getvalue(), tmp_path)
    assert outcome.startswith("prepared")
    assert growth < width * height / 4  # a full decode would hold all 64 MB at once


# --- inline video -----------------------------------------------------------------------------


def sparse_video(tmp_path: Path, size: int) -> Path:
    """A real MP4 padded with a sparse hole to ``size`` bytes: big on paper, not on disk."""
    path = tmp_path / "long.mp4"
    with open(path, "wb") as file:
        file.write(make_mp4(10.0, 640, 360, 25.0))
        file.truncate(size)
    return path


def test_a_video_file_over_the_cap_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = sparse_video(tmp_path, 300 * 1024 * 1024)
    with pytest.raises(UnsupportedInputError, match=r"314.6 MB; .*max_video_bytes"):
        prepare_media(MediaPart(kind="video", path=path), OMNI, MediaPolicy())


def test_raising_max_video_bytes_lets_a_larger_video_through(tmp_path: Path) -> None:
    path = sparse_video(tmp_path, 300 * 1024 * 1024)
    prepared = prepare_media(
        MediaPart(kind="video", path=path), OMNI, MediaPolicy(max_video_bytes=400 * 1024 * 1024)
    )
    assert prepared.path == path and prepared.video is not None


def test_video_bytes_and_data_urls_over_the_cap_are_refused() -> None:
    video = make_mp4(2.0)
    policy = MediaPolicy(max_video_bytes=len(video) - 1)
    for part in (
        MediaPart(kind="video", data=video),
        MediaPart(kind="video", url=to_data_url(video, "video/mp4")),
    ):
        with pytest.raises(UnsupportedInputError, match="max_video_bytes"):
            prepare_media(part, OMNI, policy)
    assert prepare_media(MediaPart(kind="video", data=video), OMNI, MediaPolicy()).video


# --- MP4 boxes that attack the reader ----------------------------------------------------------

_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"dinf"}

Box = tuple[bytes, "bytes | list[Box]"]


def parse_boxes(buf: bytes) -> list[Box]:
    boxes: list[Box] = []
    pos = 0
    while pos + 8 <= len(buf):
        size, kind = struct.unpack_from(">I4s", buf, pos)
        header = 8
        if size == 1:
            size, header = struct.unpack_from(">Q", buf, pos + 8)[0], 16
        body = buf[pos + header : pos + size]
        boxes.append((kind, parse_boxes(body) if kind in _CONTAINERS else body))
        pos += size
    return boxes


def build_boxes(boxes: list[Box]) -> bytes:
    out = b""
    for kind, body in boxes:
        raw = body if isinstance(body, bytes) else build_boxes(body)
        out += struct.pack(">I4s", 8 + len(raw), kind) + raw
    return out


def leaves(boxes: list[Box], path: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    found: list[tuple[int, ...]] = []
    for i, (_, body) in enumerate(boxes):
        found.append((*path, i))
        if not isinstance(body, bytes):
            found.extend(leaves(body, (*path, i)))
    return found


def edit(boxes: list[Box], path: tuple[int, ...], change: Any) -> list[Box]:
    out = list(boxes)
    kind, body = out[path[0]]
    if len(path) == 1:
        out[path[0]] = (kind, change(kind, body))
    else:
        assert not isinstance(body, bytes)
        out[path[0]] = (kind, edit(body, path[1:], change))
    return out


MP4_SAMPLES = [
    make_mp4(2.0),
    make_mp4(3.0, 1920, 1080, 30.0, version=1, rotation=90, audio_track=True),
    make_mp4(1.0, moov_first=False, brand="qt  "),
]


def emptied(box: bytes, sample: bytes) -> bytes:
    boxes = parse_boxes(sample)
    path = next(p for p in leaves(boxes) if _box_at(boxes, p)[0] == box)
    return build_boxes(edit(boxes, path, lambda kind, body: b""))


def _box_at(boxes: list[Box], path: tuple[int, ...]) -> Box:
    box = boxes[path[0]]
    for i in path[1:]:
        assert not isinstance(box[1], bytes)
        box = box[1][i]
    return box


@pytest.mark.parametrize("box", [b"mvhd", b"tkhd", b"mdhd", b"hdlr", b"stts", b"stsd"])
def test_an_empty_header_box_is_refused_as_malformed(box: bytes) -> None:
    damaged = emptied(box, MP4_SAMPLES[0])
    try:
        info = read_video_info(damaged)
    except UnsupportedInputError as exc:
        assert "MP4" in str(exc)
    else:  # hdlr/stsd carry nothing the reader must have; what it returns is still a VideoInfo
        assert isinstance(info, VideoInfo)


@st.composite
def damaged_mp4s(draw: st.DrawFn) -> bytes:
    sample = draw(st.sampled_from(MP4_SAMPLES))
    boxes = parse_boxes(sample)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(leaves(boxes)))
        how = draw(st.sampled_from(["cut", "flip", "grow", "empty"]))
        if how == "cut":
            keep = draw(st.integers(0, 64))
            boxes = edit(
                boxes,
                path,
                lambda k, b, keep=keep: (b if isinstance(b, bytes) else build_boxes(b))[:keep],
            )
        elif how == "flip":
            at, value = draw(st.integers(0, 200)), draw(st.integers(0, 255))

            def flip(kind: bytes, body: Any, at: int = at, value: int = value) -> bytes:
                raw = bytearray(body if isinstance(body, bytes) else build_boxes(body))
                if raw:
                    raw[at % len(raw)] = value
                return bytes(raw)

            boxes = edit(boxes, path, flip)
        elif how == "grow":
            extra = draw(st.binary(max_size=32))
            boxes = edit(
                boxes,
                path,
                lambda k, b, extra=extra: (b if isinstance(b, bytes) else build_boxes(b)) + extra,
            )
        else:
            boxes = edit(boxes, path, lambda kind, body: b"")
        boxes = parse_boxes(build_boxes(boxes))
    data = build_boxes(boxes)
    if draw(st.booleans()):  # and maybe cut the whole file short, or a size field wrong
        data = data[: draw(st.integers(0, len(data)))]
    if draw(st.booleans()) and len(data) > 8:
        at = draw(st.integers(0, len(data) - 4))
        data = (
            data[:at]
            + struct.pack(">I", draw(st.sampled_from([0, 1, 7, 8, 2**32 - 1])))
            + data[at + 4 :]
        )
    return data


@settings(
    max_examples=400,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(damaged_mp4s())
def test_damaged_mp4_boxes_are_read_or_refused_with_unsupported_input_only(data: bytes) -> None:
    """Truncated, emptied, grown and mutated boxes at every depth: the reader returns a
    ``VideoInfo`` or raises ``UnsupportedInputError``, nothing else."""
    try:
        info = read_video_info(data)
    except UnsupportedInputError:
        return
    assert isinstance(info, VideoInfo)
