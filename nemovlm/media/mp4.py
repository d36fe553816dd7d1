"""Duration, size and frame rate of an MP4/MOV read from its own boxes (no ffmpeg):
``read_video_info`` -> ``_read_moov`` (seeks past ``mdat``) -> ``_process_moov`` ->
``_process_trak`` -> ``_process_stbl``."""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from nemovlm.errors import UnsupportedInputError


@dataclass(frozen=True)
class VideoInfo:
    """What ``read_video_info`` measured; width/height are as displayed (rotation applied)."""

    duration_s: float
    width: int
    height: int
    fps: float | None
    frames: int | None


# Boxes that may open an ISO BMFF file; anything else means "not an MP4".
_FIRST_BOXES = {b"ftyp", b"styp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid"}


# moov holds only indexes; one this large is hostile or broken, not a real video.
_MAX_MOOV_BYTES = 256 * 1024 * 1024


class _Malformed(Exception):
    pass


def _unpack(fmt: str, buf: bytes, offset: int, box: str) -> tuple[int, ...]:
    """``struct.unpack_from`` that names the box cut short instead of raising struct.error."""
    if offset < 0 or offset + struct.calcsize(fmt) > len(buf):
        raise _Malformed(f"the {box} box is too short")
    return struct.unpack_from(fmt, buf, offset)


def _version(body: bytes, box: str) -> int:
    if not body:
        raise _Malformed(f"the {box} box is empty")
    return body[0]


@dataclass
class _Track:
    handler: bytes = b""
    width: float = 0.0
    height: float = 0.0
    rotated: bool = False
    timescale: int = 0
    duration: int = 0
    samples: int = 0
    sample_ticks: int = 0
    has_stts: bool = False
    entry_size: tuple[int, int] = (0, 0)


def read_video_info(source: bytes | Path) -> VideoInfo:
    """Duration, display size, frame rate and frame count of an MP4/MOV, from its boxes.

    Only the ``moov`` box is read; ``mdat`` is skipped by seeking, so a large file on
    disk is never loaded. Not an MP4, or no video track: ``UnsupportedInputError``.
    """
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            moov = _read_moov(io.BytesIO(source), len(source))
        else:
            with open(source, "rb") as file:
                moov = _read_moov(file, os.fstat(file.fileno()).st_size)
        return _process_moov(moov)
    except (_Malformed, struct.error) as exc:
        raise UnsupportedInputError(f"The MP4 is malformed or truncated ({exc}).") from exc
    except OSError as exc:
        raise UnsupportedInputError(f"Cannot read the video file: {exc}.") from exc


def _read_moov(file: BinaryIO, total: int) -> bytes:
    pos = 0
    while pos + 8 <= total:
        file.seek(pos)
        header = file.read(16)
        size, box_type = struct.unpack_from(">I4s", header)
        header_len = 8
        if size == 1:
            size = struct.unpack_from(">Q", header, 8)[0]
            header_len = 16
        elif size == 0:
            size = total - pos  # "extends to the end of the file"
        if pos == 0 and box_type not in _FIRST_BOXES:
            raise UnsupportedInputError(
                "Not an MP4/MOV file (no ISO BMFF box at the start); send an MP4 video."
            )
        if size < header_len:
            raise _Malformed(f"box {box_type!r} at {pos} has an impossible size {size}")
        if box_type == b"moov":
            if pos + size > total:
                raise _Malformed("the moov box runs past the end of the file")
            if size > _MAX_MOOV_BYTES:
                raise _Malformed(f"a {size}-byte moov box is not plausible")
            file.seek(pos + header_len)
            return file.read(size - header_len)
        pos += size
    if total < 8:
        raise UnsupportedInputError("Not an MP4/MOV file (too short); send an MP4 video.")
    raise _Malformed("no moov box; the file may be cut short or fragmented without an index")


