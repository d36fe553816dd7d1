"""Every client the bench compares, built the same way against one base URL.

LangChain: ``ChatNemoVLM`` (ours), the minimal ``BaseChatModel`` over the raw SDK
(floor), ``ChatOpenAI`` and ``ChatNVIDIA`` (peers). LlamaIndex: ``NemoVLM`` (ours),
the minimal LLM (floor), ``OpenAILike`` and ``NVIDIA`` (peers). The raw ``openai``
SDK is the floor under both. A peer that is not installed is left out, and
``missing_peers`` says which (``bench.run`` refuses to start without them unless
told ``--allow-missing``).
"""

from __future__ import annotations

import base64
import importlib.util
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MODEL = "nvidia/nemotron-nano-12b-v2-vl"
PROMPT = "Describe this image in one sentence."

RAW = "raw openai SDK"
LC_OURS = "ChatNemoVLM (ours)"
LC_MINIMAL = "minimal BaseChatModel"
LC_OPENAI = "ChatOpenAI"
LC_NVIDIA = "ChatNVIDIA"
LI_OURS = "NemoVLM (ours)"
LI_MINIMAL = "minimal LlamaIndex LLM"
LI_OPENAI_LIKE = "OpenAILike"
LI_NVIDIA = "llama-index NVIDIA"

# module that must import -> the distribution that provides it
PEERS = {
    "langchain_openai": "langchain-openai",
    "langchain_nvidia_ai_endpoints": "langchain-nvidia-ai-endpoints",
    "llama_index.llms.openai_like": "llama-index-llms-openai-like",
    "llama_index.llms.nvidia": "llama-index-llms-nvidia",
    "matplotlib": "matplotlib",
}


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def missing_peers() -> list[str]:
    """Distributions of the bench extra that are not installed."""
    return [dist for module, dist in PEERS.items() if not _importable(module)]


@dataclass
class Entry:
    """A client under test: ``kind`` is ``ours``, ``floor`` or ``peer``."""

    kind: str
    model: Any


def data_url(image: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(image).decode()}"


# --- LangChain ------------------------------------------------------------------------


def langchain_models(base_url: str, **ours: Any) -> dict[str, Entry]:
    from bench.minimal_langchain import MinimalChatModel
    from langchain_nemovlm import ChatNemoVLM

    models = {
        LC_OURS: Entry("ours", ChatNemoVLM(model=MODEL, base_url=base_url, **ours)),
        LC_MINIMAL: Entry("floor", MinimalChatModel(model=MODEL, base_url=base_url)),
    }
    if _importable("langchain_openai"):
        from langchain_openai import ChatOpenAI

        models[LC_OPENAI] = Entry(
            "peer",
            ChatOpenAI(model=MODEL, base_url=base_url, api_key="not-used"),  # type: ignore[arg-type]
        )
    if _importable("langchain_nvidia_ai_endpoints"):
        with warnings.catch_warnings():
            # It warns that it does not know the model's type on a local endpoint.
            warnings.simplefilter("ignore")
            from langchain_nvidia_ai_endpoints import ChatNVIDIA

            models[LC_NVIDIA] = Entry(
                "peer", ChatNVIDIA(model=MODEL, base_url=base_url, api_key="not-used")
            )
    return models


def langchain_input(image: bytes, mime: str = "image/png") -> list[Any]:
    """One user message: text and an OpenAI ``image_url`` part (a base64 data URL),
    the shape every LangChain client here accepts."""
    from langchain_core.messages import HumanMessage

    content: list[str | dict[str, Any]] = [
        {"type": "text", "text": PROMPT},
        {"type": "image_url", "image_url": {"url": data_url(image, mime)}},
    ]
    return [HumanMessage(content=content)]


# --- LlamaIndex -----------------------------------------------------------------------


def llama_index_models(base_url: str) -> dict[str, Entry]:
    from bench.minimal_llama_index import MinimalLlamaLLM
    from llama_index_nemovlm import NemoVLM

    models = {
        LI_OURS: Entry("ours", NemoVLM(model=MODEL, base_url=base_url)),
        LI_MINIMAL: Entry("floor", MinimalLlamaLLM(model=MODEL, base_url=base_url)),
    }
    if _importable("llama_index.llms.openai_like"):
        from llama_index.llms.openai_like import OpenAILike

        models[LI_OPENAI_LIKE] = Entry(
            "peer",
            OpenAILike(model=MODEL, api_base=base_url, api_key="not-used", is_chat_model=True),
        )
    if _importable("llama_index.llms.nvidia"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from llama_index.llms.nvidia import NVIDIA

            # It checks the model against the server's /v1/models (the canned server
            # lists it) and does not know this id is a chat model: say so.
            models[LI_NVIDIA] = Entry(
                "peer",
                NVIDIA(model=MODEL, base_url=base_url, api_key="not-used", is_chat_model=True),
            )
    return models


def llama_index_input(image: bytes, mime: str = "image/png") -> list[Any]:
    """One user message: a ``TextBlock`` and an ``ImageBlock`` holding the bytes."""
    from llama_index.core.llms import ChatMessage, ImageBlock, TextBlock

    blocks: list[Any] = [TextBlock(text=PROMPT), ImageBlock(image=image, image_mimetype=mime)]
    return [ChatMessage(role="user", blocks=blocks)]


# --- the raw SDK ----------------------------------------------------------------------


def openai_messages(image: bytes, mime: str = "image/png") -> list[dict[str, Any]]:
    content = [
        {"type": "text", "text": PROMPT},
        {"type": "image_url", "image_url": {"url": data_url(image, mime)}},
    ]
    return [{"role": "user", "content": content}]


def raw_call(base_url: str, messages: list[dict[str, Any]]) -> Callable[[], object]:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="not-used")

    def call() -> object:
        return client.chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]

    return call
