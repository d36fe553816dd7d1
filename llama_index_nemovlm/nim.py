"""``NemoVLM``: any NIM vision-language model as a LlamaIndex ``FunctionCallingLLM``;
``NemoVLMMultiModal``: the same as a ``MultiModalLLM`` for image RAG query engines."""

from __future__ import annotations

from llama_index_nemovlm._base import BaseNemoLLM, BaseNemoMultiModal
from nemovlm.settings import NimSettings


class NemoVLM(NimSettings, BaseNemoLLM):
    """A NIM vision-language model (OpenAI-compatible), with every model quirk handled.

    ``base_url``: the argument, else ``NVIDIA_BASE_URL``, else NVIDIA's hosted API
    catalog. ``api_key``: the argument, else ``NVIDIA_API_KEY`` (a local NIM needs none).

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


class NemoVLMMultiModal(NimSettings, BaseNemoMultiModal):
    """``NemoVLM`` as a ``MultiModalLLM``: ``complete(prompt, image_documents=[...])``."""

    _llm_class = NemoVLM

    @classmethod
    def class_name(cls) -> str:
        return "NemoVLMMultiModal"
