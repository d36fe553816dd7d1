# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # NVIDIA's hosted catalog: a 12 MP photo and a local video
#
# With only `NVIDIA_API_KEY` set, `ChatNemoVLM` and `NemoVLM` call NVIDIA's hosted API
# catalog (`https://integrate.api.nvidia.com/v1`). It speaks the same API as a local NIM,
# with two rules a NIM does not have:
#
# - **Inline media have a budget**: about 180,000 characters of base64 per request
#   (`profile.hosted_inline_budget`). A phone photo, even downscaled to the model's 12
#   tiles, is several times that. Larger media must go up as **NVCF assets**: the
#   package creates the asset, uploads the bytes to its presigned URL (never with your
#   key), refers to it as `data:<mime>;asset_id,<id>` with the
#   `NVCF-INPUT-ASSET-REFERENCES` header, and deletes it after the call, whatever
#   happens (an error, a cancelled task, a stream you stop reading).
# - **Message rules**: one system message, first; user and assistant alternating;
#   system and assistant content as strings. The package merges messages to fit.
#
# Offline (no keys), a local emulator plays the catalog, asset API included. With
# `NVIDIA_API_KEY` the same code runs against NVIDIA.

# %%
from __future__ import annotations

import os
from pathlib import Path

import httpx
from _setup import clip, connect, run_async, sample_video
from langchain_core.messages import HumanMessage, SystemMessage
from llama_index.core.llms import ChatMessage, ImageBlock, TextBlock

from langchain_nemovlm import ChatNemoVLM, media_block
from llama_index.llms.nemovlm import NemoVLM
from nemovlm.hosted import base64_chars
from nemovlm.samples import make_photo

setup = connect(hosted=True)
MODEL = "nvidia/nemotron-nano-12b-v2-vl"

# %% [markdown]
# ## A 12 MP photo
# `make_photo()` writes a 4000x3000 JPEG with camera-like detail (set
# `NEMOVLM_SAMPLE_PHOTO` to a photo of yours). The package downscales it to what the
# model uses (12 tiles of 512x512) and, since that is still over the budget, uploads it.
# `is_hosted` says whether the catalog's rules apply: decided from the base URL, or set
# with `hosted=True/False`.

# %%
photo_path: Path = setup.workdir / "receipt-12mp.jpg"
own_photo = os.environ.get("NEMOVLM_SAMPLE_PHOTO")
photo_path.write_bytes(Path(own_photo).read_bytes() if own_photo else make_photo())
size = photo_path.stat().st_size
print(f"photo: {size / 1e6:.1f} MB, {base64_chars(size):,} base64 characters")

llm = ChatNemoVLM(model=MODEL, max_tokens=256, **setup.nim_settings())
print("is_hosted:", llm.is_hosted, "| hosted_media:", llm.hosted_media)
print("inline budget:", f"{llm.nemo_profile.hosted_inline_budget:,} characters")
answer = llm.invoke(
    [HumanMessage(content=[{"type": "text", "text": "Read the receipt."}, media_block(photo_path)])]
)
print("LangChain :", clip(answer.content))


# %% [markdown]
# The emulator keeps a list of live assets (a test hook the real catalog does not
# have): after the call there is none left.


# %%
def live_assets() -> list[dict[str, object]] | None:
    if not setup.nim_emulated:
        return None  # NVIDIA's catalog has no such list; assets were deleted all the same
    base = str(setup.nim_base_url).removesuffix("/v1")
    assets: list[dict[str, object]] = httpx.get(f"{base}/emulator/assets").json()
    return assets


print("live assets after the call:", live_assets())

# %% [markdown]
# ## The same photo from LlamaIndex, async
# `NemoVLM` has the same three settings (`hosted`, `assets_url`, `hosted_media`) and the
# same core: the upload and the deletion happen around `achat` too.

# %%
li = NemoVLM(model=MODEL, max_tokens=256, **setup.nim_settings())
question = [
    ChatMessage(role="user", blocks=[ImageBlock(path=photo_path), TextBlock(text="Total?")])
]
li_answer = run_async(li.achat(question))
print("LlamaIndex:", clip(li_answer.message.content))
print("live assets after the call:", live_assets())

# %% [markdown]
# ## `hosted_media`: auto, upload or fit
# - `auto` (default): inline while the request's media fit the budget, the largest ones
#   uploaded until the rest fits;
# - `upload`: every local medium goes up as an asset;
# - `fit`: nothing is uploaded; images are re-encoded (JPEG) and downscaled to fit, and
#   a medium that cannot fit (a video) is refused with an error saying so.

# %%
fit = ChatNemoVLM(model=MODEL, max_tokens=256, hosted_media="fit", **setup.nim_settings())
answer = fit.invoke(
    [HumanMessage(content=[{"type": "text", "text": "Read the receipt."}, media_block(photo_path)])]
)
print("fit       :", clip(answer.content))

# %% [markdown]
# ## A local video
# Video on the catalog follows the same scheme (`data:video/mp4;asset_id,<id>` in a
# `video_url` part). A real clip of a few MB goes up by itself under `auto`; the sample
# clip here has dummy frames and is tiny, so this cell asks for `upload` to show it.
# (For a real model, set `NEMOVLM_SAMPLE_VIDEO` to an MP4 of yours.)

# %%
clip_path = sample_video("street.mp4", duration_s=8.0, width=640, height=360, fps=8.0)
video_llm = ChatNemoVLM(
    model=MODEL, max_tokens=256, hosted_media="upload", video_fps=1.0, **setup.nim_settings()
)
answer = video_llm.invoke(
    [HumanMessage(content=[{"type": "text", "text": "What happens?"}, media_block(clip_path)])]
)
print("video     :", clip(answer.content))
print("live assets after the call:", live_assets())

# %% [markdown]
# ## The catalog's message rules
# Two system messages and two user messages in a row would be refused by the catalog;
# the package sends one system message first and merges the user turns.

# %%
answer = llm.invoke(
    [
        SystemMessage("Answer briefly."),
        HumanMessage("Here is a question."),
        SystemMessage("Answer in English."),
        HumanMessage("What is a receipt?"),
    ]
)
print("rules     :", clip(answer.content))
