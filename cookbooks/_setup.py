"""Where the cookbooks' models live: real endpoints when you have keys, else the emulator.

Every cookbook starts with ``setup = connect()``:

- NIM side: ``NVIDIA_BASE_URL`` (a NIM of yours) or ``NVIDIA_API_KEY`` (NVIDIA's hosted
  catalog) makes it real; otherwise a local NIM emulator starts on a free port.
- fal side: ``FAL_KEY`` (or ``FAL_KEY_ID`` + ``FAL_KEY_SECRET``) makes it real;
  otherwise a local fal emulator starts and this process's ``fal-client`` is aimed at it.

The emulator is not a model: it answers deterministically with what it received (parts,
image sizes, video sampling, your text), which is enough to see every request go
through the real ``openai`` / ``fal-client`` stack. ``connect`` says which side is which.

No ``with`` block, so the setup survives across notebook cells; the emulators stop when
the process exits.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import tempfile
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

EMULATOR_NOTE = "answers come from the local nemovlm EMULATOR (it echoes what it received)"


@dataclass
class Setup:
    """What a cookbook needs to build its models."""

    nim_base_url: str | None
    """``base_url`` for ``ChatNemoVLM``/``NemoVLM``; ``None``: the hosted catalog."""
    nim_emulated: bool
    fal_emulated: bool
    workdir: Path
    """A temporary folder for the media the cookbook makes (removed at exit)."""
    worker_env: dict[str, str] = field(default_factory=dict)
    """Environment a worker process needs to reach the same endpoints (Ray, spawn)."""
    fal_emulator: Any = None
    nim_assets_url: str | None = None
    """The emulator's NVCF assets endpoint when it plays the hosted catalog."""
    fal_exported: str | None = None
    """A local fal emulator named by your exports (``nemovlm emulator``), if any."""

    @property
    def offline(self) -> bool:
        return self.nim_emulated and self.fal_emulated

    def nim_settings(self) -> dict[str, Any]:
        """``ChatNemoVLM`` / ``NemoVLM`` settings for this setup's NIM side; with the
        emulator playing the catalog, ``hosted=True`` and its assets endpoint."""
        if self.nim_assets_url is None:
            return {"base_url": self.nim_base_url}
        return {
            "base_url": self.nim_base_url,
            "api_key": "emulator-key",
            "hosted": True,
            "assets_url": self.nim_assets_url,
        }


_stack = ExitStack()
_current: Setup | None = None


def _fal_key_set() -> bool:
    return bool(
        os.environ.get("FAL_KEY")
        or (os.environ.get("FAL_KEY_ID") and os.environ.get("FAL_KEY_SECRET"))
    )


def connect(*, hosted: bool = False) -> Setup:
    """Start what is missing (once per process) and say where answers come from.
    ``hosted``: a NIM emulator started here plays NVIDIA's hosted catalog."""
    global _current
    if _current is not None:
        return _current
    workdir = Path(tempfile.mkdtemp(prefix="nemovlm-cookbook-"))
    _stack.callback(shutil.rmtree, workdir, True)
    worker_env: dict[str, str] = {}

    nim_base_url = os.environ.get("NVIDIA_BASE_URL")
    nim_emulated = not (nim_base_url or os.environ.get("NVIDIA_API_KEY"))
    if nim_emulated:
        from nemovlm.emulator import start_nim_emulator

        nim = start_nim_emulator(hosted=hosted)
        _stack.callback(nim.stop)
        nim_base_url = nim.url + "/v1"
    nim_assets_url = f"{nim.url}/v2/nvcf/assets" if nim_emulated and hosted else None

    fal_emulator = None
    fal_emulated = not _fal_key_set()
    if fal_emulated:
        from nemovlm.cli import EMULATOR_FAL_KEY
        from nemovlm.emulator.fal import start_fal_emulator

        fal_emulator = start_fal_emulator()
        _stack.callback(fal_emulator.stop)
        _stack.callback(fal_emulator.aim_fal_client())
        os.environ["FAL_KEY"] = EMULATOR_FAL_KEY
        _stack.callback(os.environ.pop, "FAL_KEY", None)
        worker_env = {**fal_emulator.env, "FAL_KEY": EMULATOR_FAL_KEY}
    fal_exported = None
    if not fal_emulated:
        from nemovlm.emulator.fal import aim_at_exported_emulator

        # `nemovlm emulator`'s exports aim the queue; uploads must be aimed in-process.
        undo = aim_at_exported_emulator()
        if undo is not None:
            _stack.callback(undo)
            fal_exported = os.environ["FAL_QUEUE_RUN_HOST"]

    atexit.register(_stack.close)
    _current = Setup(
        nim_base_url=nim_base_url,
        nim_emulated=nim_emulated,
        fal_emulated=fal_emulated,
        workdir=workdir,
        worker_env=worker_env,
        fal_emulator=fal_emulator,
        nim_assets_url=nim_assets_url,
        fal_exported=fal_exported,
    )
    _announce(_current)
    return _current


def _announce(setup: Setup) -> None:
    if setup.offline:
        print(f"Offline: {EMULATOR_NOTE}.")
        if setup.nim_assets_url:
            print("The NIM emulator plays NVIDIA's hosted catalog (NVCF assets, inline limit).")
        print("Set NVIDIA_API_KEY (or NVIDIA_BASE_URL) and FAL_KEY for real answers.\n")
        return
    nim = (
        f"NIM: emulator at {setup.nim_base_url} ({EMULATOR_NOTE})"
        if setup.nim_emulated
        else f"NIM: {setup.nim_base_url or 'NVIDIA hosted API catalog'}"
    )
    fal = f"fal: emulator ({EMULATOR_NOTE})" if setup.fal_emulated else "fal: fal.ai (FAL_KEY)"
    if setup.fal_exported:
        fal = f"fal: emulator at {setup.fal_exported}, from your exports (queue and uploads)"
    print(f"{nim}\n{fal}\n")


def sample_video(name: str, **make_mp4_options: Any) -> Path:
    """An MP4 in the work folder: a copy of ``NEMOVLM_SAMPLE_VIDEO`` when that names a
    clip of yours, else ``nemovlm.samples.make_mp4(**make_mp4_options)``.

    ``make_mp4``'s boxes state a real duration, size and frame rate but its frames are
    dummies: the emulator reads it fine, a real model cannot decode it.
    """
    setup = connect()
    target = setup.workdir / name
    own = os.environ.get("NEMOVLM_SAMPLE_VIDEO")
    if own:
        shutil.copyfile(own, target)
        return target
    from nemovlm.samples import make_mp4

    target.write_bytes(make_mp4(**make_mp4_options))
    if not setup.offline:
        print(
            f"Note: {name} has dummy frames that real models cannot decode; "
            "set NEMOVLM_SAMPLE_VIDEO to a real MP4 (up to 2 minutes, 1080p)."
        )
    return target


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to the end, from a script or from a notebook cell.

    A notebook already runs an event loop, where ``asyncio.run`` refuses to start
    another; a worker thread gets a loop of its own either way.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def clip(text: object, limit: int = 300) -> str:
    """An answer on one line, shortened for printing."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
