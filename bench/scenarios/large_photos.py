"""Scenario 2: a 4000x3000 camera JPEG from disk to Nemotron Nano 12B v2 VL.

Each client sends the same photo file to the NIM emulator; the request body bytes
are counted at the server (``bench.wire``). "Naive" is what a client without media
handling sends: a base64 data URL of the file (the raw SDK and ``ChatOpenAI`` here).
Ours downscales on the client to the model's pixel budget (``ModelProfile.tile_size``
x ``max_tiles``, from the model card: 512 px tiles, at most 12 per image), re-encoding
only when that saves bytes. What the model sees is checked against its own tiling:
the sent image must be at least the size the model resizes any image to.
"""

from __future__ import annotations

import io
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

from bench import clients as c
from bench.config import Config
from bench.report import Bars, ScenarioResult, Table, Target
from bench.wire import CountedEmulator, counted_nim_emulator
from nemovlm.media import clear_cache
from nemovlm.profiles import get_profile
from nemovlm.samples import make_photo

BYTES_FACTOR = 4.0
USER_BUDGET = 1_000_000


def _model_input_size(width: int, height: int, tile: int, max_tiles: int) -> tuple[int, int]:
    """The size a dynamically tiling VLM (InternVL-style, as Nano VL) resizes an image
    to: the tile grid with at most ``max_tiles`` tiles closest to the image's aspect."""
    aspect = width / height
    grids = {(i, j) for n in range(1, max_tiles + 1) for i in range(1, n + 1)
             for j in range(1, n + 1) if i * j <= max_tiles}  # fmt: skip
    best = min(grids, key=lambda g: (abs(aspect - g[0] / g[1]), -g[0] * g[1]))
    return best[0] * tile, best[1] * tile


def run(config: Config) -> ScenarioResult:
    started = time.perf_counter()
    result = ScenarioResult("large_photos", "2. Large photos (4000x3000 JPEG from disk)")
    profile = get_profile(c.MODEL)
    assert profile.tile_size and profile.max_tiles
    with tempfile.TemporaryDirectory(prefix="nemovlm-bench-") as tmp:
        folder = Path(tmp)
        photo = folder / "photo.jpg"
        photo.write_bytes(make_photo(4000, 3000))
        small = folder / "small.jpg"
        small.write_bytes(make_photo(1024, 768))
        with counted_nim_emulator() as emulator:
            rows = _measure(config, emulator, folder, photo, small)
    file_bytes = photo.stat().st_size if photo.exists() else rows["naive"]["image"]
    naive, ours = rows["naive"], rows["ours"]
    model_w, model_h = _model_input_size(4000, 3000, profile.tile_size, profile.max_tiles)

    table = []
    for key, label in (
        ("naive", "raw openai SDK: base64 of the file (naive)"),
        ("ChatOpenAI", "ChatOpenAI: base64 of the file"),
        ("ours", "ChatNemoVLM (ours), defaults"),
        ("ours_off", "ours, downscale_images=False"),
        ("ours_budget", f"ours, max_image_pixels={USER_BUDGET:,}"),
        ("small", "ours, a 1024x768 photo (already small enough)"),
    ):
        if key not in rows:
            table.append([label, "not installed", "", "", "", ""])
            continue
        row = rows[key]
        table.append(
            [
                label,
                f"{row['body']:,}",
                f"{naive['body'] / row['body']:.2f}x" if key != "small" else "(another file)",
                f"{row['width']}x{row['height']}",
                f"{row['image']:,}",
                f"{row['seconds'] * 1e3:,.0f} ms",
            ]
        )
    result.tables.append(
        Table(
            ["client", "request body bytes", "naive / this", "image sent", "image bytes",
             "wall per call (median)"],
            table,
            f"Photo file: {file_bytes:,} bytes; model budget {profile.max_image_pixels:,} px "
            f"({profile.tile_size}px tiles x {profile.max_tiles}); the model resizes a 4000x3000 "
            f"image to {model_w}x{model_h} itself",
        )
    )  # fmt: skip
    factor = naive["body"] / ours["body"]
    result.targets += [
        Target(
            f">= {BYTES_FACTOR:.0f}x fewer bytes on the wire than a naive base64 of the file",
            f"{factor:.2f}x",
            factor >= BYTES_FACTOR,
        ),
        Target(
            "No loss of what the model sees (sent size >= the model's own resize)",
            f"{ours['width']}x{ours['height']} vs {model_w}x{model_h}",
            ours["width"] >= model_w and ours["height"] >= model_h,
        ),
        Target(
            "Images already small enough go through untouched (bytes identical)",
            "identical" if rows["small"]["identical"] else "changed",
            bool(rows["small"]["identical"]),
        ),
        Target(
            "Downscale can be turned off (downscale_images=False sends the file as it is)",
            "identical" if rows["ours_off"]["identical"] else "changed",
            bool(rows["ours_off"]["identical"]),
        ),
        Target(
            "Downscale budget can be set (max_image_pixels)",
            f"{rows['ours_budget']['width'] * rows['ours_budget']['height']:,} px sent",
            rows["ours_budget"]["width"] * rows["ours_budget"]["height"] <= USER_BUDGET,
        ),
    ]
    result.bars.append(
        Bars(
            "Large photo: request body bytes",
            "MB on the wire",
            {
                label: rows[key]["body"] / 1e6
                for key, label in (
                    ("naive", "naive base64 of the file"),
                    ("ChatOpenAI", c.LC_OPENAI),
                    ("ours", c.LC_OURS),
                    ("ours_budget", "ours, 1 MP budget"),
                )
                if key in rows
            },  # fmt: skip
            {"naive base64 of the file": "floor", c.LC_OURS: "ours", "ours, 1 MP budget": "ours"},
        )
    )
    result.notes += [
        "Bytes are counted at the server (ASGI middleware around the NIM emulator).",
        f"Ours, first call (decode, resize, encode): {ours['first'] * 1e3:,.0f} ms; later "
        "calls reuse the prepared image (scenario 3). Wall times include the emulator, which "
        "decodes every image it receives, in this process.",
        "Re-encoding happens only when it saves bytes; otherwise the original file is sent.",
    ]
    result.raw = {"rows": rows, "file_bytes": file_bytes, "model_input": [model_w, model_h]}
    result.seconds = time.perf_counter() - started
    return result


