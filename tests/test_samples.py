"""nemovlm.samples: the media the project makes itself must be what it says it is."""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator

import pytest
from PIL import Image

from nemovlm.media import VideoInfo, read_video_info, sniff_format
from nemovlm.samples import make_chart, make_image, make_mp4, make_photo


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[bytes, int, int]]:
    """(type, body start, box end) of each box in data[start:end]."""
    end = len(data) if end is None else end
    pos = start
    while pos < end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            size, header = struct.unpack_from(">Q", data, pos + 8)[0], 16
        yield kind, pos + header, pos + size
        pos += size


def find(data: bytes, *path: bytes) -> tuple[int, int]:
    """Body start and end of the box at ``path`` (first match at each level)."""
    start, end = 0, len(data)
    for wanted in path:
        start, end = next((s, e) for kind, s, e in boxes(data, start, end) if kind == wanted)
        if wanted == b"stsd":
            start += 8  # version/flags and entry count precede the entries
    return start, end


# --- make_image ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "pil_format"),
    [("png", "PNG"), ("jpeg", "JPEG"), ("jpg", "JPEG"), ("gif", "GIF"), ("webp", "WEBP")],
)
def test_make_image_writes_the_requested_format_and_size(fmt: str, pil_format: str) -> None:
    image = decode(make_image(33, 21, fmt))
    assert (image.format, image.size) == (pil_format, (33, 21))


def test_make_image_fills_with_the_given_colour() -> None:
    image = decode(make_image(10, 10, color=(200, 10, 30)))
    assert image.getpixel((0, 0)) == (200, 10, 30)


def test_make_image_with_an_rgba_colour_is_transparent() -> None:
    image = decode(make_image(8, 8, color=(0, 0, 0, 0)))
    assert (image.mode, image.getpixel((4, 4))) == ("RGBA", (0, 0, 0, 0))


def test_make_image_draws_the_text_in_a_contrasting_colour() -> None:
    plain = decode(make_image(200, 80))
    labelled = decode(make_image(200, 80, text="42"))
    assert plain.getcolors() is not None and len(plain.getcolors() or []) == 1
    assert (255, 255, 255) in {colour for _, colour in labelled.getcolors(10_000) or []}


def test_make_image_is_deterministic() -> None:
    assert make_image(50, 40, "jpeg", text="x") == make_image(50, 40, "jpeg", text="x")


def test_make_image_refuses_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="Unknown image format 'svg'"):
        make_image(fmt="svg")


def test_make_image_refuses_transparency_in_jpeg() -> None:
    with pytest.raises(ValueError, match="cannot store transparency"):
        make_image(fmt="jpeg", color=(1, 2, 3, 4))


def test_make_image_refuses_an_empty_size() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        make_image(0, 10)


# --- make_chart ----------------------------------------------------------------------------


def test_make_chart_has_the_requested_size_and_format() -> None:
    image = decode(make_chart([1, 2, 3], fmt="jpeg", size=(300, 200)))
    assert (image.format, image.size) == ("JPEG", (300, 200))


def test_make_chart_draws_a_coloured_bar_per_value() -> None:
    image = decode(make_chart([5, 5, 5], size=(600, 400))).convert("RGB")
    bar_colours = {(31, 119, 180), (255, 127, 14), (44, 160, 44)}
    seen = {colour for _, colour in image.getcolors(100_000) or []}
    assert bar_colours <= seen


def rows_with(image: Image.Image, colour: tuple[int, int, int]) -> list[int]:
    return [
        y
        for y in range(image.height)
        if colour in {c for _, c in image.crop((0, y, image.width, y + 1)).getcolors(4096) or []}
    ]


BLUE, ORANGE = (31, 119, 180), (255, 127, 14)  # the first two bar colours


def test_make_chart_bar_height_follows_the_value() -> None:
    image = decode(make_chart([10, 5], size=(400, 300))).convert("RGB")
    tall, short = rows_with(image, BLUE), rows_with(image, ORANGE)
    assert tall[-1] == short[-1]  # both stand on the zero line
    assert len(tall) == pytest.approx(2 * len(short), abs=2)


def test_make_chart_draws_negative_values_below_the_zero_line() -> None:
    image = decode(make_chart([4, -4], size=(300, 300))).convert("RGB")
    positive, negative = rows_with(image, BLUE), rows_with(image, ORANGE)
    assert negative[0] >= positive[-1]


def test_make_chart_is_deterministic() -> None:
    args = ([3, 1, 4], ["a", "b", "c"], "Pi")
    assert make_chart(*args) == make_chart(*args)


def test_make_chart_refuses_labels_that_do_not_match_the_values() -> None:
    with pytest.raises(ValueError, match="2 labels for 3 values"):
        make_chart([1, 2, 3], ["a", "b"])


