# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Reasoning: switching it per model, reading it apart from the answer, streaming it
#
# Each model switches reasoning its own way, and the package hides that behind one
# setting, `reasoning=True | False | None` (None: the model's default):
#
# | model | how it is switched | default |
# |---|---|---|
# | Nemotron Nano 12B v2 VL | `/think` in the system prompt (not with video) | off |
# | DiffusionGemma 26B | `chat_template_kwargs.thinking` | on |
# | Nemotron 3 Nano Omni (fal) | `reasoning_mode` think / no_think | off |
# | Llama Nano VL 8B, Diffusion VLM (fal) | cannot be switched | - |
#
# The trace always arrives apart from the answer, however the server sent it
# (`reasoning_content`, `reasoning`, or `<think>` tags inside the content):
# LangChain puts it in `additional_kwargs["reasoning_content"]` (and a `reasoning`
# content block); LlamaIndex in a `ThinkingBlock`, and while streaming in
# `additional_kwargs["thinking_delta"]`.

# %%
from __future__ import annotations

import base64
from typing import Any

from _setup import clip, connect, sample_video
from langchain_core.messages import HumanMessage
from llama_index.core.base.llms.types import ThinkingBlock
from llama_index.core.llms import ChatMessage, ImageBlock, TextBlock, VideoBlock

from langchain_nemovlm import ChatNemoFal, ChatNemoVLM
from llama_index.llms.nemovlm import NemoFal, NemoVLM
from nemovlm.errors import UnsupportedInputError
from nemovlm.samples import make_chart

setup = connect()

chart = make_chart([3, 7, 4, 9], ["Q1", "Q2", "Q3", "Q4"], title="Revenue")
chart_path = setup.workdir / "revenue.png"
chart_path.write_bytes(chart)
chart_b64 = base64.b64encode(chart).decode()
image_block = {"type": "image", "base64": chart_b64, "mime_type": "image/png"}
question = "Which quarter was best, and by how much over the worst?"


def lc_ask(text: str, *media: dict[str, Any]) -> list[HumanMessage]:
    return [HumanMessage(content=[{"type": "text", "text": text}, *media])]


def li_ask(text: str, *blocks: Any) -> list[ChatMessage]:
    return [ChatMessage(role="user", blocks=[*blocks, TextBlock(text=text)])]


def li_thinking(message: ChatMessage) -> str | None:
    return "".join(b.content or "" for b in message.blocks if isinstance(b, ThinkingBlock)) or None


# %% [markdown]
# ## Nemotron Nano 12B v2 VL: off by default, on with `reasoning=True`
# The package adds `/think` to the system prompt (merging it with yours).

# %%
nano = ChatNemoVLM(model="nvidia/nemotron-nano-12b-v2-vl", base_url=setup.nim_base_url)
for switch in (None, True):
    msg = nano.invoke(lc_ask(question, image_block), reasoning=switch, max_tokens=512)
    print(f"reasoning={switch}: reasoning ->", clip(msg.additional_kwargs.get("reasoning_content")))
    print(f"reasoning={switch}: answer    ->", clip(msg.content, 120))
    details = msg.usage_metadata.get("output_token_details") if msg.usage_metadata else None
    print("  reasoning tokens:", details, "\n")

# The same trace as a standard LangChain content block:
print([block["type"] for block in msg.content_blocks])

# %% [markdown]
# Video and reasoning do not mix on this model; the package says so before sending.

# %%
video_path = sample_video("clip.mp4", duration_s=4.0)
clip_block = {
    "type": "video",
    "base64": base64.b64encode(video_path.read_bytes()).decode(),
    "mime_type": "video/mp4",
}
try:
    nano.invoke(lc_ask("What happens?", clip_block), reasoning=True)
except UnsupportedInputError as exc:
    print("refused:", exc)

# %% [markdown]
# ## DiffusionGemma: on by default, off with `reasoning=False`
# `include_reasoning=False` keeps the model reasoning but leaves the trace out of the
# reply (non-streaming calls only).

# %%
gemma = ChatNemoVLM(model="google/diffusiongemma-26b-a4b-it", base_url=setup.nim_base_url)
variants: list[dict[str, Any]] = [{}, {"reasoning": False}, {"include_reasoning": False}]
for kwargs in variants:
    msg = gemma.invoke(lc_ask(question, image_block), max_tokens=512, **kwargs)
    trace = msg.additional_kwargs.get("reasoning_content")
    print(f"{kwargs or 'default'}: reasoning ->", clip(trace, 100) if trace else None)

# LlamaIndex: the trace is a ThinkingBlock next to the answer's TextBlock.
li_gemma = NemoVLM(model="google/diffusiongemma-26b-a4b-it", base_url=setup.nim_base_url)
response = li_gemma.chat(li_ask(question, ImageBlock(path=chart_path)))
print("LlamaIndex thinking:", clip(li_thinking(response.message), 100))
print("LlamaIndex answer  :", clip(response.message.content, 100))

# %% [markdown]
# ## Streaming the reasoning live
# Reasoning chunks come first, then the answer. Print them apart (here the trace is
# indented). A `<think>` tag split across chunks is reassembled for you.

# %%
print("LangChain stream:")
section = ""
for chunk in nano.stream(lc_ask(question, image_block), reasoning=True):
    thought = chunk.additional_kwargs.get("reasoning_content")
    for name, piece in (("thinking", thought), ("answer", chunk.content)):
        if not piece:
            continue
        if section != name:
            print(f"\n[{name}] ", end="")
            section = name
        print(piece, end="", flush=True)
print("\n")

print("LlamaIndex stream:")
li_nano = NemoVLM(
    model="nvidia/nemotron-nano-12b-v2-vl", base_url=setup.nim_base_url, reasoning=True
)
thought_pieces, answer_pieces = [], []
for response in li_nano.stream_chat(li_ask(question, ImageBlock(path=chart_path))):
    thought_pieces.append(response.additional_kwargs.get("thinking_delta", ""))
    answer_pieces.append(response.delta or "")
print("  streamed thinking:", clip("".join(thought_pieces), 120))
print("  streamed answer  :", clip("".join(answer_pieces), 120), "\n")

# %% [markdown]
# ## Nemotron 3 Nano Omni on fal: `reasoning_mode` think
# fal answers whole: the app's output holds the reasoning followed by the answer, and
# the package splits them.

# %%
omni = ChatNemoFal(model="nvidia/nemotron-3-nano-omni/video", reasoning=True, max_tokens=1024)
msg = omni.invoke(lc_ask("Summarise the clip.", clip_block))
print("Omni reasoning:", clip(msg.additional_kwargs.get("reasoning_content"), 150))
print("Omni answer   :", clip(msg.content, 150))

li_omni = NemoFal(model="nvidia/nemotron-3-nano-omni/video", reasoning=True, max_tokens=1024)
response = li_omni.chat(li_ask("Summarise the clip.", VideoBlock(path=video_path)))
print("LlamaIndex Omni thinking:", clip(li_thinking(response.message), 100), "\n")

# %% [markdown]
# ## Models without a switch
# Asking them to reason is an error that says what to do, not a silent no-op.

# %%
for llm in (
    ChatNemoVLM(model="nvidia/llama-3.1-nemotron-nano-vl-8b-v1", base_url=setup.nim_base_url),
    ChatNemoFal(model="fal-ai/nemotron-diffusion-vlm"),
):
    try:
        llm.invoke(lc_ask(question, image_block), reasoning=True)
    except UnsupportedInputError as exc:
        print("refused:", exc)
