# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Batch captioning: a few hundred images, concurrently, with totals
#
# 1. On one machine: LangChain's `abatch_as_completed` under a concurrency limit
#    (`config={"max_concurrency": 16}`), a progress bar, then token and cost totals.
# 2. The same job on the fal app, which publishes a price per token.
# 3. On a Ray cluster, for when one machine is not enough. The model object is
#    shipped to the workers as it is: it pickles without its HTTP clients and builds
#    fresh ones where it lands. (Runs when `ray` is installed: `pip install "ray[data]"`.)
#
# Tune `max_concurrency` to what your endpoint takes: a NIM queues what it cannot
# serve at once; the hosted catalog and fal answer 429 past your rate limit (the
# package retries those with backoff, `max_retries`).

# %%
from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from _setup import clip, connect, run_async
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, HumanMessage

from langchain_nemovlm import ChatNemoFal, ChatNemoVLM
from nemovlm.samples import make_image

setup = connect()
PROMPT = "Caption this image in at most ten words."

# %% [markdown]
# ## 200 small images
# Coloured tiles with a number on each; in real life, thumbnails of your pictures
# (small images are cheaper: the model tiles large ones).

# %%
images = [
    make_image(64, 48, text=f"#{i}", color=((37 * i) % 256, (91 * i) % 256, (53 * i) % 256))
    for i in range(200)
]


def caption_request(png: bytes) -> list[HumanMessage]:
    data = base64.b64encode(png).decode()
    return [
        HumanMessage(
            content=[
                {"type": "text", "text": PROMPT},
                {"type": "image", "base64": data, "mime_type": "image/png"},
            ]
        )
    ]


# %% [markdown]
# ## A progress bar
# `tqdm` when it is installed (LlamaIndex depends on it), else a printed counter.

# %%
try:
    from tqdm.auto import tqdm
except ImportError:
    tqdm = None


class Progress:
    def __init__(self, total: int, label: str) -> None:
        self.total, self.label, self.done = total, label, 0
        self.bar = tqdm(total=total, desc=label, unit="img") if tqdm is not None else None

    def update(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update()
        elif self.done % 50 == 0 or self.done == self.total:
            print(f"{self.label}: {self.done}/{self.total}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


async def caption_all(
    llm: BaseChatModel, pictures: Sequence[bytes], label: str, concurrency: int = 16
) -> list[AIMessage]:
    """Every caption, in input order, at most ``concurrency`` requests at a time."""
    results: list[Any] = [None] * len(pictures)
    progress = Progress(len(pictures), label)
    finished: AsyncIterator[tuple[int, Any]] = llm.abatch_as_completed(
        [caption_request(p) for p in pictures], config={"max_concurrency": concurrency}
    )
    async for index, message in finished:
        results[index] = message
        progress.update()
    progress.close()
    return results


def report(llm: BaseChatModel, captions: Sequence[AIMessage], seconds: float) -> None:
    """Token totals, and the cost where the seller publishes a price."""
    usages = [m.usage_metadata for m in captions if m.usage_metadata]
    tokens_in = sum(u["input_tokens"] for u in usages)
    tokens_out = sum(u["output_tokens"] for u in usages)
    costs = [m.response_metadata.get("estimated_cost_usd") for m in captions]
    known = [c for c in costs if isinstance(c, (int, float))]
    cost = f"${sum(known):.4f} (estimated)" if known else "n/a (no published price)"
    print(f"{len(captions)} captions in {seconds:.1f} s; first: {clip(captions[0].content, 90)}")
    print(f"tokens: {tokens_in} in + {tokens_out} out = {tokens_in + tokens_out}; cost: {cost}\n")


# %% [markdown]
# ## 1. Nano 12B v2 VL on NIM, 16 at a time

# %%
nano = ChatNemoVLM(
    model="nvidia/nemotron-nano-12b-v2-vl", base_url=setup.nim_base_url, max_tokens=32
)
started = time.perf_counter()
captions = run_async(caption_all(nano, images, "NIM captions"))
report(nano, captions, time.perf_counter() - started)

# %% [markdown]
# ## 2. Nemotron Diffusion VLM on fal
# fal queues each request; the package polls it. The reply metadata carries an
# estimated cost (tokens x fal's published price). A slice of the images, to keep the
# demo short.

# %%
fal_vlm = ChatNemoFal(model="fal-ai/nemotron-diffusion-vlm", max_tokens=32)
started = time.perf_counter()
fal_captions = run_async(caption_all(fal_vlm, images[:24], "fal captions", concurrency=8))
report(fal_vlm, fal_captions, time.perf_counter() - started)

# %% [markdown]
# ## 3. The same job on Ray Data
# Each Ray worker gets a pickled copy of `nano` (which has already made 200 calls: its
# HTTP clients stay behind and are rebuilt on the worker). Images travel as bytes in the
# dataset, so the workers need no shared disk. `setup.worker_env` carries what a worker
# needs to reach the emulator offline; on a real cluster, give the workers your keys
# (for example through `runtime_env={"env_vars": {...}}`).

# %%
try:
    import ray
    import ray.data
except ImportError:
    ray = None
    print("Skipped the Ray section: Ray is not installed (`pip install 'ray[data]'`).")


class Captioner:
    """One per Ray actor: holds the unpickled model, captions a batch of rows."""

    def __init__(self, llm: BaseChatModel) -> None:
        self.llm = llm

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        requests: list[LanguageModelInput] = [caption_request(bytes(p)) for p in batch["png"]]
        replies = self.llm.batch(requests, config={"max_concurrency": 8})
        return {"name": batch["name"], "caption": [str(r.content) for r in replies]}


if ray is not None:
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
        runtime_env={"env_vars": setup.worker_env},
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    rows = [{"name": f"tile-{i}.png", "png": png} for i, png in enumerate(images)]
    started = time.perf_counter()
    captioned = (
        ray.data.from_items(rows, override_num_blocks=4)
        .map_batches(
            Captioner,
            fn_constructor_kwargs={"llm": nano},
            batch_size=50,
            compute=ray.data.ActorPoolStrategy(size=2),
        )
        .take_all()
    )
    print(f"Ray: {len(captioned)} captions in {time.perf_counter() - started:.1f} s")
    print(f"Ray: {captioned[0]['name']} -> {clip(captioned[0]['caption'], 90)}")
    ray.shutdown()
