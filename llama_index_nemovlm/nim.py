"""``NemoVLM``: any NIM vision-language model as a LlamaIndex ``FunctionCallingLLM``;
``NemoVLMMultiModal``: the same as a ``MultiModalLLM`` for image RAG query engines."""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from llama_index_nemovlm._base import _NemoLLM, _NemoMultiModal
from nemovlm.backends.nim import NIMBackend
from nemovlm.hosted import HostedMedia, decide_hosted


def _api_key_from_env() -> SecretStr | None:
    value = os.environ.get("NVIDIA_API_KEY")
    return SecretStr(value) if value else None


class _NimSettings(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    base_url: str | None = Field(
        default=None,
        description="The NIM's /v1 URL; else NVIDIA_BASE_URL, else NVIDIA's hosted API catalog.",
    )
    api_key: SecretStr | None = Field(
        default_factory=_api_key_from_env,
        description="Else NVIDIA_API_KEY; a local NIM needs none.",
    )
    image_transport: Literal["parts", "img_tag"] = Field(
        default="parts",
        description="img_tag sends images as <img src=...> in plain text (Llama Nano VL 8B).",
    )
    video_fps: float | None = None
    video_num_frames: int | None = None
    max_num_tiles: int | None = None
    default_headers: dict[str, str] | None = None
    http_client: Any = Field(
        default=None, exclude=True, description="A client of your own (proxies, TLS)."
    )
    # The client type follows the installed openai SDK (httpx; httpx2 with openai 3.x).
    async_http_client: Any = Field(default=None, exclude=True)
    # NVIDIA's hosted catalog (nemovlm.hosted): its rules and NVCF assets.
    hosted: bool | None = Field(
        default=None,
        description="None: decided from the base URL (NVIDIA's catalog host: hosted).",
    )
    assets_url: str | None = Field(
        default=None,
        description="The NVCF assets endpoint; None: NVCF_ASSETS_URL, else NVIDIA's "
        "(https://api.nvcf.nvidia.com/v2/nvcf/assets).",
    )
    hosted_media: HostedMedia = Field(
        default="auto",
        description="On the catalog: auto (inline while it fits, else NVCF assets), upload "
        "(always assets) or fit (never upload; shrink images to fit).",
    )

    @property
    def is_hosted(self) -> bool:
        """Whether calls follow the hosted catalog's rules (``hosted``, else the base URL)."""
        return decide_hosted(self.hosted, self.base_url)


class NemoVLM(_NimSettings, _NemoLLM):
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

    def _make_backend(self) -> NIMBackend:
        return NIMBackend.connect(
            self.nemo_profile,
            base_url=self.base_url,
            api_key=self.api_key,
            timeout=self.timeout,
            max_retries=self.max_retries,
            default_headers=self.default_headers,
            http_client=self.http_client,
            async_http_client=self.async_http_client,
            policy=self._media_policy(),
            hosted=self.hosted,
            assets_url=self.assets_url,
            hosted_media=self.hosted_media,
        )


class NemoVLMMultiModal(_NimSettings, _NemoMultiModal):
    """``NemoVLM`` as a ``MultiModalLLM``: ``complete(prompt, image_documents=[...])``."""

    _llm_class = NemoVLM

    @classmethod
    def class_name(cls) -> str:
        return "NemoVLMMultiModal"
