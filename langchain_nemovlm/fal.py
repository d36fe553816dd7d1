"""``ChatNemoFal``: NVIDIA's vision-language models on fal as a LangChain chat model."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import LangSmithParams
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from pydantic import ConfigDict

from langchain_nemovlm._base import BaseChatNemo, langchain_aliases
from nemovlm.backends.fal import (
    ProgressCallback,
    QueueUpdate,
    report_queue_progress,
)
from nemovlm.settings import FalSettings


class ChatNemoFal(FalSettings, BaseChatNemo):
    """A vision-language model served on fal's queue, through ``fal-client``.

    Models: ``fal-ai/nemotron-diffusion-vlm`` (exactly one image and a prompt) and
    ``nvidia/nemotron-3-nano-omni/video`` (exactly one MP4 video, up to 1080p and 2
    minutes, and a prompt). A conversation (system message, earlier turns) is rendered
    into the app's single prompt; Omni gets system text as ``system_prompt``.

    Key: ``api_key``, else ``FAL_KEY``, else ``FAL_KEY_ID`` + ``FAL_KEY_SECRET``.

    Example:
        .. code-block:: python

            from langchain_core.messages import HumanMessage
            from langchain_nemovlm import ChatNemoFal

            llm = ChatNemoFal(model="nvidia/nemotron-3-nano-omni/video", reasoning=True)
            msg = llm.invoke([HumanMessage(content=[
                {"type": "text", "text": "What happens in this clip?"},
                {"type": "video_url", "video_url": {"url": "https://example.com/clip.mp4"}},
            ])])
            print(msg.content, msg.additional_kwargs.get("reasoning_content"))

    Parameters: ``max_tokens``; Omni: ``temperature``, ``top_p``, ``reasoning``
    (``reasoning_mode`` think/no_think; the trace lands in
    ``additional_kwargs["reasoning_content"]``); diffusion VLM: ``num_inference_steps``
    (alias ``inference_steps``), ``block_length``, ``threshold``. An explicit step count
    must be a multiple of ``max_tokens / block_length`` blocks; when omitted, 256 is
    rounded up to the nearest one. Ranges are checked before anything is sent. ``stop``
    is applied to the answer client-side (fal takes none); ``seed`` is refused.

    Media: http(s) URLs pass through; bytes, base64 and data URLs go inline up to
    ``upload_threshold_bytes`` (1 MB) and are uploaded with ``fal_client.upload``
    above it; a local video (``pathlib.Path``) is uploaded from disk.

    Tools and structured output: ``bind_tools`` / ``with_structured_output`` use the
    core's prompt protocol (fal has no native tools); a reply that does not parse
    comes back as text or ``invalid_tool_calls``.

    Queue progress: every change (queue position, in progress, each new runner log
    line, completed) goes to the run's LangChain callbacks as ``on_text`` (the text
    reads ``fal <model> request <id>: queued at position 0``; handlers also receive the
    structured ``QueueUpdate`` as the ``fal_queue_update`` keyword), and to the
    ``nemovlm.backends.fal`` logger at INFO. langchain-core 1.7's ``stream``/``astream``
    (and ``streaming=True``) hand the model no run manager, so there the logger is
    the only channel.

    Streaming: fal answers whole, so ``stream`` yields the answer as one chunk with
    reasoning and usage on it. ``response_metadata`` holds ``model_name``,
    ``fal_request_id``, ``timings``, ``diffusion_usage`` (steps, blocks...) and
    ``estimated_cost_usd`` (tokens x the published price per 1000 tokens).

    ``timeout`` bounds the whole queued request (more than 1 s, or ``None``); on
    expiry the request is cancelled on fal's queue and ``RequestTimeoutError`` raised.
    ``max_retries`` does not apply: fal-client retries 408/409/429 and connection
    errors on its own (another value than the default warns so).
    """

    model_config = ConfigDict(
        alias_generator=langchain_aliases(api_key="fal_key", num_inference_steps="inference_steps")
    )

    @property
    def _llm_type(self) -> str:
        return "nemovlm-fal"

    @property
    def lc_secrets(self) -> dict[str, str]:
        return {"api_key": "FAL_KEY"}

    @classmethod
    def get_lc_namespace(cls) -> list[str]:
        return ["langchain_nemovlm", "fal"]

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "fal"
        return params

    # --- calls: the same flow as the base, with queue progress sent to callbacks ---

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        with report_queue_progress(_to_callbacks(run_manager)):
            return super()._generate(messages, stop, run_manager, **kwargs)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        with report_queue_progress(_to_async_callbacks(run_manager)):
            return await super()._agenerate(messages, stop, run_manager, **kwargs)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        chunks = super()._stream(messages, stop, run_manager, **kwargs)
        # The whole request runs before the first chunk; the reporter is set only
        # around it, so it never leaks into the caller's code between chunks.
        with report_queue_progress(_to_callbacks(run_manager)):
            first = next(chunks, None)
        if first is not None:
            yield first
            yield from chunks

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        chunks = super()._astream(messages, stop, run_manager, **kwargs)
        with report_queue_progress(_to_async_callbacks(run_manager)):
            first = await anext(chunks, None)
        if first is not None:
            yield first
            async for chunk in chunks:
                yield chunk


def _to_callbacks(run_manager: CallbackManagerForLLMRun | None) -> ProgressCallback | None:
    if run_manager is None:
        return None

    def report(update: QueueUpdate) -> None:
        run_manager.on_text(f"{update}\n", fal_queue_update=update)

    return report


def _to_async_callbacks(
    run_manager: AsyncCallbackManagerForLLMRun | None,
) -> ProgressCallback | None:
    if run_manager is None:
        return None

    async def report(update: QueueUpdate) -> None:
        await run_manager.on_text(f"{update}\n", fal_queue_update=update)

    return report
