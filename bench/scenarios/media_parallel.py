"""Scenario 8: 32 distinct 12 MP photos prepared across cores.

Each photo (4000x3000 camera-like JPEG, a few MB, each one different so the media
cache never helps) goes from disk to Nemotron Nano 12B v2 VL, which means decode,
downscale to the model's pixel budget and re-encode. Ours runs them one at a time
(``ainvoke`` in turn) and all at once (``abatch``), against the canned server, with the
media cache cleared before each run; the speed-up is the ratio of wall times.
The reference is plain Pillow doing the same work to the same output (draft-mode
decode, EXIF transpose, LANCZOS to the same size, JPEG quality 90), one photo at a
time, and on a thread per core (what the machine allows); CPU ms per photo compares
ours one at a time with it. That the output is the same
is checked once through the NIM emulator: ours sent exactly the reference's size.
"""

from __future__ import annotations

import asyncio
import io
import math
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageOps

from bench import clients as c
from bench.config import Config
from bench.report import Bars, ScenarioResult, Table, Target
from bench.wire import counted_nim_emulator
from nemovlm.media import clear_cache
from nemovlm.profiles import get_profile
from nemovlm.samples import make_photo

PHOTOS = 32
SPEEDUP_TARGET = 1.6
REFERENCE_LIMIT = 1.15


def _photos(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    """``count`` different JPEGs: one synthetic photo, each copy marked differently."""
    base = Image.open(io.BytesIO(make_photo(*size)))
    base.load()
    paths = []
    for i in range(count):
        image = base.copy()
        ImageDraw.Draw(image).rectangle((40 * i, 40, 40 * i + 200, 240), fill=(i * 7, 90, 200))
        path = folder / f"photo-{i:02d}.jpg"
        image.save(path, "JPEG", quality=92)
        paths.append(path)
    return paths


def _fit(width: int, height: int, budget: int) -> tuple[int, int]:
    scale = math.sqrt(budget / (width * height))
    return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))