def _iter_boxes(buf: bytes) -> Iterator[tuple[bytes, bytes]]:
    pos, end = 0, len(buf)
    while pos + 8 <= end:
        size, box_type = struct.unpack_from(">I4s", buf, pos)
        header_len = 8
        if size == 1:
            size = struct.unpack_from(">Q", buf, pos + 8)[0]
            header_len = 16
        elif size == 0:
            size = end - pos
        if size < header_len or pos + size > end:
            raise _Malformed(f"box {box_type!r} overruns its parent")
        yield box_type, buf[pos + header_len : pos + size]
        pos += size


def _child(buf: bytes, box_type: bytes) -> bytes | None:
    return next((body for kind, body in _iter_boxes(buf) if kind == box_type), None)


def _process_moov(moov: bytes) -> VideoInfo:
    movie_timescale = movie_duration = 0
    tracks: list[_Track] = []
    for kind, body in _iter_boxes(moov):
        if kind == b"mvhd":
            if _version(body, "mvhd") == 1:
                movie_timescale, movie_duration = _unpack(">IQ", body, 20, "mvhd")
            else:
                movie_timescale, movie_duration = _unpack(">II", body, 12, "mvhd")
                if movie_duration == 0xFFFFFFFF:  # "unknown" in version 0
                    movie_duration = 0
        elif kind == b"trak":
            tracks.append(_process_trak(body))
    video = next((t for t in tracks if t.handler == b"vide"), None)
    if video is None:
        raise UnsupportedInputError(
            "The MP4 has no video track (no track with handler 'vide'); send a video file."
        )
    if movie_timescale and movie_duration:
        duration = movie_duration / movie_timescale
    elif video.timescale and video.duration:
        duration = video.duration / video.timescale
    elif video.timescale and video.sample_ticks:
        duration = video.sample_ticks / video.timescale
    else:
        duration = 0.0
    width, height = round(video.width), round(video.height)
    if not (width and height):
        width, height = video.entry_size
    if video.rotated:
        width, height = height, width
    fps: float | None = None
    if video.samples and video.sample_ticks and video.timescale:
        fps = video.samples * video.timescale / video.sample_ticks
    frames = video.samples if video.has_stts and video.samples else None
    return VideoInfo(duration_s=duration, width=width, height=height, fps=fps, frames=frames)


def _process_trak(trak: bytes) -> _Track:
    track = _Track()
    tkhd = _child(trak, b"tkhd")
    if tkhd is not None:
        matrix_at = 52 if _version(tkhd, "tkhd") == 1 else 40
        a, b, _, c, d = _unpack(">5i", tkhd, matrix_at, "tkhd")
        track.rotated = a == 0 and d == 0 and b != 0 and c != 0
        w, h = _unpack(">II", tkhd, matrix_at + 36, "tkhd")
        track.width, track.height = w / 65536, h / 65536
    mdia = _child(trak, b"mdia")
    if mdia is None:
        return track
    for kind, body in _iter_boxes(mdia):
        if kind == b"mdhd":
            if _version(body, "mdhd") == 1:
                track.timescale, track.duration = _unpack(">IQ", body, 20, "mdhd")
            else:
                track.timescale, track.duration = _unpack(">II", body, 12, "mdhd")
        elif kind == b"hdlr":
            track.handler = body[8:12]
        elif kind == b"minf":
            stbl = _child(body, b"stbl")
            if stbl is not None:
                _process_stbl(stbl, track)
    return track


def _process_stbl(stbl: bytes, track: _Track) -> None:
    for kind, body in _iter_boxes(stbl):
        if kind == b"stts":
            (count,) = _unpack(">I", body, 4, "stts")
            if 8 + 8 * count > len(body):
                raise _Malformed("stts lists more entries than it holds")
            track.has_stts = True
            for i in range(count):
                samples, delta = struct.unpack_from(">II", body, 8 + 8 * i)
                track.samples += samples
                track.sample_ticks += samples * delta
        elif kind == b"stsd" and len(body) >= 8 + 8 + 28:
            # First sample entry; a visual one stores width/height after 24 bytes.
            track.entry_size = struct.unpack_from(">HH", body, 8 + 8 + 24)
