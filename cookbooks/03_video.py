# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Video: a local MP4 and a URL, on NIM and on fal
#
# Two models take video:
#
# - **Nemotron Nano 12B v2 VL** (NIM): MP4 as a `video_url` part (a URL or inline
#   base64). You choose how frames are sampled, `video_fps` *or* `video_num_frames`
#   (never both, at most 128 frames), and `max_num_tiles` per frame.
# - **Nemotron 3 Nano Omni** (fal): exactly one MP4 of up to 2 minutes and 1080p. A
#   local file is uploaded to fal's storage; a URL is passed through.
#
# Limits the package knows are checked before anything leaves your machine; the rest
# come back from the server as `RequestError` with its status and message.

# %%
from __future__ import annotations

import base64
import functools
import os
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from _setup import clip, connect, sample_video
from langchain_core.messages import HumanMessage
from llama_index.core.llms import ChatMessage, TextBlock, VideoBlock

from langchain_nemovlm import ChatNemoFal, ChatNemoVLM
from llama_index.llms.nemovlm import NemoFal, NemoVLM
from nemovlm.errors import RequestError, UnsupportedInputError
from nemovlm.media import read_video_info
from nemovlm.samples import make_mp4

setup = connect()

# %% [markdown]
# ## A local MP4
# `make_mp4` writes an 8-second 640x360 clip at 8 fps into a temporary folder. Its
# frames are dummies: for a real model, set `NEMOVLM_SAMPLE_VIDEO` to a clip of yours.
# `read_video_info` reads what the container states, without ffmpeg.

# %%
clip_path = sample_video("street.mp4", duration_s=8.0, width=640, height=360, fps=8.0)
print(read_video_info(clip_path))


def lc_video(path: Path) -> dict[str, Any]:
    """A LangChain standard video block with the file inline as base64."""
    data = base64.b64encode(path.read_bytes()).decode()
    return {"type": "video", "base64": data, "mime_type": "video/mp4"}


def lc_ask(text: str, *media: dict[str, Any]) -> list[HumanMessage]:
    return [HumanMessage(content=[{"type": "text", "text": text}, *media])]


def li_ask(text: str, *blocks: Any) -> list[ChatMessage]:
    return [ChatMessage(role="user", blocks=[*blocks, TextBlock(text=text)])]


# %% [markdown]
# ## Nano 12B v2 VL: sampling by rate, by count, and tiles
# Per call (`invoke(..., video_fps=2.0)`) or on the model (`ChatNemoVLM(video_fps=...)`).

# %%
nano = ChatNemoVLM(
    model="nvidia/nemotron-nano-12b-v2-vl", base_url=setup.nim_base_url, max_tokens=256
)
question = "What happens in this clip?"
samplings: list[dict[str, Any]] = [
    {"video_fps": 2.0},
    {"video_num_frames": 16},
    {"video_fps": 1.0, "max_num_tiles": 2},
]
for sampling in samplings:
    msg = nano.invoke(lc_ask(question, lc_video(clip_path)), **sampling)
    print(sampling, "->", clip(msg.content, 220))

# %% [markdown]
# What is refused, and where: both settings at once, or more than 128 frames, never
# leave the process; a rate above the clip's own is the NIM's 400.

# %%
for sampling in (
    {"video_fps": 2.0, "video_num_frames": 16},
    {"video_num_frames": 500},
    {"video_fps": 30.0},
):
    try:
        nano.invoke(lc_ask(question, lc_video(clip_path)), **sampling)
    except UnsupportedInputError as exc:
        print(sampling, "refused before sending:", exc)
    except RequestError as exc:
        print(sampling, f"server said {exc.status_code}:", clip(exc.server_message, 160))

# %% [markdown]
# LlamaIndex: a `VideoBlock` with a `path` is read from disk (an explicit path is
# trusted; paths hidden in plain strings are not). Sampling settings are the same
# fields, on the model or per call.

# %%
li_nano = NemoVLM(model="nvidia/nemotron-nano-12b-v2-vl", base_url=setup.nim_base_url)
response = li_nano.chat(li_ask(question, VideoBlock(path=clip_path)), video_fps=1.0)
print("LlamaIndex:", clip(response.message.content, 220))

# %% [markdown]
# ## A video by URL
# A URL is passed through untouched; the server fetches it. Offline, this cookbook
# serves its temporary folder on 127.0.0.1 so the emulator has something to fetch;
# online, set `NEMOVLM_VIDEO_URL` to a public MP4.


# %%
def serve_folder(folder: Path) -> str:
    """Serve ``folder`` over HTTP on a free loopback port, in a daemon thread."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=folder))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


if setup.nim_emulated:
    video_url: str | None = f"{serve_folder(setup.workdir)}/{clip_path.name}"
else:
    video_url = os.environ.get("NEMOVLM_VIDEO_URL")

if video_url is None:
    print("Skipped: set NEMOVLM_VIDEO_URL to a public MP4 to try a URL against a real NIM.")
else:
    url_part = {"type": "video_url", "video_url": {"url": video_url}}
    msg = nano.invoke(lc_ask(question, url_part), video_fps=2.0)
    print("LangChain, by URL:", clip(msg.content, 220))
    response = li_nano.chat(li_ask(question, VideoBlock(url=video_url)), video_num_frames=8)
    print("LlamaIndex, by URL:", clip(response.message.content, 220))

# %% [markdown]
# ## Nemotron 3 Nano Omni on fal
# LangChain: the base64 block goes inline (uploaded instead when over 1 MB).
# LlamaIndex: `VideoBlock(path=...)` is uploaded from disk with `fal_client`.

# %%
omni = ChatNemoFal(model="nvidia/nemotron-3-nano-omni/video", max_tokens=512)
msg = omni.invoke(lc_ask(question, lc_video(clip_path)))
print("LangChain :", clip(msg.content, 220))
print("  fal request id:", msg.response_metadata.get("fal_request_id"))

li_omni = NemoFal(model="nvidia/nemotron-3-nano-omni/video", max_tokens=512)
response = li_omni.chat(li_ask(question, VideoBlock(path=clip_path)))
print("LlamaIndex:", clip(response.message.content, 220))

if not setup.fal_emulated and os.environ.get("NEMOVLM_VIDEO_URL"):
    url_part = {"type": "video_url", "video_url": {"url": os.environ["NEMOVLM_VIDEO_URL"]}}
    print("By URL    :", clip(omni.invoke(lc_ask(question, url_part)).content, 220))

# %% [markdown]
# Omni's limits (2 minutes, 1080p) are read from the file's own boxes and checked
# before the upload, so a long recording costs nothing to refuse.

# %%
long_path = setup.workdir / "lecture.mp4"
long_path.write_bytes(make_mp4(duration_s=150.0, fps=1.0))
try:
    li_omni.chat(li_ask("Summarise the lecture.", VideoBlock(path=long_path)))
except UnsupportedInputError as exc:
    print("refused before upload:", exc)
