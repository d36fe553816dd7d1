"""``ChatNemoVLM``: any NIM vision-language model as a LangChain chat model."""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict

from langchain_nemovlm._base import BaseChatNemo, langchain_aliases
from nemovlm.secrets import lc_secret_paths
from nemovlm.settings import NimSettings


class ChatNemoVLM(NimSettings, BaseChatNemo):
    """A NIM vision-language model (OpenAI-compatible), with every model quirk handled.

    ``model``: Nemotron Nano 12B v2 VL unless given. ``base_url`` (or
    ``nvidia_base_url``): the argument, else ``NVIDIA_BASE_URL``, else NVIDIA's hosted
    API catalog. ``api_key`` (or ``nvidia_api_key``): the argument, else
    ``NVIDIA_API_KEY`` (a local NIM needs none).

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

    As ``ChatOpenAI``: ``extra_body`` (constructor or call) is merged into the request
    body, unknown constructor arguments are warned about and sent (``model_kwargs``),
    ``n`` gives one generation per choice, ``logprobs`` land in
    ``response_metadata["logprobs"]``. ``available_models`` lists what the server
    serves; ``get_num_tokens_from_messages`` is an offline estimate. See
    ``docs/idioms.md``.
    """

    model_config = ConfigDict(
        alias_generator=langchain_aliases(
            base_url="nvidia_base_url",
            api_key="nvidia_api_key",
            async_http_client="http_async_client",
        )
    )

    @property
    def http_async_client(self) -> Any:
        """LangChain's name for ``async_http_client`` (the argument takes either)."""
        return self.async_http_client

    @property
    def _llm_type(self) -> str:
        return "nemovlm-nim"

    @property
    def lc_secrets(self) -> dict[str, str]:
        paths = lc_secret_paths(self.default_headers, self.base_url, self.assets_url)
        return {"api_key": "NVIDIA_API_KEY", **paths}

    @classmethod
    def get_lc_namespace(cls) -> list[str]:
        return ["langchain_nemovlm", "chat_models"]
