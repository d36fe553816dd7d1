"""``NemoFal``: NVIDIA's vision-language models on fal as a LlamaIndex ``FunctionCallingLLM``;
``NemoFalMultiModal``: the same as a ``MultiModalLLM`` for image RAG query engines."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from pydantic import BaseModel, Field

from llama_index_nemovlm._base import BaseNemoLLM, BaseNemoMultiModal
from nemovlm.backends.fal import QueueUpdate, report_queue_progress
from nemovlm.settings import FalSettings


class _QueueUpdates(BaseModel):
    # Any: an async callback's coroutine is awaited by the async calls.
    on_queue_update: Callable[[QueueUpdate], Any] | None = Field(
        default=None,
        exclude=True,
        description="Called with each QueueUpdate (queue position, runner logs, completed); "
        "updates also go to the nemovlm.backends.fal logger at INFO.",
    )


class NemoFal(FalSettings, _QueueUpdates, BaseNemoLLM):
    """A vision-language model served on fal's queue, through ``fal-client``.

    Models: ``fal-ai/nemotron-diffusion-vlm`` (exactly one image and a prompt) and
    ``nvidia/nemotron-3-nano-omni/video`` (exactly one MP4 video and a prompt). A
    conversation is rendered into the app's single prompt by the core. Key:
    ``api_key``, else ``FAL_KEY``, else ``FAL_KEY_ID`` + ``FAL_KEY_SECRET``.

    Example:
        .. code-block:: python

            from llama_index.core.llms import ChatMessage, TextBlock, VideoBlock
            from llama_index.llms.nemovlm import NemoFal

            llm = NemoFal(model="nvidia/nemotron-3-nano-omni/video", reasoning=True)
            response = llm.chat([ChatMessage(role="user", blocks=[
                VideoBlock(url="https://example.com/clip.mp4"),
                TextBlock(text="What happens in this clip?"),
            ])])

    Omni's reasoning comes back as a ``ThinkingBlock``. Tools and structured output go
    through the core's prompt protocol (fal has no native tools). fal answers whole, so
    ``stream_chat`` yields the answer in one piece. ``raw["metadata"]`` holds the fal
    request id, timings and an estimated cost.
    """

    @classmethod
    def class_name(cls) -> str:
        return "NemoFal"

    def _reporting(self) -> AbstractContextManager[Any]:
        if self.on_queue_update is None:
            return nullcontext()
        return report_queue_progress(self.on_queue_update)


class NemoFalMultiModal(FalSettings, _QueueUpdates, BaseNemoMultiModal):
    """``NemoFal`` as a ``MultiModalLLM``: ``complete(prompt, image_documents=[one image])``."""

    _llm_class = NemoFal

    @classmethod
    def class_name(cls) -> str:
        # LlamaIndex's multi-modal index looks for "multi" in it and warns otherwise.
        return "nemofal_multi_modal_llm"
