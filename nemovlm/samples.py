"""Media the project makes itself, for tests, the offline demo and the cookbooks.

Nothing is fetched at run time and every function is deterministic: the same
arguments give the same bytes (for a given Pillow build).

  ``make_image``  a flat-coloured picture, optionally with a line of text
  ``make_chart``  a labelled bar chart drawn with Pillow's ImageDraw
  ``make_photo``  a large JPEG with photo-like detail, for the downscale benchmark
  ``make_mp4``    a structurally valid MP4 whose boxes say the duration, size and fps
                  asked for (the samples are dummies: no decoder can play it)
"""

from __future__ import annotations

import io
import math
import random
import struct
from collections.abc import Sequence
from fractions import Fraction

from PIL import Image, ImageDraw, ImageFont

__all__ = ["make_chart", "make_image", "make_mp4", "make_photo"]

_WRITERS = {
    "png": "PNG",
    "jpeg": "JPEG",
    "jpg": "JPEG",
    "gif": "GIF",
    "webp": "WEBP",
    "bmp": "BMP",
    "tiff": "TIFF",
}
_NO_ALPHA = {"JPEG", "BMP"}
_BAR_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


def _writer(fmt: str) -> str:
    try:
        return _WRITERS[fmt.lower().lstrip(".")]
    except KeyError:
        raise ValueError(
            f"Unknown image format {fmt!r}; use one of {', '.join(sorted(_WRITERS))}."
        ) from None


def _save(image: Image.Image, fmt: str) -> bytes:
    writer = _writer(fmt)
    if writer in _NO_ALPHA and image.mode == "RGBA":
        raise ValueError(f"{fmt} cannot store transparency; use an RGB colour or PNG.")
    if writer == "GIF":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE)
    buffer = io.BytesIO()
    image.save(buffer, writer, **({"quality": 90} if writer in ("JPEG", "WEBP") else {}))
    return buffer.getvalue()


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    # load_default(size) needs FreeType; without it Pillow's fixed bitmap font serves.
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):  # TypeError: Pillow < 10.1 has no size=
        return ImageFont.load_default()


