"""``NemoFal``: NVIDIA's vision-language models on fal as a LlamaIndex ``FunctionCallingLLM``;
``NemoFalMultiModal``: the same as a ``MultiModalLLM`` for image RAG query engines."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar

from pydantic import ConfigDict, Field, SecretStr

from llama_index_nemovlm._base import _NemoLLM, _NemoMultiModal, _NemoSettings
from nemovlm.backends.fal import (
    UPLOAD_THRESHOLD_BYTES,
    FalBackend,
    QueueUpdate,
    report_queue_progress,
    resolve_fal_key,
    with_diffusion_settings,
)
from nemovlm.options import RequestOptions
from nemovlm.profiles import Backend


def _fal_key_from_env() -> SecretStr | None:
    value = os.environ.get("FAL_KEY")
    return SecretStr(value) if value else None


class _FalSettings(_NemoSettings):
    _backend_kind: ClassVar[Backend] = "fal"
    model_config = ConfigDict(arbitrary_types_allowed=True)

    api_key: SecretStr | None = Field(
        default_factory=_fal_key_from_env,
        description="Else FAL_KEY, else FAL_KEY_ID + FAL_KEY_SECRET.",
    )
    timeout: float | None = Field(
        default=300.0,
        description="Seconds for the whole queued request (queue wait included); more than 1.",
    )
    poll_interval: float = Field(default=0.1, description="Seconds between queue polls.")
    upload_threshold_bytes: int = Field(
        default=UPLOAD_THRESHOLD_BYTES,
        description="Inline media up to this size; upload anything larger to fal's storage.",
    )
    num_inference_steps: int | None = Field(
        default=None, description="Diffusion VLM decoding steps (1..1024); None: 256 rounded up."
    )
    block_length: int | None = Field(
        default=None, description="Diffusion VLM block length (8..128); None: the app's 32."
    )
    threshold: float | None = Field(
        default=None, description="Diffusion VLM confidence threshold (0..1); None: 0.9."
    )
    # Any: an async callback's coroutine is awaited by the async calls.
    on_queue_update: Callable[[QueueUpdate], Any] | None = Field(
        default=None,
        exclude=True,
        description="Called with each QueueUpdate (queue position, runner logs, completed); "
        "updates also go to the nemovlm.backends.fal logger at INFO.",
    )


class NemoFal(_FalSettings, _NemoLLM):
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

    def _make_backend(self) -> FalBackend:
        return FalBackend(
            profile=self.nemo_profile,
            api_key=resolve_fal_key(self.api_key),
            timeout=self.timeout,
            poll_interval=self.poll_interval,
            upload_threshold_bytes=self.upload_threshold_bytes,
            policy=self._media_policy(),
        )

    def _reporting(self) -> AbstractContextManager[Any]:
        if self.on_queue_update is None:
            return nullcontext()
        return report_queue_progress(self.on_queue_update)

    def _options(self, kwargs: dict[str, Any]) -> RequestOptions:
        return with_diffusion_settings(
            super()._options(kwargs),
            num_inference_steps=self.num_inference_steps,
            block_length=self.block_length,
            threshold=self.threshold,
        )


class NemoFalMultiModal(_FalSettings, _NemoMultiModal):
    """``NemoFal`` as a ``MultiModalLLM``: ``complete(prompt, image_documents=[one image])``."""

    _llm_class = NemoFal

    @classmethod
    def class_name(cls) -> str:
        return "NemoFalMultiModal"