def test_make_chart_refuses_no_values() -> None:
    with pytest.raises(ValueError, match="at least one value"):
        make_chart([])


# --- make_photo ----------------------------------------------------------------------------


def test_make_photo_default_is_a_12_megapixel_jpeg_of_a_few_megabytes() -> None:
    data = make_photo()
    image = Image.open(io.BytesIO(data))
    assert (image.format, image.size) == ("JPEG", (4000, 3000))
    assert 1_500_000 < len(data) < 12_000_000


def test_make_photo_is_deterministic() -> None:
    assert make_photo(320, 240) == make_photo(320, 240)


def test_make_photo_has_photo_like_detail() -> None:
    image = decode(make_photo(200, 150)).convert("RGB")
    assert len(image.getcolors(1_000_000) or []) > 5_000


# --- make_mp4 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("duration", "width", "height", "fps"),
    [
        (2.0, 320, 240, 4.0),
        (0.25, 16, 16, 8.0),
        (90.0, 1280, 720, 25.0),
        (125.5, 1920, 1080, 30.0),
        (600.0, 3840, 2160, 24.0),
        (12.0, 1920, 1080, 29.97),
        (5.0, 720, 480, 30000 / 1001),
    ],
)
def test_make_mp4_round_trips_through_read_video_info(
    duration: float, width: int, height: int, fps: float
) -> None:
    info = read_video_info(make_mp4(duration, width, height, fps))
    assert info == VideoInfo(duration, width, height, fps, round(duration * fps))


def test_make_mp4_is_sniffed_as_mp4() -> None:
    assert sniff_format(make_mp4()) == "mp4"


def test_make_mp4_lays_out_ftyp_moov_then_mdat() -> None:
    assert [kind for kind, _, _ in boxes(make_mp4())] == [b"ftyp", b"moov", b"mdat"]


def test_make_mp4_can_put_moov_after_mdat() -> None:
    kinds = [kind for kind, _, _ in boxes(make_mp4(moov_first=False))]
    assert kinds == [b"ftyp", b"mdat", b"moov"]


def test_make_mp4_holds_the_full_sample_table() -> None:
    data = make_mp4()
    start, end = find(data, b"moov", b"trak", b"mdia", b"minf", b"stbl")
    assert [k for k, _, _ in boxes(data, start, end)] == [
        b"stsd",
        b"stts",
        b"stsc",
        b"stsz",
        b"stco",
    ]


def test_make_mp4_has_a_video_handler() -> None:
    data = make_mp4()
    start, _ = find(data, b"moov", b"trak", b"mdia", b"hdlr")
    assert data[start + 8 : start + 12] == b"vide"


def test_make_mp4_sample_entry_is_avc1_carrying_width_and_height() -> None:
    data = make_mp4(3.0, 1920, 1080, 5.0)
    start, _ = find(data, b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsd")
    kind = data[start + 4 : start + 8]
    width, height = struct.unpack_from(">HH", data, start + 8 + 24)
    assert (kind, width, height) == (b"avc1", 1920, 1080)


@pytest.mark.parametrize("moov_first", [True, False])
def test_make_mp4_chunk_offset_points_at_the_samples_in_mdat(moov_first: bool) -> None:
    data = make_mp4(1.0, 64, 48, 4.0, moov_first=moov_first)
    start, _ = find(data, b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stco")
    offset = struct.unpack_from(">I", data, start + 8)[0]
    mdat_start, mdat_end = find(data, b"mdat")
    assert offset == mdat_start
    assert mdat_end - mdat_start == 4 * 8  # four 8-byte dummy samples
    assert data[offset + 4] == 0x65  # the first dummy is tagged as a key frame


def test_make_mp4_stays_small_for_long_video() -> None:
    assert len(make_mp4(120.0, 1920, 1080, 30.0)) < 64_000


def test_make_mp4_switches_to_64_bit_times_when_they_do_not_fit_32_bits() -> None:
    data = make_mp4(5_000_000.0, 64, 48, 0.01)  # 5e9 ms overflows a 32-bit mvhd duration
    start, _ = find(data, b"moov", b"mvhd")
    assert data[start] == 1
    assert read_video_info(data).duration_s == 5_000_000.0


def test_make_mp4_is_deterministic() -> None:
    assert make_mp4(3.0, 640, 360, 12.0) == make_mp4(3.0, 640, 360, 12.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"duration_s": 0}, "duration_s must be a positive number"),
        ({"fps": -1.0}, "fps must be a positive number"),
        ({"width": 70_000}, "width and height must be within"),
        ({"rotation": 45}, "rotation must be 0, 90, 180 or 270"),
        ({"version": 2}, "version must be 0 or 1"),
        ({"brand": "qt"}, "brand must be four characters"),
    ],
)
def test_make_mp4_refuses_impossible_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_mp4(**kwargs)  # type: ignore[arg-type]
