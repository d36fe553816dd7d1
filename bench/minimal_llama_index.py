"""The floor for a LlamaIndex LLM: ``chat`` / ``achat`` / ``stream_chat`` straight onto
the raw ``openai`` SDK, with LlamaIndex's own callback decorator and nothing else.

Blocks become OpenAI parts the way ``llama-index-llms-openai`` does it (text, and an
image as its URL or as a base64 data URL). ``NemoVLM`` is measured against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import openai
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    ImageBlock,
    LLMMetadata,
    MessageRole,
    TextBlock,
)
from llama_index.core.llms.callbacks import llm_chat_callback
from llama_index.core.llms.llm import LLM
from pydantic import PrivateAttr


def _map_message(message: ChatMessage) -> Any:
    parts: list[dict[str, Any]] = []
    for block in message.blocks:
        if isinstance(block, TextBlock):
            parts.append({"type": "text", "text": block.text})
        elif isinstance(block, ImageBlock):
            if block.url:
                url = str(block.url)
            else:
                b64 = block.resolve_image(as_base64=True).read().decode()
                url = f"data:{block.image_mimetype};base64,{b64}"
            parts.append({"type": "image_url", "image_url": {"url": url}})
    return {"role": message.role.value, "content": parts}


class MinimalLlamaLLM(LLM):
    """A minimal LlamaIndex chat LLM over ``openai.OpenAI`` / ``AsyncOpenAI``."""

    model: str
    base_url: str
    api_key: str = "not-used"

    _client: openai.OpenAI | None = PrivateAttr(default=None)
    _aclient: openai.AsyncOpenAI | None = PrivateAttr(default=None)

    @classmethod
    def class_name(cls) -> str:
        return "MinimalLlamaLLM"

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(is_chat_model=True, model_name=self.model)

    @property
    def client(self) -> openai.OpenAI:
        if self._client is None:
            self._client = openai.OpenAI(base_url=self.base_url, api_key=self.api_key)
        return self._client

    @property
    def aclient(self) -> openai.AsyncOpenAI:
        if self._aclient is None:
            self._aclient = openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key)
        return self._aclient

    @staticmethod
    def _response(completion: Any) -> ChatResponse:
        text = completion.choices[0].message.content or ""
        return ChatResponse(
            message=ChatMessage(role=MessageRole.ASSISTANT, content=text), raw=completion
        )

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        completion = self.client.chat.completions.create(
            model=self.model,
            messages=[_map_message(m) for m in messages],
        )
        return self._response(completion)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        completion = await self.aclient.chat.completions.create(
            model=self.model,
            messages=[_map_message(m) for m in messages],
        )
        return self._response(completion)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        stream: Any = self.client.chat.completions.create(
            model=self.model,
            messages=[_map_message(m) for m in messages],
            stream=True,
        )

        def gen() -> ChatResponseGen:
            text = ""
            for chunk in stream:
                delta = chunk.choices[0].delta.content or "" if chunk.choices else ""
                text += delta
                yield ChatResponse(
                    message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=delta
                )

        return gen()

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        raise NotImplementedError("The bench measures chat only.")

    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        raise NotImplementedError("The bench measures chat only.")

    async def astream_chat(
        self, messages: Sequence[ChatMessage], **kwargs: Any
    ) -> ChatResponseAsyncGen:
        raise NotImplementedError("The bench measures chat only.")

    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        raise NotImplementedError("The bench measures chat only.")

    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        raise NotImplementedError("The bench measures chat only.")
