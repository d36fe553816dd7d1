"""``ChatNemoVLM``: any NIM vision-language model as a LangChain chat model."""

from __future__ import annotations

from typing import Any, Literal

from langchain_core.utils import secret_from_env
from pydantic import Field, SecretStr

from langchain_nemovlm._base import _NemoChatModel
from nemovlm.backends.nim import NIMBackend
from nemovlm.hosted import HostedMedia, decide_hosted


class ChatNemoVLM(_NemoChatModel):
    """A NIM vision-language model (OpenAI-compatible), with every model quirk handled.

    ``base_url``: the argument, else ``NVIDIA_BASE_URL``, else NVIDIA's hosted API
    catalog. ``api_key``: the argument, else ``NVIDIA_API_KEY`` (a local NIM needs none).

    Example:
        .. code-block:: python

            from langchain_core.messages import HumanMessage
            from langchain_nemovlm import ChatNemoVLM

            llm = ChatNemoVLM(model="nvidia/nemotron-nano-12b-v2-vl",
                              base_url="http://localhost:8000/v1", reasoning=True)
            msg = llm.invoke([HumanMessage(content=[
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            ])])
            print(msg.content, msg.additional_kwargs.get("reasoning_content"))

    Video (Nano 12B v2 VL, DiffusionGemma): ``{"type": "video_url", ...}`` parts or
    standard ``{"type": "video", "url"|"base64": ...}`` blocks; sampling with
    ``video_fps`` or ``video_num_frames`` (one of them, at most 128 frames) and
    ``max_num_tiles``. Tools: ``bind_tools`` (native where the NIM has them, a prompt
    protocol otherwise); ``with_structured_output``.
    """

    base_url: str | None = Field(default=None, alias="nvidia_base_url")
    api_key: SecretStr | None = Field(
        default_factory=secret_from_env("NVIDIA_API_KEY", default=None), alias="nvidia_api_key"
    )
    image_transport: Literal["parts", "img_tag"] = "parts"
    """``img_tag`` sends images as ``<img src=...>`` in plain text (Llama Nano VL 8B)."""
    video_fps: float | None = None
    video_num_frames: int | None = None
    max_num_tiles: int | None = None
    default_headers: dict[str, str] | None = None
    http_client: Any = Field(default=None, exclude=True)
    """An HTTP client of your own (proxies, custom TLS) for sync calls, of the type the
    installed ``openai`` SDK takes (``httpx.Client``; ``httpx2.Client`` with openai 3.x)."""
    http_async_client: Any = Field(default=None, exclude=True)
    # NVIDIA's hosted catalog (nemovlm.hosted): its rules and NVCF assets.
    hosted: bool | None = None
    """``None``: decided from the base URL (NVIDIA's catalog host: hosted); see ``is_hosted``."""
    assets_url: str | None = None
    """The NVCF assets endpoint; ``None``: ``NVCF_ASSETS_URL``, else NVIDIA's
    (``https://api.nvcf.nvidia.com/v2/nvcf/assets``)."""
    hosted_media: HostedMedia = "auto"
    """On the catalog: ``auto`` keeps media inline while they fit the model's budget and
    uploads the rest as NVCF assets; ``upload`` uploads all; ``fit`` never uploads and
    shrinks images to fit."""

    @property
    def is_hosted(self) -> bool:
        """Whether calls follow the hosted catalog's rules (``hosted``, else the base URL)."""
        return decide_hosted(self.hosted, self.base_url)

    @property
    def _llm_type(self) -> str:
        return "nemovlm-nim"

    @property
    def lc_secrets(self) -> dict[str, str]:
        return {"api_key": "NVIDIA_API_KEY"}

    @classmethod
    def get_lc_namespace(cls) -> list[str]:
        return ["langchain_nemovlm", "chat_models"]

    def _make_backend(self) -> NIMBackend:
        return NIMBackend.connect(
            self.nemo_profile,
            base_url=self.base_url,
            api_key=self.api_key,
            timeout=self.timeout,
            max_retries=self.max_retries,
            default_headers=self.default_headers,
            http_client=self.http_client,
            async_http_client=self.http_async_client,
            policy=self._media_policy(),
            hosted=self.hosted,
            assets_url=self.assets_url,
            hosted_media=self.hosted_media,
        )