def _contrast(colour: tuple[int, ...]) -> tuple[int, int, int]:
    r, g, b = colour[:3]
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def make_image(
    width: int = 64,
    height: int = 48,
    fmt: str = "png",
    *,
    text: str | None = None,
    color: tuple[int, ...] = (30, 120, 200),
) -> bytes:
    """A ``width`` x ``height`` picture filled with ``color`` (RGB, or RGBA for
    transparency), with ``text`` centred in a contrasting colour when given."""
    if width < 1 or height < 1:
        raise ValueError(f"Image size must be positive, got {width}x{height}.")
    if len(color) not in (3, 4):
        raise ValueError(f"color must be an RGB or RGBA tuple, got {color!r}.")
    image = Image.new("RGBA" if len(color) == 4 else "RGB", (width, height), tuple(color))
    if text:
        draw = ImageDraw.Draw(image)
        font = _font(max(8, min(height // 3, 2 * width // max(1, len(text)))))
        draw.text((width / 2, height / 2), text, fill=_contrast(color), font=font, anchor="mm")
    return _save(image, fmt)


def make_chart(
    values: Sequence[float],
    labels: Sequence[str] | None = None,
    title: str = "",
    fmt: str = "png",
    size: tuple[int, int] = (640, 400),
) -> bytes:
    """A bar chart of ``values`` (negative ones hang below a zero line), each bar
    labelled below and its value printed at its end, ``title`` on top."""
    if not values:
        raise ValueError("make_chart needs at least one value.")
    if labels is not None and len(labels) != len(values):
        raise ValueError(f"Got {len(labels)} labels for {len(values)} values; give one each.")
    if any(not math.isfinite(v) for v in values):
        raise ValueError("Chart values must be finite numbers.")
    width, height = size
    if width < 100 or height < 100:
        raise ValueError(f"A chart needs at least 100x100 pixels, got {width}x{height}.")
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    text_px = max(10, height // 28)
    font, title_font = _font(text_px), _font(text_px + 6)
    top = 10 + (text_px + 16 if title else 0)
    bottom = height - (2 * text_px + 10)  # room for the labels
    left, right = max(40, width // 12), width - 20
    if title:
        draw.text((width / 2, 8), title, fill=(0, 0, 0), font=title_font, anchor="ma")

    high, low = max(0.0, *values), min(0.0, *values)
    span = (high - low) or 1.0
    plot_top, plot_bottom = top + text_px + 4, bottom - (text_px + 4 if low < 0 else 0)

    def y_of(value: float) -> float:
        return plot_bottom - (value - low) / span * (plot_bottom - plot_top)

    zero = y_of(0.0)
    draw.line([(left, plot_top), (left, plot_bottom)], fill=(80, 80, 80), width=2)
    draw.line([(left, zero), (right, zero)], fill=(80, 80, 80), width=2)
    slot = (right - left) / len(values)
    for i, value in enumerate(values):
        x0 = left + i * slot + slot * 0.15
        x1 = left + (i + 1) * slot - slot * 0.15
        y = y_of(value)
        draw.rectangle(
            [x0, min(y, zero), x1, max(y, zero)], fill=_BAR_COLOURS[i % len(_BAR_COLOURS)]
        )
        shown = f"{value:g}"
        anchor = "md" if value >= 0 else "ma"
        draw.text(
            ((x0 + x1) / 2, y + (-3 if value >= 0 else 3)),
            shown,
            fill=(0, 0, 0),
            font=font,
            anchor=anchor,
        )
        if labels is not None:
            draw.text(
                ((x0 + x1) / 2, bottom + 6), labels[i], fill=(0, 0, 0), font=font, anchor="ma"
            )
    return _save(image, fmt)


def make_photo(width: int = 4000, height: int = 3000) -> bytes:
    """A JPEG (quality 92) with photo-like detail: smooth colour gradients, blotchy
    mid-scale texture and fine grain, so it compresses like a camera picture (a few MB
    at 12 MP) rather than like a flat test card. Seeded, hence deterministic."""
    if width < 16 or height < 16:
        raise ValueError(f"A photo needs at least 16x16 pixels, got {width}x{height}.")
    rng = random.Random(20261120)
    red = Image.linear_gradient("L").resize((width, height))
    green = Image.radial_gradient("L").resize((width, height))
    blue = Image.linear_gradient("L").rotate(90).resize((width, height))
    image = Image.merge("RGB", (red, green, blue))
    small_w, small_h = max(1, width // 16), max(1, height // 16)
    blotches = Image.frombytes("RGB", (small_w, small_h), rng.randbytes(small_w * small_h * 3))
    image = Image.blend(image, blotches.resize((width, height), Image.Resampling.BICUBIC), 0.35)
    grain = Image.frombytes("L", (width, height), rng.randbytes(width * height))
    image = Image.blend(image, grain.convert("RGB"), 0.06)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


# --- MP4 --------------------------------------------------------------------------------

_IDENTITY = (0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
_U32 = 0xFFFFFFFF
# Dummy H.264 parameter sets and samples: the right shape, no real picture behind them.
_SPS = bytes.fromhex("6742c01eda0280bfe5840000030004000003f03c58b920")
_PPS = bytes.fromhex("68ce3c80")
_SAMPLE_LEN = 8


def _box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I4s", 8 + len(body), kind) + body


def _full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return _box(kind, struct.pack(">I", (version << 24) | flags), *payload)


def _matrix(rotation: int, width: int, height: int) -> bytes:
    # 16.16 fixed a, b, c, d with translation so the turned picture stays in view.
    turns = {
        0: _IDENTITY,
        90: (0, 0x10000, 0, -0x10000, 0, 0, height << 16, 0, 0x40000000),
        180: (-0x10000, 0, 0, 0, -0x10000, 0, width << 16, height << 16, 0x40000000),
        270: (0, -0x10000, 0, 0x10000, 0, 0, 0, width << 16, 0x40000000),
    }
    if rotation not in turns:
        raise ValueError(f"rotation must be 0, 90, 180 or 270, got {rotation}.")
    return struct.pack(">9i", *turns[rotation])


def _mvhd(version: int, timescale: int, duration: int) -> bytes:
    if version == 1:
        times = struct.pack(">QQIQ", 0, 0, timescale, duration)
    else:
        times = struct.pack(">IIII", 0, 0, timescale, duration)
    rest = struct.pack(">iH10x", 0x10000, 0x0100) + struct.pack(">9i", *_IDENTITY)
    return _full_box(b"mvhd", version, 0, times, rest, bytes(24), struct.pack(">I", 3))


def _tkhd(
    version: int, track_id: int, duration: int, volume: int, matrix: bytes, size: tuple[int, int]
) -> bytes:
    if version == 1:
        times = struct.pack(">QQIIQ", 0, 0, track_id, 0, duration)
    else:
        times = struct.pack(">IIIII", 0, 0, track_id, 0, duration)
    layout = struct.pack(">8xhhHH", 0, 0, volume, 0)
    dims = struct.pack(">II", size[0] << 16, size[1] << 16)
    return _full_box(b"tkhd", version, 0x000003, times, layout, matrix, dims)


def _mdhd(version: int, timescale: int, duration: int) -> bytes:
    if version == 1:
        times = struct.pack(">QQIQ", 0, 0, timescale, duration)
    else:
        times = struct.pack(">IIII", 0, 0, timescale, duration)
    return _full_box(b"mdhd", version, 0, times, struct.pack(">HH", 0x55C4, 0))  # 'und'


def _hdlr(handler: bytes, name: bytes) -> bytes:
    return _full_box(b"hdlr", 0, 0, struct.pack(">I4s12x", 0, handler), name + b"\0")


def _dinf() -> bytes:
    return _box(b"dinf", _full_box(b"dref", 0, 0, struct.pack(">I", 1), _full_box(b"url ", 0, 1)))


def _stbl(entry: bytes, samples: int, delta: int, sample_len: int, offset: int) -> bytes:
    return _box(
        b"stbl",
        _full_box(b"stsd", 0, 0, struct.pack(">I", 1), entry),
        _full_box(b"stts", 0, 0, struct.pack(">III", 1, samples, delta)),
        _full_box(b"stsc", 0, 0, struct.pack(">IIII", 1, 1, samples, 1)),
        _full_box(b"stsz", 0, 0, struct.pack(">II", sample_len, samples)),
        _full_box(b"stco", 0, 0, struct.pack(">II", 1, offset)),
    )


def _avc1(width: int, height: int) -> bytes:
    avcc = _box(
        b"avcC",
        bytes([1, 0x42, 0xC0, 0x1E, 0xFF, 0xE1]),
        struct.pack(">H", len(_SPS)),
        _SPS,
        bytes([1]),
        struct.pack(">H", len(_PPS)),
        _PPS,
    )
    name = b"nemovlm dummy"
    return _box(
        b"avc1",
        struct.pack(">6xH", 1),  # data_reference_index
        struct.pack(">HH12x", 0, 0),
        struct.pack(">HHIII", width, height, 0x00480000, 0x00480000, 0),
        struct.pack(">H", 1),  # frame_count
        bytes([len(name)]) + name.ljust(31, b"\0"),
        struct.pack(">Hh", 0x0018, -1),
        avcc,
    )


def _mp4a() -> bytes:
    return _box(
        b"mp4a",
        struct.pack(">6xH", 1),
        struct.pack(">8xHHHHI", 2, 16, 0, 0, 44100 << 16),
    )


def _video_timing(fps: float) -> tuple[int, int]:
    """Media timescale and per-frame delta whose ratio is exactly ``fps``."""
    ratio = Fraction(fps).limit_denominator(10_000)
    scale = math.ceil(1000 / ratio.numerator)  # a timescale of at least 1000 ticks/s
    return ratio.numerator * scale, ratio.denominator * scale


def make_mp4(
    duration_s: float = 2.0,
    width: int = 320,
    height: int = 240,
    fps: float = 4.0,
    *,
    moov_first: bool = True,
    large_size: bool = False,
    version: int = 0,
    rotation: int = 0,
    audio_track: bool = False,
    brand: str = "isom",
) -> bytes:
    """A small, structurally valid MP4: ``ftyp``, ``moov`` (``mvhd``, one video
    ``trak`` with ``tkhd``/``mdia``/``mdhd``/``hdlr('vide')``/``minf``/``stbl`` holding
    ``stsd('avc1')``, ``stts``, ``stsc``, ``stsz``, ``stco``) and ``mdat``.

    The samples are 8-byte dummies, so **no real decoder can play the file**; its
    boxes, though, state exactly the duration (to the millisecond), the size, the
    frame rate and ``round(duration_s * fps)`` frames, which is what
    ``nemovlm.media.read_video_info`` reads back.

    The keyword options shape the container the way real files vary: ``moov_first``
    (False puts ``moov`` after ``mdat``, as cameras do), ``large_size`` (a 64-bit
    ``mdat`` size), ``version`` (1: 64-bit ``mvhd``/``tkhd``/``mdhd`` times),
    ``rotation`` (a display matrix, as phones write), ``audio_track`` (an audio
    ``trak`` placed before the video one) and ``brand`` (``"qt  "`` makes a MOV).
    """
    if not (duration_s > 0 and math.isfinite(duration_s)):
        raise ValueError(f"duration_s must be a positive number, got {duration_s!r}.")
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be a positive number, got {fps!r}.")
    if not (0 < width <= 0xFFFF and 0 < height <= 0xFFFF):
        raise ValueError(f"width and height must be within 1..65535, got {width}x{height}.")
    if version not in (0, 1):
        raise ValueError(f"version must be 0 or 1, got {version}.")
    if len(brand) != 4:
        raise ValueError(f"brand must be four characters, got {brand!r}.")
    frames = max(1, round(duration_s * fps))
    timescale, delta = _video_timing(fps)
    movie_ms = round(duration_s * 1000)
    media_ticks = frames * delta
    if max(movie_ms, media_ticks) > _U32:
        version = 1
    audio_samples = max(1, round(duration_s * 44100 / 1024))

    def moov(offset: int) -> bytes:
        video = _box(
            b"trak",
            _tkhd(version, 1, movie_ms, 0, _matrix(rotation, width, height), (width, height)),
            _box(
                b"mdia",
                _mdhd(version, timescale, media_ticks),
                _hdlr(b"vide", b"VideoHandler"),
                _box(
                    b"minf",
                    _full_box(b"vmhd", 0, 1, bytes(8)),
                    _dinf(),
                    _stbl(_avc1(width, height), frames, delta, _SAMPLE_LEN, offset),
                ),
            ),
        )
        tracks = [video]
        if audio_track:
            audio = _box(
                b"trak",
                _tkhd(version, 2, movie_ms, 0x0100, _matrix(0, 0, 0), (0, 0)),
                _box(
                    b"mdia",
                    _mdhd(version, 44100, audio_samples * 1024),
                    _hdlr(b"soun", b"SoundHandler"),
                    _box(
                        b"minf",
                        _full_box(b"smhd", 0, 0, bytes(4)),
                        _dinf(),
                        _stbl(_mp4a(), audio_samples, 1024, 4, offset + frames * _SAMPLE_LEN),
                    ),
                ),
            )
            tracks.insert(0, audio)
        return _box(b"moov", _mvhd(version, 1000, movie_ms), *tracks)

    ftyp = _box(b"ftyp", brand.encode("ascii"), struct.pack(">I", 512), b"isomiso2avc1mp41")
    payload = b"".join(
        struct.pack(">I", _SAMPLE_LEN - 4) + (b"\x65" if i == 0 else b"\x41") + b"\x9a\x00\x00"
        for i in range(frames)
    )
    if audio_track:
        payload += b"\x21\x00\x00\x00" * audio_samples
    mdat_header = (
        struct.pack(">I4sQ", 1, b"mdat", 16 + len(payload))
        if large_size
        else struct.pack(">I4s", 8 + len(payload), b"mdat")
    )
    if moov_first:
        moov_len = len(moov(0))
        return ftyp + moov(len(ftyp) + moov_len + len(mdat_header)) + mdat_header + payload
    return ftyp + mdat_header + payload + moov(len(ftyp) + len(mdat_header))
