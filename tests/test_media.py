"""nemovlm.media: where media may come from, what it really is, and what each model gets.

Remote fetches go over real HTTP to a loopback server; nothing touches the internet.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import io
import os
import pickle
import random
import struct
import subprocess
import sys
import threading
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from nemovlm.emulator.server import RunningServer
from nemovlm.errors import UnsupportedInputError
from nemovlm.media import (
    IMAGE_FORMATS,
    VIDEO_FORMATS,
    MediaPolicy,
    PreparedMedia,
    VideoInfo,
    aprepare_media,
    cache_info,
    clear_cache,
    media_from_base64,
    media_from_string,
    prepare_media,
    read_media_file,
    read_video_info,
    set_cache_limits,
    sniff_format,
    to_data_url,
)
from nemovlm.messages import MediaPart
from nemovlm.profiles import get_profile
from nemovlm.samples import make_image, make_mp4, make_photo

LLAMA = get_profile("nvidia/llama-3.1-nemotron-nano-vl-8b-v1")  # jpeg/png, 3.1 MP budget
NANO12 = get_profile("nvidia/nemotron-nano-12b-v2-vl")  # jpeg/png, mp4
GEMMA = get_profile("google/diffusiongemma-26b-a4b-it")  # gif/jpeg/png, mp4
OMNI = get_profile("nvidia/nemotron-3-nano-omni/video")  # mp4 only, <= 2 min, <= 1080p
GENERIC = get_profile("acme/some-new-vlm")  # anything, no budget
JPEG_ONLY = GENERIC.with_overrides(
    {"image_formats": frozenset({"jpeg"}), "convert_images_to": "jpeg"}
)
NO_CONVERSION = LLAMA.with_overrides({"convert_images_to": None})
# The loopback web server below is allow-listed; the refusal without it has its own tests.
OPEN = MediaPolicy(allowed_hosts=("127.0.0.1",))


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    clear_cache()
    yield
    set_cache_limits()
    clear_cache()


def image_part(data: bytes, mime_type: str | None = None) -> MediaPart:
    return MediaPart(kind="image", data=data, mime_type=mime_type)


def video_part(data: bytes) -> MediaPart:
    return MediaPart(kind="video", data=data)


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def animated_gif(first: tuple[int, int, int], second: tuple[int, int, int]) -> bytes:
    frames = [Image.new("RGB", (40, 30), first), Image.new("RGB", (40, 30), second)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100)
    return buffer.getvalue()


def jpeg_with_orientation(width: int, height: int, orientation: int) -> bytes:
    image = decode(make_photo(width, height))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92, exif=exif.tobytes())
    return buffer.getvalue()


def noisy_low_quality_jpeg(width: int, height: int) -> bytes:
    noise = random.Random(7).randbytes(width * height * 3)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (width, height), noise).save(buffer, "JPEG", quality=5)
    return buffer.getvalue()


# --- a loopback web server for the fetch path -----------------------------------------

GIF_RED_BLUE = animated_gif((255, 0, 0), (0, 0, 255))
SLOW_RELEASE = threading.Event()


@pytest.fixture(scope="module")
def web() -> Iterator[tuple[str, Counter[str]]]:
    hits: Counter[str] = Counter()

    bodies = {
        "pic.gif": GIF_RED_BLUE,
        "photo.gif": GIF_RED_BLUE,
        "pic.png": make_image(fmt="png"),
        "real-png.gif": make_image(fmt="png"),  # a PNG behind a .gif name
        "big.gif": GIF_RED_BLUE + bytes(5000),
    }

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield bytes(1000)

    async def serve(request: Request) -> Response:
        name = request.path_params["name"]
        hits[name] += 1
        if name in bodies:
            return Response(bodies[name], media_type="image/gif")
        if name == "stream.gif":  # chunked: no Content-Length to check up front
            return StreamingResponse(chunks(), media_type="image/gif")
        if name == "members-only.gif":  # served only to a client sending the pass
            if request.headers.get("x-media-pass") != "let-me-in":
                return Response("forbidden", status_code=403)
            return Response(GIF_RED_BLUE, media_type="image/gif")
        if name == "slow.gif":  # answers only once the test lets it
            await asyncio.to_thread(SLOW_RELEASE.wait, 60)
            return Response(GIF_RED_BLUE, media_type="image/gif")
        return Response("not here", status_code=404)

    app = Starlette(routes=[Route("/{name}", serve)])
    with RunningServer(app) as server:
        yield server.url, hits


# --- media_from_string: strings found inside message content ----------------------------


def test_http_url_in_content_becomes_a_url_part() -> None:
    part = media_from_string("https://example.com/cat.png", "image", OPEN)
    assert part == MediaPart(kind="image", url="https://example.com/cat.png")


def test_url_in_content_is_stripped_of_surrounding_whitespace() -> None:
    part = media_from_string("  http://example.com/a.jpg\n", "image", OPEN)
    assert part.url == "http://example.com/a.jpg"


def test_http_url_without_host_is_refused() -> None:
    with pytest.raises(UnsupportedInputError, match="no host"):
        media_from_string("http:///a.png", "image", OPEN)


def test_valid_data_url_becomes_a_url_part_with_its_declared_type() -> None:
    url = to_data_url(make_image(), "image/png")
    part = media_from_string(url, "image", OPEN)
    assert part.url == url
    assert part.mime_type == "image/png"


def test_data_url_without_comma_is_refused() -> None:
    with pytest.raises(UnsupportedInputError, match="no ','"):
        media_from_string("data:image/png;base64", "image", OPEN)


def test_data_url_that_is_not_base64_is_refused() -> None:
    with pytest.raises(UnsupportedInputError, match="';base64' is missing"):
        media_from_string("data:image/png,hello", "image", OPEN)


def test_data_url_with_broken_base64_is_refused() -> None:
    with pytest.raises(UnsupportedInputError, match="not valid base64"):
        media_from_string("data:image/png;base64,iVBO*R!!", "image", OPEN)


def test_data_url_with_impossible_base64_length_is_refused() -> None:
    with pytest.raises(UnsupportedInputError, match="cut short"):
        media_from_string("data:image/png;base64,iVBORw0KG", "image", OPEN)


def test_empty_data_url_is_refused() -> None:
    with pytest.raises(UnsupportedInputError, match="empty"):
        media_from_string("data:image/png;base64,", "image", OPEN)


def test_data_url_with_line_breaks_and_no_padding_is_accepted() -> None:
    b64 = base64.b64encode(make_image()).decode().rstrip("=")
    wrapped = "\n".join(b64[i : i + 76] for i in range(0, len(b64), 76))
    part = media_from_string(f"data:image/png;base64,{wrapped}", "image", OPEN)
    assert prepare_media(part, LLAMA, OPEN).data == make_image()


def test_bare_path_in_content_is_refused_with_the_way_to_allow_it(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(make_image())
    with pytest.raises(UnsupportedInputError) as caught:
        media_from_string(str(tmp_path / "a.png"), "image", OPEN)
    assert "pass a pathlib.Path or allow the directory with allowed_dirs=" in str(caught.value)


def test_file_url_in_content_is_refused_without_allowed_dirs(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(make_image())
    with pytest.raises(UnsupportedInputError, match="allowed_dirs"):
        media_from_string((tmp_path / "a.png").as_uri(), "image", OPEN)


def test_path_inside_an_allowed_dir_becomes_a_path_part(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(make_image())
    policy = MediaPolicy(allowed_dirs=(tmp_path,))
    part = media_from_string(str(tmp_path / "a.png"), "image", policy)
    assert part.path == (tmp_path / "a.png").resolve()


def test_file_url_inside_an_allowed_dir_becomes_a_path_part(tmp_path: Path) -> None:
    target = tmp_path / "my photo.png"
    target.write_bytes(make_image())
    part = media_from_string(target.as_uri(), "image", MediaPolicy(allowed_dirs=(tmp_path,)))
    assert part.path == target.resolve()


def test_relative_path_resolves_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a.png").write_bytes(make_image())
    monkeypatch.chdir(tmp_path)
    part = media_from_string("a.png", "image", MediaPolicy(allowed_dirs=(tmp_path,)))
    assert part.path == (tmp_path / "a.png").resolve()


def test_dotdot_cannot_escape_an_allowed_dir(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (tmp_path / "secret.png").write_bytes(make_image())
    with pytest.raises(UnsupportedInputError, match="outside allowed_dirs"):
        media_from_string(
            str(allowed / ".." / "secret.png"), "image", MediaPolicy(allowed_dirs=(allowed,))
        )


def test_symlink_cannot_lead_out_of_an_allowed_dir(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (tmp_path / "secret.png").write_bytes(make_image())
    (allowed / "link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(UnsupportedInputError, match="outside allowed_dirs"):
        media_from_string(str(allowed / "link.png"), "image", MediaPolicy(allowed_dirs=(allowed,)))


def test_sibling_dir_sharing_a_name_prefix_is_not_allowed(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data2").mkdir()
    (tmp_path / "data2" / "a.png").write_bytes(make_image())
    with pytest.raises(UnsupportedInputError, match="outside allowed_dirs"):
        media_from_string(
            str(tmp_path / "data2" / "a.png"),
            "image",
            MediaPolicy(allowed_dirs=(tmp_path / "data",)),
        )


def test_missing_file_inside_an_allowed_dir_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedInputError, match="not a readable file"):
        media_from_string(
            str(tmp_path / "nope.png"), "image", MediaPolicy(allowed_dirs=(tmp_path,))
        )


def test_string_that_cannot_be_a_path_is_refused_cleanly(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedInputError, match="not a usable path"):
        media_from_string("a\x00b.png", "image", MediaPolicy(allowed_dirs=(tmp_path,)))


def test_file_url_naming_another_host_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedInputError, match="names the host 'fileserver'"):
        media_from_string(
            "file://fileserver/share/a.png", "image", MediaPolicy(allowed_dirs=(tmp_path,))
        )


@pytest.mark.parametrize(
    "value", ["ftp://example.com/a.png", "javascript:alert(1)", "s3://bucket/a.png"]
)
def test_other_url_schemes_are_refused(value: str) -> None:
    with pytest.raises(UnsupportedInputError, match="unsupported scheme"):
        media_from_string(value, "image", OPEN)


def test_empty_string_is_refused() -> None:
    with pytest.raises(UnsupportedInputError, match="empty string"):
        media_from_string("   ", "video", OPEN)


# --- media_from_base64 -------------------------------------------------------------------


def test_base64_becomes_a_data_part_keeping_the_declared_type() -> None:
    data = make_image()
    part = media_from_base64(base64.b64encode(data).decode(), "image/png", "image")
    assert (part.data, part.mime_type, part.kind) == (data, "image/png", "image")


def test_base64_given_as_a_whole_data_url_is_decoded() -> None:
    data = make_mp4()
    part = media_from_base64(to_data_url(data, "video/mp4"), None, "video")
    assert (part.data, part.mime_type) == (data, "video/mp4")


def test_broken_base64_is_refused() -> None:
    with pytest.raises(UnsupportedInputError, match="not valid base64"):
        media_from_base64("@@@@", "image/png", "image")


def test_empty_base64_is_refused() -> None:
    with pytest.raises(UnsupportedInputError, match="empty"):
        media_from_base64("", "image/png", "image")


# --- sniff_format, to_data_url -------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "jpeg", "gif", "webp", "bmp", "tiff"])
def test_image_formats_are_sniffed_from_magic_bytes(fmt: str) -> None:
    assert sniff_format(make_image(fmt=fmt)) == fmt


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (make_mp4(), "mp4"),
        (make_mp4(brand="qt  "), "mov"),
        (make_mp4(brand="3gp5"), "3gp"),
        (b"\x00\x00\x00\x08wide" + bytes(16), "mov"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm" + bytes(8), "webm"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x88matroska" + bytes(8), "mkv"),
        (b"RIFF\x00\x00\x00\x00AVI LIST" + bytes(8), "avi"),
        (b"\x00\x00\x00\x18ftypavif\x00\x00\x00\x00avifmif1", "avif"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "heic"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", None),
        (b"BMnot really a bitmap", None),
        (b"", None),
    ],
)
def test_containers_are_sniffed_from_magic_bytes(data: bytes, expected: str | None) -> None:
    assert sniff_format(data) == expected


def test_to_data_url_is_base64_with_the_given_type() -> None:
    assert to_data_url(b"\x89PNG", "image/png") == "data:image/png;base64,iVBORw=="


# --- read_media_file: a file the caller chose to send ------------------------------------

# One file of every format read_media_file knows, and the MIME type it must report.
MEDIA_FILES: dict[str, tuple[bytes, str, str]] = {
    "jpeg": (make_image(fmt="jpeg"), "image/jpeg", "image"),
    "png": (make_image(fmt="png"), "image/png", "image"),
    "gif": (make_image(fmt="gif"), "image/gif", "image"),
    "webp": (make_image(fmt="webp"), "image/webp", "image"),
    "bmp": (make_image(fmt="bmp"), "image/bmp", "image"),
    "tiff": (make_image(fmt="tiff"), "image/tiff", "image"),
    "avif": (b"\x00\x00\x00\x18ftypavif\x00\x00\x00\x00avifmif1", "image/avif", "image"),
    "heic": (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "image/heic", "image"),
    "mp4": (make_mp4(), "video/mp4", "video"),
    "mov": (make_mp4(brand="qt  "), "video/quicktime", "video"),
    "3gp": (make_mp4(brand="3gp5"), "video/3gpp", "video"),
    "webm": (
        b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm" + bytes(8),
        "video/webm",
        "video",
    ),
    "mkv": (
        b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x88matroska" + bytes(8),
        "video/x-matroska",
        "video",
    ),
    "avi": (b"RIFF\x00\x00\x00\x00AVI LIST" + bytes(8), "video/x-msvideo", "video"),
    "mpegts": ((b"\x47" + bytes(187)) * 3, "video/mp2t", "video"),
}


def test_read_media_file_covers_every_format_the_package_knows() -> None:
    assert set(MEDIA_FILES) == IMAGE_FORMATS | VIDEO_FORMATS


@pytest.mark.parametrize("fmt", sorted(MEDIA_FILES))
def test_read_media_file_gives_kind_and_mime_type_from_the_content(
    fmt: str, tmp_path: Path
) -> None:
    data, mime, kind = MEDIA_FILES[fmt]
    (tmp_path / "upload.bin").write_bytes(data)  # the name tells nothing
    assert read_media_file(tmp_path / "upload.bin") == (data, mime, kind)


def test_read_media_file_calls_a_mov_video_quicktime(tmp_path: Path) -> None:
    (tmp_path / "clip.mov").write_bytes(make_mp4(brand="qt  "))
    found = read_media_file(str(tmp_path / "clip.mov"))
    assert (found.mime_type, found.kind) == ("video/quicktime", "video")


def test_read_media_file_trusts_the_content_over_the_name(tmp_path: Path) -> None:
    (tmp_path / "clip.mov").write_bytes(make_image(fmt="png"))
    assert read_media_file(tmp_path / "clip.mov").mime_type == "image/png"


def test_read_media_file_of_a_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedInputError, match=r"No such file to send: .*nope\.png"):
        read_media_file(tmp_path / "nope.png")


def test_read_media_file_of_a_directory_says_so(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedInputError, match="is a directory"):
        read_media_file(tmp_path)


def test_read_media_file_of_an_empty_file_says_so(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(UnsupportedInputError, match="empty.png is empty"):
        read_media_file(tmp_path / "empty.png")


def test_read_media_file_of_unknown_content_lists_what_it_knows(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("hello, not a picture")
    with pytest.raises(UnsupportedInputError, match=r"not an image or video .* video: 3gp, avi"):
        read_media_file(tmp_path / "notes.png")


def test_read_media_file_refuses_audio_naming_what_it_holds(tmp_path: Path) -> None:
    (tmp_path / "song.mp4").write_bytes(make_mp4(brand="M4A "))
    with pytest.raises(UnsupportedInputError, match=r"it holds m4a data"):
        read_media_file(tmp_path / "song.mp4")


def test_read_media_file_refuses_a_video_asked_for_as_an_image(tmp_path: Path) -> None:
    (tmp_path / "clip.png").write_bytes(make_mp4())
    with pytest.raises(UnsupportedInputError, match=r"holds a video \(mp4\), not an image"):
        read_media_file(tmp_path / "clip.png", kind="image")


def test_read_media_file_accepts_the_kind_it_was_asked_for(tmp_path: Path) -> None:
    (tmp_path / "clip.mp4").write_bytes(make_mp4())
    assert read_media_file(tmp_path / "clip.mp4", kind="video").kind == "video"


# --- prepare_media: images ------------------------------------------------------------------


def test_accepted_small_image_goes_through_byte_identical() -> None:
    data = make_image(fmt="jpeg")
    prepared = prepare_media(image_part(data), LLAMA, OPEN)
    assert prepared.data == data
    assert (prepared.format, prepared.mime_type) == ("jpeg", "image/jpeg")


def test_prepared_image_records_width_and_height() -> None:
    prepared = prepare_media(image_part(make_image(64, 48)), LLAMA, OPEN)
    assert (prepared.width, prepared.height) == (64, 48)


def test_image_from_a_data_url_goes_through_byte_identical() -> None:
    data = make_image()
    part = MediaPart(kind="image", url=to_data_url(data, "image/png"))
    assert prepare_media(part, NANO12, OPEN).data == data


def test_image_from_a_path_is_read_and_goes_through_byte_identical(tmp_path: Path) -> None:
    data = make_image(fmt="jpeg")
    (tmp_path / "a.jpg").write_bytes(data)
    prepared = prepare_media(MediaPart(kind="image", path=tmp_path / "a.jpg"), LLAMA, OPEN)
    assert (prepared.data, prepared.path) == (data, None)


def test_missing_image_file_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedInputError, match="nope.png"):
        prepare_media(MediaPart(kind="image", path=tmp_path / "nope.png"), LLAMA, OPEN)


def test_declared_mime_type_is_ignored_in_favour_of_the_bytes() -> None:
    prepared = prepare_media(image_part(make_image(fmt="png"), "image/jpeg"), LLAMA, OPEN)
    assert (prepared.format, prepared.mime_type) == ("png", "image/png")


def test_accepted_image_url_passes_through_without_a_fetch(web: tuple[str, Counter[str]]) -> None:
    base, hits = web
    prepared = prepare_media(MediaPart(kind="image", url=f"{base}/pic.png"), LLAMA, OPEN)
    assert (prepared.url, prepared.data, prepared.format) == (f"{base}/pic.png", None, "png")
    assert hits["pic.png"] == 0


def test_image_url_without_extension_passes_through() -> None:
    part = MediaPart(kind="image", url="https://example.com/render?id=7")
    assert prepare_media(part, LLAMA, OPEN).url == "https://example.com/render?id=7"


def test_any_image_url_passes_through_to_a_model_taking_any_format() -> None:
    part = MediaPart(kind="image", url="https://example.com/anim.gif")
    assert prepare_media(part, GENERIC, OPEN).url == "https://example.com/anim.gif"


def test_image_url_in_an_unaccepted_format_is_fetched_and_converted(
    web: tuple[str, Counter[str]],
) -> None:
    base, hits = web
    prepared = prepare_media(MediaPart(kind="image", url=f"{base}/pic.gif"), LLAMA, OPEN)
    assert hits["pic.gif"] == 1
    assert (prepared.url, prepared.format) == (None, "png")
    assert decode(prepared.data or b"").convert("RGB").getpixel((5, 5)) == (255, 0, 0)


def test_fetched_image_is_sniffed_not_judged_by_its_extension(
    web: tuple[str, Counter[str]],
) -> None:
    base, _ = web
    prepared = prepare_media(MediaPart(kind="image", url=f"{base}/real-png.gif"), LLAMA, OPEN)
    assert prepared.data == make_image(fmt="png")


def test_fetch_goes_through_the_policys_http_client(web: tuple[str, Counter[str]]) -> None:
    base, _ = web
    seen: list[str] = []
    with httpx.Client(
        headers={"x-media-pass": "let-me-in"},
        event_hooks={"request": [lambda r: seen.append(str(r.url))]},
    ) as client:
        policy = MediaPolicy(http_client=client, allowed_hosts=("127.0.0.1",))
        part = MediaPart(kind="image", url=f"{base}/members-only.gif")
        prepared = prepare_media(part, LLAMA, policy)
    assert seen == [f"{base}/members-only.gif"]
    assert prepared.format == "png"  # the server saw the client's header and answered


def test_fetch_without_a_policy_client_uses_a_plain_one(web: tuple[str, Counter[str]]) -> None:
    base, _ = web
    part = MediaPart(kind="image", url=f"{base}/members-only.gif")
    with pytest.raises(UnsupportedInputError, match="HTTP 403"):
        prepare_media(part, LLAMA, OPEN)


def test_fetch_leaves_the_policys_http_client_open(web: tuple[str, Counter[str]]) -> None:
    base, _ = web
    with httpx.Client() as client:
        prepare_media(
            MediaPart(kind="image", url=f"{base}/pic.gif"),
            LLAMA,
            MediaPolicy(http_client=client, allowed_hosts=("127.0.0.1",)),
        )
        assert not client.is_closed


def test_fetch_goes_through_an_httpx2_client_too(web: tuple[str, Counter[str]]) -> None:
    httpx2 = pytest.importorskip("httpx2")  # the client type openai 3.x takes
    base, _ = web
    with httpx2.Client(headers={"x-media-pass": "let-me-in"}) as client:
        policy = MediaPolicy(http_client=client, allowed_hosts=("127.0.0.1",))
        part = MediaPart(kind="image", url=f"{base}/members-only.gif")
        assert prepare_media(part, LLAMA, policy).format == "png"


def test_fetch_through_an_httpx2_client_that_fails_is_refused_clearly() -> None:
    httpx2 = pytest.importorskip("httpx2")
    part = MediaPart(kind="image", url="http://127.0.0.1:9/a.gif")  # discard port: nothing there
    with (
        httpx2.Client() as client,
        pytest.raises(UnsupportedInputError, match="Fetching the image"),
    ):
        prepare_media(part, LLAMA, MediaPolicy(http_client=client, allowed_hosts=("127.0.0.1",)))


def test_a_pickled_policy_leaves_its_http_client_behind() -> None:
    with httpx.Client() as client:
        policy = MediaPolicy(max_remote_bytes=1234, http_client=client)
        restored = pickle.loads(pickle.dumps(policy))
    assert restored == MediaPolicy(max_remote_bytes=1234)


def test_a_copied_policy_keeps_its_http_client() -> None:
    with httpx.Client() as client:
        policy = MediaPolicy(http_client=client)
        assert copy.deepcopy(policy).http_client is client
        assert copy.copy(policy).http_client is client


def test_fetch_larger_than_declared_cap_is_refused(web: tuple[str, Counter[str]]) -> None:
    base, _ = web
    policy = MediaPolicy(max_remote_bytes=2000, allowed_hosts=("127.0.0.1",))
    with pytest.raises(UnsupportedInputError, match="max_remote_bytes"):
        prepare_media(MediaPart(kind="image", url=f"{base}/big.gif"), LLAMA, policy)


def test_streamed_fetch_is_cut_off_at_the_cap(web: tuple[str, Counter[str]]) -> None:
    base, _ = web
    policy = MediaPolicy(max_remote_bytes=2500, allowed_hosts=("127.0.0.1",))
    with pytest.raises(UnsupportedInputError, match=r"max_remote_bytes \(2500 bytes\)"):
        prepare_media(MediaPart(kind="image", url=f"{base}/stream.gif"), LLAMA, policy)


def test_fetch_answered_with_404_is_refused_with_the_status(web: tuple[str, Counter[str]]) -> None:
    base, _ = web
    with pytest.raises(UnsupportedInputError, match="HTTP 404"):
        prepare_media(MediaPart(kind="image", url=f"{base}/gone.gif"), LLAMA, OPEN)


def test_slow_fetch_times_out_naming_the_setting(web: tuple[str, Counter[str]]) -> None:
    base, _ = web
    policy = MediaPolicy(remote_timeout=0.2, allowed_hosts=("127.0.0.1",))
    try:  # the server answers only after the fetch gave up, so only the deadline ends it
        with pytest.raises(UnsupportedInputError, match="remote_timeout"):
            prepare_media(MediaPart(kind="image", url=f"{base}/slow.gif"), LLAMA, policy)
    finally:
        SLOW_RELEASE.set()


def test_unreachable_host_is_refused_clearly() -> None:
    part = MediaPart(kind="image", url="http://127.0.0.1:9/a.gif")  # discard port: nothing there
    with pytest.raises(UnsupportedInputError, match="Fetching the image .* failed"):
        prepare_media(part, LLAMA, OPEN)


def test_file_url_given_directly_as_part_url_is_refused(tmp_path: Path) -> None:
    part = MediaPart(kind="image", url=(tmp_path / "a.png").as_uri())
    with pytest.raises(UnsupportedInputError, match="pathlib.Path"):
        prepare_media(part, LLAMA, OPEN)


def test_gif_to_a_png_jpeg_model_becomes_a_png_of_the_first_frame() -> None:
    prepared = prepare_media(image_part(animated_gif((0, 200, 0), (0, 0, 255))), LLAMA, OPEN)
    image = decode(prepared.data or b"")
    assert (prepared.format, image.format) == ("png", "PNG")
    assert image.convert("RGB").getpixel((20, 15)) == (0, 200, 0)


def test_gif_to_a_model_that_takes_gif_goes_through_byte_identical() -> None:
    data = animated_gif((0, 200, 0), (0, 0, 255))
    assert prepare_media(image_part(data), GEMMA, OPEN).data == data


def test_transparent_image_converted_to_jpeg_is_flattened_onto_white() -> None:
    prepared = prepare_media(image_part(make_image(color=(0, 0, 0, 0))), JPEG_ONLY, OPEN)
    image = decode(prepared.data or b"")
    assert (prepared.format, image.mode) == ("jpeg", "RGB")
    assert all(channel > 250 for channel in image.getpixel((10, 10)))  # type: ignore[union-attr]


def test_unaccepted_format_without_a_conversion_target_is_refused_listing_formats() -> None:
    with pytest.raises(UnsupportedInputError, match=r"accepts images as jpeg, png.*is webp"):
        prepare_media(image_part(make_image(fmt="webp")), NO_CONVERSION, OPEN)


def test_unrecognised_bytes_as_image_are_refused_naming_the_part() -> None:
    with pytest.raises(UnsupportedInputError, match=r"image \(11 bytes\)"):
        prepare_media(image_part(b"hello world"), LLAMA, OPEN)


def test_truncated_jpeg_is_refused_as_corrupt() -> None:
    data = make_photo(320, 240)
    with pytest.raises(UnsupportedInputError, match="corrupt or truncated"):
        prepare_media(image_part(data[: len(data) // 2]), LLAMA, OPEN)


def test_png_signature_followed_by_garbage_is_refused_as_corrupt() -> None:
    with pytest.raises(UnsupportedInputError, match="cannot be decoded"):
        prepare_media(image_part(b"\x89PNG\r\n\x1a\n" + bytes(100)), LLAMA, OPEN)


def test_video_bytes_sent_as_an_image_are_refused_pointing_to_video_parts() -> None:
    with pytest.raises(UnsupportedInputError, match="send a video as a video part"):
        prepare_media(image_part(make_mp4()), GEMMA, OPEN)


def test_image_to_a_model_without_images_is_refused_naming_model_and_inputs() -> None:
    with pytest.raises(UnsupportedInputError) as caught:
        prepare_media(image_part(make_image()), OMNI, OPEN)
    message = str(caught.value)
    assert "nvidia/nemotron-3-nano-omni/video" in message
    assert "video (mp4)" in message


def test_large_photo_is_downscaled_to_the_models_pixel_budget() -> None:
    original = make_photo()  # 4000x3000, 12 MP
    prepared = prepare_media(image_part(original), LLAMA, OPEN)
    assert LLAMA.max_image_pixels is not None
    assert (prepared.width or 0) * (prepared.height or 0) <= LLAMA.max_image_pixels
    assert (prepared.width, prepared.height) == (2048, 1536)
    assert prepared.format == "jpeg"
    assert len(prepared.data or b"") < len(original)
    assert decode(prepared.data or b"").size == (2048, 1536)


def test_downscale_keeps_the_aspect_ratio_and_format() -> None:
    policy = MediaPolicy(max_image_pixels=10_000)
    prepared = prepare_media(image_part(make_photo(640, 360)), GENERIC, policy)
    assert prepared.format == "jpeg"
    assert (prepared.width or 0) * (prepared.height or 0) <= 10_000
    assert abs((prepared.width or 0) / (prepared.height or 1) - 640 / 360) < 0.02


def test_downscaled_png_stays_png() -> None:
    image = decode(make_photo(300, 300))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    prepared = prepare_media(
        image_part(buffer.getvalue()), GENERIC, MediaPolicy(max_image_pixels=900)
    )
    assert (prepared.format, decode(prepared.data or b"").format) == ("png", "PNG")
    assert (prepared.width, prepared.height) == (30, 30)


def test_policy_pixel_budget_overrides_the_profiles() -> None:
    prepared = prepare_media(
        image_part(make_photo(400, 300)), LLAMA, MediaPolicy(max_image_pixels=3_000)
    )
    assert (prepared.width or 0) * (prepared.height or 0) <= 3_000


def test_downscale_can_be_switched_off_by_policy() -> None:
    data = make_photo(400, 300)
    policy = MediaPolicy(downscale=False, max_image_pixels=3_000)
    assert prepare_media(image_part(data), LLAMA, policy).data == data


def test_downscale_keeps_the_original_when_reencoding_is_not_smaller() -> None:
    data = noisy_low_quality_jpeg(300, 300)
    prepared = prepare_media(image_part(data), GENERIC, MediaPolicy(max_image_pixels=85_000))
    assert prepared.data == data
    assert (prepared.width, prepared.height) == (300, 300)


def test_downscale_applies_exif_orientation_to_the_pixels() -> None:
    data = jpeg_with_orientation(400, 200, 6)  # stored landscape, shown portrait
    prepared = prepare_media(image_part(data), GENERIC, MediaPolicy(max_image_pixels=20_000))
    image = decode(prepared.data or b"")
    assert image.width < image.height
    assert (prepared.width, prepared.height) == image.size
    assert image.getexif().get(0x0112) in (None, 1)


def test_camera_jpeg_with_a_preview_picture_is_downscaled_like_any_photo() -> None:
    photo, preview = decode(make_photo(400, 300)), Image.new("RGB", (80, 60))
    buffer = io.BytesIO()
    photo.save(buffer, "MPO", save_all=True, append_images=[preview])  # as cameras write
    prepared = prepare_media(
        image_part(buffer.getvalue()), GENERIC, MediaPolicy(max_image_pixels=20_000)
    )
    assert prepared.format == "jpeg"
    assert (prepared.width or 0) * (prepared.height or 0) <= 20_000


def test_16_bit_grey_image_keeps_its_tones_when_converted() -> None:
    buffer = io.BytesIO()
    Image.new("I;16", (40, 30), 40_000).save(buffer, "PNG")
    prepared = prepare_media(image_part(buffer.getvalue()), JPEG_ONLY, OPEN)
    assert decode(prepared.data or b"").getpixel((5, 5)) == pytest.approx(40_000 / 256, abs=2)


def test_untouched_image_reports_its_displayed_size() -> None:
    prepared = prepare_media(image_part(jpeg_with_orientation(64, 32, 6)), GENERIC, OPEN)
    assert (prepared.width, prepared.height) == (32, 64)


def test_accepted_animation_is_not_downscaled_to_a_still() -> None:
    data = animated_gif((1, 2, 3), (4, 5, 6))  # 40x30
    assert prepare_media(image_part(data), GEMMA, MediaPolicy(max_image_pixels=100)).data == data


async def test_async_prepare_gives_the_same_result() -> None:
    data = make_image()
    prepared = await aprepare_media(image_part(data), LLAMA, OPEN)
    assert prepared.data == data


# --- the prepared-image cache ---------------------------------------------------------------


def test_preparing_the_same_image_twice_decodes_it_once() -> None:
    data = make_photo(320, 240)
    first = prepare_media(image_part(data), LLAMA, OPEN)
    second = prepare_media(image_part(data), LLAMA, OPEN)
    assert second is first
    info = cache_info()
    assert (info.decodes, info.hits, info.misses) == (1, 1, 1)


def test_same_bytes_from_data_and_data_url_share_one_entry() -> None:
    data = make_image()
    prepare_media(image_part(data), LLAMA, OPEN)
    prepare_media(MediaPart(kind="image", url=to_data_url(data, "image/png")), LLAMA, OPEN)
    assert cache_info().decodes == 1


def test_unchanged_file_is_not_decoded_again(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(make_image())
    prepare_media(MediaPart(kind="image", path=path), LLAMA, OPEN)
    prepare_media(MediaPart(kind="image", path=path), LLAMA, OPEN)
    assert cache_info().decodes == 1


def test_changed_file_is_decoded_again(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(make_image(color=(1, 2, 3)))
    prepare_media(MediaPart(kind="image", path=path), LLAMA, OPEN)
    path.write_bytes(make_image(color=(200, 2, 3)))
    os.utime(path, ns=(1, 1))
    prepared = prepare_media(MediaPart(kind="image", path=path), LLAMA, OPEN)
    assert cache_info().decodes == 2
    assert prepared.data == make_image(color=(200, 2, 3))


def test_different_limits_are_cached_apart() -> None:
    data = make_photo(200, 100)
    small = prepare_media(image_part(data), GENERIC, MediaPolicy(max_image_pixels=5_000))
    full = prepare_media(image_part(data), GENERIC, OPEN)
    assert cache_info().decodes == 2
    assert (small.width or 0) < (full.width or 0)


def test_url_passthrough_is_not_cached() -> None:
    prepare_media(MediaPart(kind="image", url="https://example.com/a.png"), LLAMA, OPEN)
    assert cache_info().entries == 0


def test_cache_evicts_the_least_recently_used_beyond_its_entry_limit() -> None:
    set_cache_limits(max_entries=2)
    a, b, c = (make_image(color=(i, i, i)) for i in (1, 2, 3))
    for data in (a, b, a, c):  # touching a again makes b the oldest
        prepare_media(image_part(data), LLAMA, OPEN)
    assert cache_info().entries == 2
    prepare_media(image_part(a), LLAMA, OPEN)
    assert cache_info().decodes == 3
    prepare_media(image_part(b), LLAMA, OPEN)
    assert cache_info().decodes == 4


def test_cache_stays_within_its_byte_budget() -> None:
    images = [make_image(color=(i, 0, 0)) for i in range(5)]
    set_cache_limits(max_bytes=len(images[-1]) + len(images[-2]))  # room for the last two
    for data in images:
        prepare_media(image_part(data), LLAMA, OPEN)
    info = cache_info()
    assert info.bytes <= info.max_bytes
    assert info.entries == 2
    prepare_media(image_part(images[-1]), LLAMA, OPEN)
    assert cache_info().decodes == 5


def test_cache_is_consistent_under_concurrent_use() -> None:
    images = [make_image(color=(i, 9, 9)) for i in range(6)]
    set_cache_limits(max_entries=4)
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work(seed: int) -> None:
        barrier.wait()
        try:
            for i in range(60):
                data = images[(seed + i) % len(images)]
                assert prepare_media(image_part(data), LLAMA, OPEN).data == data
        except BaseException as exc:  # collected, so the assertion below reports it
            errors.append(exc)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(8)))
    info = cache_info()
    assert errors == []
    assert info.hits + info.misses == 8 * 60
    assert info.entries <= 4


# --- prepare_media: video -------------------------------------------------------------------


def test_video_url_passes_through_unmeasured() -> None:
    part = MediaPart(kind="video", url="https://example.com/clip.mp4")
    prepared = prepare_media(part, NANO12, OPEN)
    assert (prepared.url, prepared.video, prepared.mime_type) == (part.url, None, "video/mp4")


def test_video_url_whose_extension_names_an_unaccepted_container_is_refused() -> None:
    part = MediaPart(kind="video", url="https://example.com/clip.webm")
    with pytest.raises(UnsupportedInputError, match="accepts video as mp4"):
        prepare_media(part, OMNI, OPEN)


def test_video_bytes_are_measured_and_sent_byte_identical() -> None:
    data = make_mp4(3.0, 640, 360, 10.0)
    prepared = prepare_media(video_part(data), NANO12, OPEN)
    assert prepared.data == data
    assert prepared.video == VideoInfo(duration_s=3.0, width=640, height=360, fps=10.0, frames=30)
    assert (prepared.format, prepared.mime_type, prepared.width) == ("mp4", "video/mp4", 640)


def test_video_data_url_is_decoded_and_measured() -> None:
    data = make_mp4(1.0)
    prepared = prepare_media(MediaPart(kind="video", url=to_data_url(data, "video/mp4")), GEMMA)
    assert prepared.data == data
    assert prepared.video is not None and prepared.video.duration_s == 1.0


def test_video_file_stays_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(make_mp4(2.0))
    prepared = prepare_media(MediaPart(kind="video", path=path), OMNI, OPEN)
    assert (prepared.path, prepared.data) == (path.resolve(), None)
    assert prepared.size == path.stat().st_size
    assert prepared.as_url() == to_data_url(path.read_bytes(), "video/mp4")


def test_large_video_file_is_measured_without_reading_its_media_data(tmp_path: Path) -> None:
    # ftyp | mdat of 5 GiB (64-bit size, sparse on disk) | moov
    sample = make_mp4(90.0, 1920, 1080, 25.0, moov_first=False)
    ftyp_len = struct.unpack_from(">I", sample)[0]
    mdat_len = struct.unpack_from(">I", sample, ftyp_len)[0]
    gap = 5 * 1024**3
    path = tmp_path / "big.mp4"
    with open(path, "wb") as file:
        file.write(sample[:ftyp_len] + struct.pack(">I4sQ", 1, b"mdat", 16 + gap))
        file.seek(gap, os.SEEK_CUR)
        file.write(sample[ftyp_len + mdat_len :])
    tracemalloc.start()
    try:
        roomy = MediaPolicy(max_video_bytes=6 * 1024**3)  # past the default cap on purpose
        prepared = prepare_media(MediaPart(kind="video", path=path), OMNI, roomy)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert prepared.video == VideoInfo(90.0, 1920, 1080, 25.0, 2250)
    assert peak < 1_000_000


def test_container_the_model_does_not_take_is_refused() -> None:
    webm = b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm" + bytes(64)
    with pytest.raises(UnsupportedInputError, match="accepts video as mp4.*is webm"):
        prepare_media(video_part(webm), NANO12, OPEN)


def test_mov_to_an_mp4_model_is_refused_with_a_remux_hint() -> None:
    with pytest.raises(UnsupportedInputError, match="ffmpeg -i in.mov -c copy out.mp4"):
        prepare_media(video_part(make_mp4(brand="qt  ")), OMNI, OPEN)


def test_video_longer_than_the_model_allows_is_refused_with_both_numbers() -> None:
    with pytest.raises(UnsupportedInputError, match=r"lasts 150\.00 s.*at most 120 s"):
        prepare_media(video_part(make_mp4(150.0, 640, 360, 2.0)), OMNI, OPEN)


def test_video_taller_than_the_model_allows_is_refused_with_both_numbers() -> None:
    with pytest.raises(UnsupportedInputError, match=r"3840x2160.*up to 1080p"):
        prepare_media(video_part(make_mp4(5.0, 3840, 2160, 2.0)), OMNI, OPEN)


def test_video_exactly_at_the_limits_is_accepted() -> None:
    prepared = prepare_media(video_part(make_mp4(120.0, 1920, 1080, 1.0)), OMNI, OPEN)
    assert prepared.video == VideoInfo(120.0, 1920, 1080, 1.0, 120)


def test_portrait_1080p_video_is_within_a_1080p_limit() -> None:
    prepared = prepare_media(video_part(make_mp4(5.0, 1920, 1080, 2.0, rotation=90)), OMNI, OPEN)
    assert prepared.video is not None
    assert (prepared.video.width, prepared.video.height) == (1080, 1920)


def test_video_to_a_model_without_video_is_refused_naming_model_and_inputs() -> None:
    with pytest.raises(UnsupportedInputError) as caught:
        prepare_media(video_part(make_mp4()), LLAMA, OPEN)
    message = str(caught.value)
    assert "nvidia/llama-3.1-nemotron-nano-vl-8b-v1" in message
    assert "images (jpeg, png)" in message


def test_image_bytes_sent_as_a_video_are_refused_pointing_to_image_parts() -> None:
    with pytest.raises(UnsupportedInputError, match="send an image as an image part"):
        prepare_media(video_part(make_image()), NANO12, OPEN)


def test_unrecognised_bytes_as_video_are_refused() -> None:
    with pytest.raises(UnsupportedInputError, match="not in a video container"):
        prepare_media(video_part(b"just some text"), NANO12, OPEN)


def test_mp4_without_a_video_track_is_refused() -> None:
    audio_only = make_mp4().replace(b"vide", b"soun")
    with pytest.raises(UnsupportedInputError, match=r"video \(\d+ bytes\).*no video track"):
        prepare_media(video_part(audio_only), NANO12, OPEN)


# --- PreparedMedia ---------------------------------------------------------------------------


def test_prepared_media_repr_never_shows_the_bytes() -> None:
    prepared = PreparedMedia("image", None, b"\x89PNG-secret", None, "image/png", "png")
    assert "secret" not in repr(prepared)


def test_prepared_media_as_url_prefers_the_http_url() -> None:
    prepared = PreparedMedia("image", "https://x.test/a.png", None, None, None, "png")
    assert (prepared.as_url(), prepared.size) == ("https://x.test/a.png", None)


def test_prepared_media_as_url_inlines_bytes_with_the_sniffed_type() -> None:
    data = make_image(fmt="jpeg")
    prepared = prepare_media(image_part(data, "image/png"), LLAMA, OPEN)
    assert prepared.as_url() == to_data_url(data, "image/jpeg")
    assert prepared.size == len(data)


# --- read_video_info --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("duration", "width", "height", "fps"),
    [
        (2.0, 320, 240, 4.0),
        (150.0, 1920, 1080, 30.0),
        (61.5, 3840, 2160, 29.97),
        (7.25, 1280, 720, 23.976),
        (0.5, 64, 48, 60.0),
    ],
)
def test_video_info_reads_back_what_make_mp4_wrote(
    duration: float, width: int, height: int, fps: float
) -> None:
    info = read_video_info(make_mp4(duration, width, height, fps))
    assert info == VideoInfo(duration, width, height, fps, round(duration * fps))


def test_video_info_reads_a_file_path(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(make_mp4(4.0, 640, 480, 8.0))
    assert read_video_info(path) == VideoInfo(4.0, 640, 480, 8.0, 32)


def test_video_info_finds_moov_after_mdat() -> None:
    info = read_video_info(make_mp4(3.0, 320, 240, 5.0, moov_first=False))
    assert info == VideoInfo(3.0, 320, 240, 5.0, 15)


def test_video_info_follows_64_bit_box_sizes() -> None:
    info = read_video_info(make_mp4(3.0, 320, 240, 5.0, moov_first=False, large_size=True))
    assert info == VideoInfo(3.0, 320, 240, 5.0, 15)


def test_video_info_reads_version_1_headers() -> None:
    assert read_video_info(make_mp4(2.0, 320, 240, 4.0, version=1)) == VideoInfo(
        2.0, 320, 240, 4.0, 8
    )


def test_video_info_reads_a_last_box_whose_size_is_zero() -> None:
    data = bytearray(make_mp4(2.0, 320, 240, 4.0))  # ftyp | moov | mdat
    mdat_at = bytes(data).index(b"mdat") - 4
    data[mdat_at : mdat_at + 4] = bytes(4)
    assert read_video_info(bytes(data)).frames == 8


def test_video_info_chooses_the_video_track_by_handler() -> None:
    info = read_video_info(make_mp4(2.0, 320, 240, 4.0, audio_track=True))
    assert info == VideoInfo(2.0, 320, 240, 4.0, 8)


@pytest.mark.parametrize(
    ("rotation", "size"), [(90, (240, 320)), (180, (320, 240)), (270, (240, 320))]
)
def test_video_info_reports_the_displayed_size_of_rotated_video(
    rotation: int, size: tuple[int, int]
) -> None:
    info = read_video_info(make_mp4(2.0, 320, 240, 4.0, rotation=rotation))
    assert (info.width, info.height) == size


def test_video_info_refuses_what_is_not_an_mp4() -> None:
    with pytest.raises(UnsupportedInputError, match="Not an MP4"):
        read_video_info(make_image())


def test_video_info_refuses_an_mp4_cut_before_its_moov() -> None:
    data = make_mp4(2.0, moov_first=False)
    with pytest.raises(UnsupportedInputError, match="malformed or truncated"):
        read_video_info(data[: len(data) - 50])


def test_video_info_refuses_an_mp4_without_a_video_track() -> None:
    with pytest.raises(UnsupportedInputError, match="no video track"):
        read_video_info(make_mp4().replace(b"vide", b"soun"))


_FUZZ_BASE = make_mp4(2.0, 320, 240, 4.0, audio_track=True)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cut=st.integers(min_value=0, max_value=len(_FUZZ_BASE)),
    flips=st.lists(st.tuples(st.integers(0, len(_FUZZ_BASE) - 1), st.integers(0, 255)), max_size=4),
)
def test_video_info_on_damaged_files_returns_info_or_unsupported_input(
    cut: int, flips: list[tuple[int, int]]
) -> None:
    data = bytearray(_FUZZ_BASE[:cut])
    for at, value in flips:
        if at < len(data):
            data[at] = value
    try:
        info = read_video_info(bytes(data))
    except UnsupportedInputError:
        return
    assert isinstance(info, VideoInfo)


def test_media_and_samples_import_no_framework() -> None:
    probe = (
        "import sys, nemovlm.media, nemovlm.samples; "
        "print(sorted(m for m in sys.modules if m.startswith(('langchain', 'llama_index'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
