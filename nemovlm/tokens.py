"""Offline token estimates for a neutral conversation (``estimate_tokens``).

What the adapters' ``get_num_tokens_from_messages`` (LangChain, so
``trim_messages(token_counter=llm)``) and LlamaIndex's token counting call. Nothing is
downloaded: no tokenizer vocabulary, no remote image. The result is an **estimate**:

- text: a rule of thumb for the models' BPE vocabularies (a short word is one token, a
  long one one per six letters, digits in groups of three, every other symbol one),
  plus a few tokens per message for the chat template;
- images: counted from the model's tiling where the profile gives one (``tile_size``,
  ``max_tiles``): the tiles the model cuts the image into (InternVL-style dynamic
  tiling: the grid whose shape is closest to the image's, at most ``max_tiles`` or
  ``max_num_tiles`` tiles, plus a thumbnail tile when there is more than one), each
  ``ModelProfile.tokens_per_tile`` tokens (default 256). The seed's example for Llama
  Nemotron Nano VL 8B shows it: one large 4:3 image and a 20-word question cost 3372
  prompt tokens, which is 13 tiles x 256 + 44. An image whose size cannot be read
  without a download (an http URL) counts as the largest grid; models without a tiling
  count one tile per image;
- videos: one tile per sampled frame (the model's default 2 frames per second, or
  ``video_fps`` / ``video_num_frames``, at most 128 frames); a video whose length
  cannot be read counts as 128 frames.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

from PIL import Image
from typing_extensions import assert_never

from nemovlm.media import read_video_info
from nemovlm.media.sources import parse_data_url
from nemovlm.messages import MediaPart, ToolSpec, Turn
from nemovlm.options import RequestOptions
from nemovlm.profiles import ModelProfile

TOKENS_PER_MESSAGE = 4
"""Role header and end-of-turn markers of the chat template."""
REPLY_PRIMING = 3
"""The assistant header the template adds before the answer."""
DEFAULT_SAMPLING_FPS = 2.0  # seeds/nim-nemotron-nano-12b-v2-vl.md: "default sampling rate is 2 FPS"

_PIECES = re.compile(r"[A-Za-z]+|[0-9]+|[^\sA-Za-z0-9]")


def estimate_tokens(
    turns: Sequence[Turn],
    profile: ModelProfile,
    *,
    tools: Sequence[ToolSpec] = (),
    options: RequestOptions | None = None,
) -> int:
    """An estimate of the prompt tokens ``turns`` (and ``tools``) cost on ``profile``'s
    model, made offline. Not exact: the server's ``usage`` is the true count."""
    options = options or RequestOptions()
    total = REPLY_PRIMING
    for turn in turns:
        total += TOKENS_PER_MESSAGE + estimate_text_tokens(turn.text)
        for call in turn.tool_calls:
            total += estimate_text_tokens(call.name) + estimate_text_tokens(
                json.dumps(call.arguments, ensure_ascii=False)
            )
        for media in turn.media:
            total += _media_tokens(media, profile, options)
    if tools:
        described = [
            {"name": t.name, "description": t.description, "parameters": t.parameters}
            for t in tools
        ]
        total += estimate_text_tokens(json.dumps(described, ensure_ascii=False))
    return total


def estimate_text_tokens(text: str) -> int:
    """An estimate of the tokens of ``text`` (see the module docstring)."""
    count = 0
    for piece in _PIECES.findall(text):
        if piece[0].isascii() and piece[0].isalpha():
            count += 1 + (len(piece) - 1) // 6
        elif piece[0].isdigit():
            count += math.ceil(len(piece) / 3)
        else:
            count += 1
    return count


def image_tiles(width: int, height: int, max_tiles: int) -> int:
    """Tiles the dynamic tiling cuts a ``width`` x ``height`` image into, thumbnail
    included: the grid (at most ``max_tiles`` cells) whose aspect ratio is closest to
    the image's; among equally close grids, the larger one if the image has the pixels
    for it (InternVL's ``dynamic_preprocess``, with the 512 px tile)."""
    aspect = width / height
    grids = sorted(
        {
            (i, j)
            for i in range(1, max_tiles + 1)
            for j in range(1, max_tiles + 1)
            if i * j <= max_tiles
        },
        key=lambda g: (g[0] * g[1], g),
    )
    best, best_diff = (1, 1), math.inf
    for i, j in grids:
        diff = abs(aspect - i / j)
        if diff < best_diff:
            best, best_diff = (i, j), diff
        elif diff == best_diff and width * height > 0.5 * 512 * 512 * i * j:
            best = (i, j)
    cells = best[0] * best[1]
    return cells + 1 if cells > 1 else cells


def image_tokens(
    size: tuple[int, int] | None, profile: ModelProfile, max_num_tiles: int | None = None
) -> int:
    """Tokens of one image of ``size`` (``None``: unknown, counted as the largest grid)."""
    per_tile = profile.tokens_per_tile
    if not (profile.tile_size and profile.max_tiles):
        return per_tile
    limit = max_num_tiles or profile.max_tiles
    if size is None or min(size) < 1:
        return (limit + 1 if limit > 1 else 1) * per_tile
    return image_tiles(size[0], size[1], limit) * per_tile


def _media_tokens(part: MediaPart, profile: ModelProfile, options: RequestOptions) -> int:
    if part.kind == "image":
        return image_tokens(_image_size(part), profile, options.max_num_tiles)
    if part.kind != "video":
        assert_never(part.kind)
    per_frame = profile.tokens_per_tile  # a frame is one tile (or one untiled image)
    limit = profile.max_video_frames
    if options.video_num_frames is not None:
        return min(options.video_num_frames, limit) * per_frame
    duration = _video_seconds(part)
    if duration is None:
        return limit * per_frame
    fps = options.video_fps or part.fps or DEFAULT_SAMPLING_FPS
    return min(max(1, math.floor(duration * fps)), limit) * per_frame


def _local_bytes(part: MediaPart) -> bytes | Path | None:
    """The media's bytes (or file) when they are here; ``None`` for a remote URL."""
    if part.data is not None:
        return part.data
    if part.path is not None:
        return part.path
    if part.url is not None and part.url.startswith("data:"):
        try:
            return parse_data_url(part.url, f"{part.kind} data URL")[1]
        except ValueError:
            return None
    return None


def _image_size(part: MediaPart) -> tuple[int, int] | None:
    source = _local_bytes(part)
    if source is None:
        return None
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            return image.size  # the header only: no pixels are decoded
    except (OSError, ValueError, Image.DecompressionBombError):
        return None  # the request itself will say what is wrong with it


def _video_seconds(part: MediaPart) -> float | None:
    source = _local_bytes(part)
    if source is None:
        return None
    try:
        return read_video_info(source).duration_s
    except ValueError:
        return None