def _reference(path: Path, budget: int) -> bytes:
    """Plain Pillow: what ours does to a photo over the budget, nothing else."""
    with Image.open(path) as image:
        size = _fit(image.width, image.height, budget)
        image.draft("RGB", size)
        image.load()
        turned = ImageOps.exif_transpose(image)
        out = turned.resize(size, Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        out.save(buffer, "JPEG", quality=90)
        return buffer.getvalue()


def _message(path: Path) -> list[Any]:
    from langchain_core.messages import HumanMessage

    block = {"type": "image", "url": path.as_uri()}
    return [HumanMessage(content=[{"type": "text", "text": c.PROMPT}, block])]


def _model(base_url: str, folder: Path) -> Any:
    from langchain_nemovlm import ChatNemoVLM

    return ChatNemoVLM(model=c.MODEL, base_url=base_url, allowed_media_dirs=[folder])


def _timed(run: Any) -> tuple[float, float]:
    clear_cache()
    w0, c0 = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - w0, time.process_time() - c0


def run(config: Config) -> ScenarioResult:
    started = time.perf_counter()
    count = config.scaled(PHOTOS, 4)
    size = (4000, 3000) if not config.quick else (1600, 1200)
    rounds = config.scaled(max(1, config.rounds // 3), 1)
    profile = get_profile(c.MODEL)
    budget = profile.max_image_pixels
    assert budget is not None
    result = ScenarioResult(
        "media_parallel", f"8. Media in parallel ({count} distinct {size[0]}x{size[1]} JPEGs)"
    )
    with tempfile.TemporaryDirectory(prefix="nemovlm-bench-") as tmp:
        folder = Path(tmp)
        paths = _photos(folder, count, size)
        messages = [_message(p) for p in paths]
        model = _model(config.canned_url + "/v1", folder)

        async def one_at_a_time() -> None:
            for message in messages:
                await model.ainvoke(message)

        async def all_at_once() -> None:
            await model.abatch(messages)

        loop = asyncio.new_event_loop()
        pool = ThreadPoolExecutor(os.cpu_count() or 1)
        runs = {
            "ours, one at a time (ainvoke in turn)": lambda: loop.run_until_complete(
                one_at_a_time()
            ),
            "ours, abatch": lambda: loop.run_until_complete(all_at_once()),
            "plain Pillow, one at a time": lambda: [_reference(p, budget) for p in paths],
            # What this machine allows: the same Pillow work on a thread per core.
            "plain Pillow, a thread per core": lambda: list(
                pool.map(lambda p: _reference(p, budget), paths)
            ),
        }
        walls: dict[str, list[float]] = {name: [] for name in runs}
        cpus: dict[str, list[float]] = {name: [] for name in runs}
        try:
            runs["ours, abatch"]()  # warm-up: clients, pools, imports
            for r in range(rounds):
                order = list(runs) if r % 2 == 0 else list(reversed(runs))
                for name in order:
                    wall, cpu = _timed(runs[name])
                    walls[name].append(wall)
                    cpus[name].append(cpu)
            loop.run_until_complete(asyncio.sleep(0))
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            pool.shutdown()

        # The same output: what ours sent for one photo is the reference's size.
        with counted_nim_emulator() as emulator:
            clear_cache()
            _model(emulator.url + "/v1", folder).invoke(messages[0])
            sent = emulator.sent_images()[-1]
        reference = _reference(paths[0], budget)
        with Image.open(io.BytesIO(sent)) as a, Image.open(io.BytesIO(reference)) as b:
            same_size = a.size == b.size
            sizes = f"{a.width}x{a.height} (ours) / {b.width}x{b.height} (Pillow)"

    wall = {name: statistics.median(v) for name, v in walls.items()}
    cpu = {name: statistics.median(v) for name, v in cpus.items()}
    seq_name, par_name = "ours, one at a time (ainvoke in turn)", "ours, abatch"
    ref_name, pool_name = "plain Pillow, one at a time", "plain Pillow, a thread per core"
    rows = [
        [
            name,
            f"{wall[name]:.2f} s",
            f"{wall[name] / count * 1000:,.0f} ms",
            f"{cpu[name] / count * 1000:,.0f} ms",
        ]
        for name in runs
    ]
    result.tables.append(
        Table(
            ["run", "wall (median)", "wall per photo", "CPU per photo"],
            rows,
            f"{rounds} round(s), {os.cpu_count()} cores; media cache cleared before each run; "
            f"sent: {sizes}",
        )
    )
    speedup = wall[seq_name] / wall[par_name]
    machine = wall[ref_name] / wall[pool_name]
    result.targets.append(
        Target(
            f"abatch over {count} photos >= {SPEEDUP_TARGET}x faster than one at a time",
            f"{speedup:.2f}x (plain Pillow on a thread per core: {machine:.2f}x)",
            speedup >= SPEEDUP_TARGET,
            ""
            if speedup >= SPEEDUP_TARGET
            else "not prepared across cores"
            if machine >= SPEEDUP_TARGET
            else "this machine gave Pillow's own threads no more",
        )
    )
    # CPU time: wall time per photo swings with the machine's other work.
    per_photo = cpu[seq_name] / cpu[ref_name]
    result.targets.append(
        Target(
            f"CPU ms per photo <= {REFERENCE_LIMIT}x plain Pillow's for the same output",
            f"{per_photo:.2f}x ({cpu[seq_name] / count * 1000:,.0f} ms vs "
            f"{cpu[ref_name] / count * 1000:,.0f} ms)",
            per_photo <= REFERENCE_LIMIT and same_size,
            "" if same_size else f"outputs differ: {sizes}",
        )
    )
    result.bars.append(
        Bars(
            f"Media in parallel: wall per photo ({count} photos)",
            "ms per photo (median)",
            {name: wall[name] / count * 1000 for name in runs},
            {name: "floor" if "Pillow" in name else "ours" for name in runs},
        )
    )
    result.notes.append(
        "Pillow releases the GIL while it decodes, resizes and encodes, so threads "
        "prepare photos on every core; the async path prepares them in worker threads "
        "(nemovlm.pipeline.aprepare), never on the event loop."
    )
    result.raw = {"wall": walls, "cpu": cpus, "speedup": speedup, "per_photo": per_photo}
    result.seconds = time.perf_counter() - started
    return result
