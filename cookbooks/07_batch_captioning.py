# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Batch captioning: a folder of images, resumable, with progress and cost
#
# 1. On the command line: `nemovlm batch` captions a folder into a JSONL file, one row
#    per image as it completes, with a progress bar and a summary (tokens, cost).
#    Run it again and it resumes: images already captioned are skipped.
# 2. From Python: `nemovlm.batch.run(...)` does the same and returns the summary; here
#    on the fal app, which publishes a price per token, from a manifest.
# 3. On Ray Data, for when one machine is not enough: `nemovlm.ray.NemoVLMPredictor`
#    in `Dataset.map_batches`. (Runs when Ray is installed: `pip install 'nemovlm[ray]'`.)
#
# Tune `--concurrency` to what your endpoint takes: a NIM queues what it cannot serve at
# once; the hosted catalog and fal answer 429 past your rate limit (the package retries
# those with backoff). A failed image is a row with an `error`, not a crash; the
# command exits 3 when any row failed, and running it again retries those rows.

# %%
from __future__ import annotations

import json
import subprocess
import sys
import time

from _setup import clip, connect

from nemovlm.batch import run
from nemovlm.samples import make_image

setup = connect()
PROMPT = "Caption this image in at most ten words."
NANO = "nvidia/nemotron-nano-12b-v2-vl"

# %% [markdown]
# ## 200 small images in a folder
# Coloured tiles with a number on each; in real life, your pictures (small images are
# cheaper: the model tiles large ones). `nemovlm batch` walks folders recursively and
# finds images and videos by their content, not their extension.

# %%
tiles = setup.workdir / "tiles"
tiles.mkdir()
for i in range(200):
    color = ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)
    (tiles / f"tile-{i:03d}.png").write_bytes(make_image(64, 48, text=f"#{i}", color=color))

# %% [markdown]
# ## 1. `nemovlm batch` on Nano 12B v2 VL (NIM), 16 at a time
# The same command in a terminal:
#
# ```bash
# nemovlm batch nvidia/nemotron-nano-12b-v2-vl "Caption this image in at most ten words." \
#     tiles/ --out captions.jsonl --concurrency 16 --max-tokens 32
# ```
#
# On a terminal it draws a progress bar; in a log (as here) it prints a plain line now
# and then. The summary goes to stdout.

# %%
captions_file = setup.workdir / "captions.jsonl"
command = [sys.executable, "-m", "nemovlm.cli", "batch", NANO, PROMPT, str(tiles),
           "--out", str(captions_file), "--concurrency", "16", "--max-tokens", "32"]  # fmt: skip
if setup.nim_base_url:
    command += ["--base-url", setup.nim_base_url]
started = time.perf_counter()
done = subprocess.run(command, capture_output=True, text=True, check=False)
seconds = time.perf_counter() - started
print(done.stdout.strip())
rows = [json.loads(line) for line in captions_file.read_text().splitlines()]
print(f"{len(rows)} captions in {seconds:.1f} s (exit code {done.returncode}); "
      f"first: {clip(rows[0]['answer'], 90)}\n")  # fmt: skip

# %% [markdown]
# Each row holds the input, its id, the answer, tokens in and out, the model, timing,
# and `error` (`null` when it worked). Running the same command again sends nothing:
# every image is already in the file. (`--overwrite` starts over.)

# %%
again = subprocess.run(command, capture_output=True, text=True, check=False)
print(again.stdout.strip().splitlines()[0], "\n")

# %% [markdown]
# ## 2. From Python, on fal: `nemovlm.batch.run`
# A manifest (`.jsonl` or `.csv`) gives each row its input and, optionally, its own
# prompt and id; other columns are copied to the output under `meta`. fal queues each
# request and the package polls it; the summary estimates the cost from fal's price.
# A slice of the images, to keep the demo short. `run` works in a notebook cell too.

# %%
manifest = setup.workdir / "fal-manifest.jsonl"
manifest.write_text(
    "".join(
        json.dumps({"id": f"tile-{i}", "input": f"tiles/tile-{i:03d}.png", "shelf": i % 4}) + "\n"
        for i in range(24)
    )
)
started = time.perf_counter()
summary = run(
    "fal-ai/nemotron-diffusion-vlm",
    PROMPT,
    [manifest],
    setup.workdir / "fal-captions.jsonl",
    concurrency=8,
    max_tokens=32,
    progress=False,
)
seconds = time.perf_counter() - started
print(summary)
cost = f"${summary.cost_usd:.4f} (estimated)" if summary.cost_usd is not None else "n/a"
print(f"{summary.done} captions in {seconds:.1f} s")
print(f"tokens: {summary.input_tokens} in + {summary.output_tokens} out; cost: {cost}\n")

# %% [markdown]
# ## 3. The same job on Ray Data
# `NemoVLMPredictor` is a callable class for `map_batches`: each actor holds one client
# (one connection pool) and runs up to `concurrency` calls at once inside a batch.
# Columns in: `image` (path, URL, bytes, or the arrays `read_images` gives), optional
# `prompt` and `id`; columns out: `answer`, `reasoning`, `input_tokens`,
# `output_tokens`, `error`. On a cluster, `ray.init(address="auto")` (or
# `ray://head:10001`) instead of the local start below; see `docs/batch.md`.
# `setup.worker_env` carries what a worker needs to reach the emulator offline; on a
# real cluster, give the workers your keys (`runtime_env={"env_vars": {...}}`).

# %%
try:
    import ray
    import ray.data

    from nemovlm.ray import NemoVLMPredictor
except ImportError:
    ray = None
    print("Skipped the Ray section: Ray is not installed (`pip install 'nemovlm[ray]'`).")

if ray is not None:
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
        runtime_env={"env_vars": setup.worker_env},
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    started = time.perf_counter()
    captioned = (
        ray.data.read_images(str(tiles), include_paths=True)
        .map_batches(
            NemoVLMPredictor,
            fn_constructor_kwargs={
                "model": NANO,
                "prompt": PROMPT,
                "base_url": setup.nim_base_url,
                "max_tokens": 32,
                "concurrency": 8,
            },
            compute=ray.data.ActorPoolStrategy(size=2),
            num_cpus=0.5,  # the actors wait on the network; leave CPUs for reading
            batch_size=50,
        )
        .drop_columns(["image"])
        .take_all()
    )
    failed = sum(1 for row in captioned if row["error"] is not None)
    seconds = time.perf_counter() - started
    print(f"Ray: {len(captioned)} captions in {seconds:.1f} s, {failed} failed")
    print(f"Ray: {captioned[0]['path']} -> {clip(captioned[0]['answer'], 90)}")
    ray.shutdown()
