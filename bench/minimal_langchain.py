"""The floor for a LangChain chat model: a ``BaseChatModel`` that hands the messages
to the raw ``openai`` SDK and wraps its answer, with nothing else in between.

It converts roles, passes content (OpenAI parts included) through untouched, and
returns content, ``usage_metadata`` and ``model_name``: the least any real chat model
does. ``ChatNemoVLM`` is measured against it (target: at most 1.10x per call).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import PrivateAttr

_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}


def _map_messages(messages: list[BaseMessage]) -> Any:
    return [{"role": _ROLES.get(m.type, m.type), "content": m.content} for m in messages]


def _usage(usage: Any) -> UsageMetadata | None:
    if usage is None:
        return None
    return UsageMetadata(
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


class MinimalChatModel(BaseChatModel):
    """A minimal LangChain chat model over ``openai.OpenAI`` / ``AsyncOpenAI``."""

    model: str
    base_url: str
    api_key: str = "not-used"

    _client: openai.OpenAI | None = PrivateAttr(default=None)
    _aclient: openai.AsyncOpenAI | None = PrivateAttr(default=None)

    @property
    def _llm_type(self) -> str:
        return "minimal-openai-sdk"

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

    def _result(self, completion: Any) -> ChatResult:
        message = completion.choices[0].message
        ai = AIMessage(
            content=message.content or "",
            usage_metadata=_usage(completion.usage),
            response_metadata={"model_name": completion.model},
        )
        return ChatResult(generations=[ChatGeneration(message=ai)])

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        completion = self.client.chat.completions.create(
            model=self.model,
            messages=_map_messages(messages),
        )
        return self._result(completion)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        completion = await self.aclient.chat.completions.create(
            model=self.model,
            messages=_map_messages(messages),
        )
        return self._result(completion)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        stream = self.client.chat.completions.create(
            model=self.model,
            messages=_map_messages(messages),
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            text = chunk.choices[0].delta.content or "" if chunk.choices else ""
            message = AIMessageChunk(content=text, usage_metadata=_usage(chunk.usage))
            if run_manager and text:
                run_manager.on_llm_new_token(text)
            yield ChatGenerationChunk(message=message)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        stream = await self.aclient.chat.completions.create(
            model=self.model,
            messages=_map_messages(messages),
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            text = chunk.choices[0].delta.content or "" if chunk.choices else ""
            message = AIMessageChunk(content=text, usage_metadata=_usage(chunk.usage))
            if run_manager and text:
                await run_manager.on_llm_new_token(text)
            yield ChatGenerationChunk(message=message)