def _measure(
    config: Config, emulator: CountedEmulator, folder: Path, photo: Path, small: Path
) -> dict[str, dict[str, Any]]:
    from langchain_core.messages import HumanMessage

    from langchain_nemovlm import ChatNemoVLM

    base_url = emulator.url + "/v1"
    file_data = photo.read_bytes()
    naive_messages = c.openai_messages(file_data, "image/jpeg")
    calls_each = config.scaled(3, 1)

    def local(path: Path) -> list[Any]:
        block = {"type": "image", "url": path.as_uri()}
        return [HumanMessage(content=[{"type": "text", "text": c.PROMPT}, block])]

    def ours(**fields: Any) -> ChatNemoVLM:
        return ChatNemoVLM(model=c.MODEL, base_url=base_url, allowed_media_dirs=[folder], **fields)

    default, off, budget = ours(), ours(downscale_images=False), ours(max_image_pixels=USER_BUDGET)
    runs: dict[str, tuple[Any, bytes]] = {
        "naive": (c.raw_call(base_url, naive_messages), file_data),
        "ours": (lambda: default.invoke(local(photo)), file_data),
        "ours_off": (lambda: off.invoke(local(photo)), file_data),
        "ours_budget": (lambda: budget.invoke(local(photo)), file_data),
        "small": (lambda: default.invoke(local(small)), small.read_bytes()),
    }
    lc_openai = c.langchain_models(base_url).get(c.LC_OPENAI)
    if lc_openai is not None:
        message = c.langchain_input(file_data, "image/jpeg")
        runs["ChatOpenAI"] = (lambda m=lc_openai.model: m.invoke(message), file_data)

    rows: dict[str, dict[str, Any]] = {}
    for key, (call, original) in runs.items():
        clear_cache()
        emulator.reset()
        times = []
        for _ in range(calls_each):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        sent = emulator.sent_images()[-1]
        with Image.open(io.BytesIO(sent)) as image:
            width, height = image.size
        rows[key] = {
            "body": emulator.counter.sizes[-1],
            "image": len(sent),
            "width": width,
            "height": height,
            "identical": sent == original,
            "first": times[0],
            "seconds": statistics.median(times[1:] or times),
        }
    assert math.isfinite(rows["naive"]["body"])
    return rows
