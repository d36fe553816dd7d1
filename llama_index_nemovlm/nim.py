"""``NemoVLM``: any NIM vision-language model as a LlamaIndex ``FunctionCallingLLM``;
``NemoVLMMultiModal``: the same as a ``MultiModalLLM`` for image RAG query engines."""

from __future__ import annotations

from typing import Any

from pydantic import model_validator

from llama_index_nemovlm._base import BaseNemoLLM, BaseNemoMultiModal
from nemovlm.errors import UnsupportedInputError
from nemovlm.settings import NimSettings


class _NvidiaConveniences(NimSettings):
    """What users of LlamaIndex's ``NVIDIA`` class expect: ``nvidia_api_key=`` as
    another name of ``api_key`` (the default model is ``NimSettings``', for both
    frameworks)."""

    @model_validator(mode="before")
    @classmethod
    def _nvidia_api_key(cls, values: Any) -> Any:
        if not isinstance(values, dict) or "nvidia_api_key" not in values:
            return values
        values = dict(values)
        key = values.pop("nvidia_api_key")
        if values.get("api_key") is not None and key is not None:
            raise UnsupportedInputError("Give api_key or nvidia_api_key, not both.")
        if key is not None:
            values["api_key"] = key
        return values


class NemoVLM(_NvidiaConveniences, BaseNemoLLM):
    """A NIM vision-language model (OpenAI-compatible), with every model quirk handled.

    ``model``: Nemotron Nano 12B v2 VL unless given. ``base_url``: the argument, else
    ``NVIDIA_BASE_URL``, else NVIDIA's hosted API catalog. ``api_key`` (or
    ``nvidia_api_key``): the argument, else ``NVIDIA_API_KEY`` (a local NIM needs none).
    ``available_models``: what the server serves. ``count_tokens`` and ``tokenizer``:
    offline estimates.

    Example:
        .. code-block:: python

            from llama_index.core.llms import ChatMessage, ImageBlock, TextBlock
            from llama_index.llms.nemovlm import NemoVLM

            llm = NemoVLM(model="nvidia/nemotron-nano-12b-v2-vl",
                          base_url="http://localhost:8000/v1")
            response = llm.chat([ChatMessage(role="user", blocks=[
                ImageBlock(path="chart.png"), TextBlock(text="Summarise"),
            ])])

    Video (Nano 12B v2 VL, DiffusionGemma): ``VideoBlock`` (url, path or bytes); sampling
    with ``video_fps`` or ``video_num_frames`` and ``max_num_tiles``. Reasoning comes
    back as a ``ThinkingBlock`` (streaming: ``additional_kwargs["thinking_delta"]``).
    Tools: ``chat_with_tools``, ``predict_and_call``, ``FunctionAgent`` (native where
    the NIM has tools, the core's prompt protocol otherwise).
    """

    @classmethod
    def class_name(cls) -> str:
        return "NemoVLM"


class NemoVLMMultiModal(_NvidiaConveniences, BaseNemoMultiModal):
    """``NemoVLM`` as a ``MultiModalLLM``: ``complete(prompt, image_documents=[...])``."""

    _llm_class = NemoVLM

    @classmethod
    def class_name(cls) -> str:
        # LlamaIndex's multi-modal index looks for "multi" in it (as in
        # "nvidia_multi_modal_llm") and warns otherwise.
        return "nemovlm_multi_modal_llm"
