# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Quickstart: five NVIDIA vision-language models, LangChain and LlamaIndex side by side
#
# One cell per model. Each asks the same question twice: once through LangChain
# (`ChatNemoVLM` for NIM, `ChatNemoFal` for fal) and once through LlamaIndex (`NemoVLM`,
# `NemoFal`). Both go through the same `nemovlm` core, so every model quirk (images
# before text, one image per fal request, video rules) is handled the same way.
#
# Offline (no keys) the answers come from the local emulator, which echoes what it
# received. With `NVIDIA_API_KEY` (or `NVIDIA_BASE_URL`) and `FAL_KEY` set, the same
# cells talk to the real models.

# %%
from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from _setup import clip, connect, sample_video
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage
from llama_index.core.llms import LLM, ChatMessage, ImageBlock, TextBlock, VideoBlock

from langchain_nemovlm import ChatNemoFal, ChatNemoVLM
from llama_index.llms.nemovlm import NemoFal, NemoVLM
from nemovlm.samples import make_chart

setup = connect()

# %% [markdown]
# ## The media: a chart and a short clip, made locally
# `nemovlm.samples` draws a real PNG chart and writes a small MP4 whose boxes state its
# duration, size and frame rate. Its frames are dummies, so only the emulator can
# "watch" it: for a real model, set `NEMOVLM_SAMPLE_VIDEO` to a clip of yours.

# %%
chart_path = setup.workdir / "revenue.png"
chart_path.write_bytes(make_chart([3, 7, 4, 9], ["Q1", "Q2", "Q3", "Q4"], title="Revenue"))
clip_path = sample_video("clip.mp4", duration_s=6.0, width=640, height=360, fps=8.0)


def lc_block(path: Path, kind: str) -> dict[str, Any]:
    """A LangChain standard content block carrying a local file as base64."""
    mime = "video/mp4" if kind == "video" else "image/png"
    data = base64.b64encode(path.read_bytes()).decode()
    return {"type": kind, "base64": data, "mime_type": mime}


def lc_ask(text: str, *media: dict[str, Any]) -> list[HumanMessage]:
    return [HumanMessage(content=[{"type": "text", "text": text}, *media])]


def li_ask(text: str, *blocks: Any) -> list[ChatMessage]:
    return [ChatMessage(role="user", blocks=[*blocks, TextBlock(text=text)])]


def show(lc_answer: Any, li_answer: Any) -> None:
    print("LangChain :", clip(lc_answer.content))
    print("LlamaIndex:", clip(li_answer.message.content))
    print("usage     :", lc_answer.usage_metadata, "\n")


# %% [markdown]
# ## 1. Llama 3.1 Nemotron Nano VL 8B (NIM)
# JPEG and PNG images. The model card asks for the image before the text; the package
# reorders the parts for you, so write them in any order.

# %%
MODEL = "nvidia/llama-3.1-nemotron-nano-vl-8b-v1"
lc: BaseChatModel = ChatNemoVLM(model=MODEL, base_url=setup.nim_base_url, max_tokens=256)
li: LLM = NemoVLM(model=MODEL, base_url=setup.nim_base_url, max_tokens=256)
question = "What does this chart show?"
show(
    lc.invoke(lc_ask(question, lc_block(chart_path, "image"))),
    li.chat(li_ask(question, ImageBlock(path=chart_path))),
)

# %% [markdown]
# ## 2. Nemotron Nano 12B v2 VL (NIM)
# Images and MP4 video; native tool calling; reasoning on request (see cookbook 02).
# `max_num_tiles` bounds how many 512x512 tiles an image is cut into.

# %%
MODEL = "nvidia/nemotron-nano-12b-v2-vl"
lc = ChatNemoVLM(model=MODEL, base_url=setup.nim_base_url, max_tokens=256, max_num_tiles=6)
li = NemoVLM(model=MODEL, base_url=setup.nim_base_url, max_tokens=256, max_num_tiles=6)
question = "Which quarter had the highest revenue?"
show(
    lc.invoke(lc_ask(question, lc_block(chart_path, "image"))),
    li.chat(li_ask(question, ImageBlock(path=chart_path))),
)

# %% [markdown]
# ## 3. DiffusionGemma 26B A4B IT (NIM)
# GIF, JPEG and PNG images and MP4 video. It reasons by default; the trace arrives
# apart from the answer (LangChain: `additional_kwargs["reasoning_content"]`,
# LlamaIndex: a `ThinkingBlock`).

# %%
MODEL = "google/diffusiongemma-26b-a4b-it"
lc = ChatNemoVLM(model=MODEL, base_url=setup.nim_base_url, max_tokens=512)
li = NemoVLM(model=MODEL, base_url=setup.nim_base_url, max_tokens=512)
question = "Describe the chart in one sentence."
lc_answer = lc.invoke(lc_ask(question, lc_block(chart_path, "image")))
li_answer = li.chat(li_ask(question, ImageBlock(path=chart_path)))
print("reasoning :", clip(lc_answer.additional_kwargs.get("reasoning_content"), 150))
show(lc_answer, li_answer)

# %% [markdown]
# ## 4. Nemotron Diffusion VLM (fal)
# A fal queue app: exactly one image and one prompt per request. Small media go inline
# as data URLs; anything over 1 MB is uploaded to fal's storage first. The reply's
# metadata carries the fal request id and an estimated cost.

# %%
MODEL = "fal-ai/nemotron-diffusion-vlm"
lc = ChatNemoFal(model=MODEL, max_tokens=256)
li = NemoFal(model=MODEL, max_tokens=256)
question = "Describe the chart in one sentence."
lc_answer = lc.invoke(lc_ask(question, lc_block(chart_path, "image")))
show(lc_answer, li.chat(li_ask(question, ImageBlock(path=chart_path))))
print("estimated cost (USD):", lc_answer.response_metadata.get("estimated_cost_usd"), "\n")

# %% [markdown]
# ## 5. Nemotron 3 Nano Omni, video (fal)
# Exactly one MP4 (up to 2 minutes and 1080p) and a prompt. In LlamaIndex a
# `VideoBlock(path=...)` is read from disk and uploaded; in LangChain a standard block
# with base64 goes inline.

# %%
MODEL = "nvidia/nemotron-3-nano-omni/video"
lc = ChatNemoFal(model=MODEL, max_tokens=512)
li = NemoFal(model=MODEL, max_tokens=512)
question = "What happens in this clip?"
show(
    lc.invoke(lc_ask(question, lc_block(clip_path, "video"))),
    li.chat(li_ask(question, VideoBlock(path=clip_path))),
)
