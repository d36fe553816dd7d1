"""What ``NemoVLM``/``NemoFal`` and their multi-modal twins share: the call flow, tools.

The settings are the core's (``nemovlm.settings``); ``_LlamaIndexSettings`` adds what
only LlamaIndex has (``additional_kwargs``, keys never serialised).

Flow: ``chat``/``stream_chat``/``complete``/``stream_complete`` and the async twins ->
``_turns`` (``_convert.map_messages``) -> ``_call``/``_stream_call`` (fields + call
kwargs -> ``RequestOptions`` in ``_options``, via the settings' ``request_options``) ->
``self.backend`` (a core backend: NIM or fal) -> ``Reply``/``Delta`` ->
``_convert.process_reply`` / ``_convert.ChatResponseAccumulator``. The multi-modal
classes hold one such LLM and call the same ``_call``s, so an image document goes
through the same mapping as an ``ImageBlock``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

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
    ToolCallBlock,
)
from llama_index.core.chat_engine.types import AgentChatResponse
from llama_index.core.constants import DEFAULT_NUM_INPUT_FILES, DEFAULT_NUM_OUTPUTS
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.multi_modal_llms import MultiModalLLM, MultiModalLLMMetadata
from llama_index.core.schema import ImageDocument, ImageNode
from llama_index.core.types import TokenAsyncGen, TokenGen
from pydantic import Field, PrivateAttr, SecretStr, field_serializer

from llama_index_nemovlm._convert import (
    ChatResponseAccumulator,
    map_image_document,
    map_messages,
    process_completion,
    process_reply,
    process_tool_selections,
    tool_spec_from_llama_index,
)
from nemovlm.errors import (
    IncompleteResponseError,
    MissingCredentialsError,
    NemoVLMError,
    UnsupportedInputError,
)
from nemovlm.messages import TextPart, Turn
from nemovlm.options import RequestOptions
from nemovlm.settings import CommonSettings
from nemovlm.tokens import estimate_text_tokens, estimate_tokens

if TYPE_CHECKING:
    from llama_index.core.tools.types import BaseTool

ImageDocuments = Sequence[ImageNode | ImageDocument | ImageBlock]
_T = TypeVar("_T")


class InputRefusedError(NemoVLMError):
    """An ``UnsupportedInputError`` or ``MissingCredentialsError`` met inside the methods
    LlamaIndex's own components call (``predict``, ``structured_predict``,
    ``predict_and_call``, ``stream`` and their async twins).

    Those two are ``ValueError``s, and ``Refine`` and other synthesizers catch
    ``ValueError`` and answer "Empty Response": this class is not one, so the refusal
    reaches the user. The original error is ``__cause__`` (and ``refusal``); the message
    is the same. ``chat``/``complete`` and the rest raise the original classes.
    """

    def __init__(self, refusal: UnsupportedInputError | MissingCredentialsError) -> None:
        super().__init__(str(refusal))
        self.refusal = refusal


@contextmanager
def _refusals_propagate() -> Iterator[None]:
    try:
        yield
    except (UnsupportedInputError, MissingCredentialsError) as exc:
        raise InputRefusedError(exc) from exc


# The core phrases its advice with LangChain's method names; a LlamaIndex user reads
# their own. Rewritten where an error leaves this adapter (``_in_llama_index_words``).
_METHOD_NAMES = {
    "invoke()": "chat() (or complete())",
    "stream()": "stream_chat() (or stream_complete())",
}
_METHOD_NAME = re.compile("|".join(re.escape(name) for name in _METHOD_NAMES))


@contextmanager
def _in_llama_index_words() -> Iterator[None]:
    try:
        yield
    except UnsupportedInputError as exc:
        exc.args = tuple(
            _METHOD_NAME.sub(lambda m: _METHOD_NAMES[m.group()], a) if isinstance(a, str) else a
            for a in exc.args
        )
        raise


def _propagating(items: Iterator[_T]) -> Generator[_T, None, None]:
    with _refusals_propagate():
        yield from items


async def _apropagating(items: AsyncIterator[_T]) -> AsyncGenerator[_T, None]:
    with _refusals_propagate():
        async for item in items:
            yield item


class _LlamaIndexSettings(CommonSettings):
    """What every class here adds to the core's settings, NIM or fal, chat or multi-modal."""

    @field_serializer("api_key", check_fields=False)
    def _never_the_key(self, value: SecretStr | None) -> None:
        # Keys are never serialised (to_dict, to_json): a model rebuilt from a dump
        # reads its key from the environment, as it would when made without one.
        return None

    additional_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra wire parameters, sent as they are after the backend's checks "
        "(extra_body merged into the body, as OpenAILike does). Unknown constructor "
        "arguments land here too, with a warning.",
    )
    _extra_arguments_field = "additional_kwargs"


class BaseNemoLLM(_LlamaIndexSettings, FunctionCallingLLM):
    """Shared base; use ``NemoVLM`` (NIM) or ``NemoFal`` (fal)."""

    @property
    def metadata(self) -> LLMMetadata:
        profile = self.nemo_profile
        return LLMMetadata(
            context_window=profile.context_window,
            num_output=self.max_tokens or profile.max_output_tokens or DEFAULT_NUM_OUTPUTS,
            is_chat_model=True,
            is_function_calling_model=True,
            model_name=self.model,
            system_role=MessageRole.SYSTEM,
        )

    # --- request ----------------------------------------------------------------

    def _options(self, kwargs: dict[str, Any]) -> RequestOptions:
        overrides = dict(kwargs)
        stop = overrides.pop("stop", None)
        overrides.pop("formatted", None)  # LlamaIndex's complete() flag, not a parameter
        if overrides.get("tools") is not None:
            overrides["tools"] = [tool_spec_from_llama_index(t) for t in overrides["tools"]]
        return self.request_options(overrides, extra=self.additional_kwargs, stop=stop)

    def _turns(self, messages: Sequence[ChatMessage]) -> list[Turn]:
        return map_messages(messages, self.media_policy())

    # --- neutral calls (shared with the multi-modal classes) --------------------

    def _reporting(self) -> AbstractContextManager[Any]:
        """Held around backend work only (the fal classes report queue progress in it)."""
        return nullcontext()

    def _boundary(self) -> ExitStack:
        """Held around backend work only: the fal classes report queue progress in it,
        and errors leave it in LlamaIndex's words."""
        stack = ExitStack()
        stack.enter_context(_in_llama_index_words())
        stack.enter_context(self._reporting())
        return stack

    def _call(self, turns: list[Turn], kwargs: dict[str, Any]) -> ChatResponse:
        with self._boundary():
            reply = self.backend.complete(turns, self._options(kwargs))
        return process_reply(reply, self.model)

    async def _acall(self, turns: list[Turn], kwargs: dict[str, Any]) -> ChatResponse:
        with self._boundary():
            reply = await self.backend.acomplete(turns, self._options(kwargs))
        return process_reply(reply, self.model)

    def _stream_call(self, turns: list[Turn], kwargs: dict[str, Any]) -> ChatResponseGen:
        options = self._options(kwargs)

        def gen() -> ChatResponseGen:
            state = ChatResponseAccumulator(self.model)
            deltas = self.backend.stream(turns, options)
            while True:
                # Not across the yield: the caller's code between chunks is not ours.
                with self._boundary():
                    delta = next(deltas, None)
                if delta is None:
                    break
                response = state.feed(delta)
                if response is not None:
                    yield response
            yield state.last()

        return gen()

    def _astream_call(self, turns: list[Turn], kwargs: dict[str, Any]) -> ChatResponseAsyncGen:
        options = self._options(kwargs)

        async def gen() -> ChatResponseAsyncGen:
            state = ChatResponseAccumulator(self.model)
            deltas = aiter(self.backend.astream(turns, options))
            while True:
                with self._boundary():
                    delta = await anext(deltas, None)
                if delta is None:
                    break
                response = state.feed(delta)
                if response is not None:
                    yield response
            yield state.last()

        return gen()

    # --- what LlamaIndex's components call: refusals must get through ----------------
    # Refine and other synthesizers catch ValueError around these (see InputRefusedError).

    def predict(self, *args: Any, **kwargs: Any) -> str:
        with _refusals_propagate():
            return super().predict(*args, **kwargs)

    async def apredict(self, *args: Any, **kwargs: Any) -> str:
        with _refusals_propagate():
            return await super().apredict(*args, **kwargs)

    def structured_predict(self, *args: Any, **kwargs: Any) -> Any:
        with _refusals_propagate():
            return super().structured_predict(*args, **kwargs)

    async def astructured_predict(self, *args: Any, **kwargs: Any) -> Any:
        with _refusals_propagate():
            return await super().astructured_predict(*args, **kwargs)

    def predict_and_call(self, *args: Any, **kwargs: Any) -> AgentChatResponse:
        with _refusals_propagate():
            return super().predict_and_call(*args, **kwargs)

    async def apredict_and_call(self, *args: Any, **kwargs: Any) -> AgentChatResponse:
        with _refusals_propagate():
            return await super().apredict_and_call(*args, **kwargs)

    def stream(self, *args: Any, **kwargs: Any) -> TokenGen:
        with _refusals_propagate():
            return _propagating(super().stream(*args, **kwargs))

    async def astream(self, *args: Any, **kwargs: Any) -> TokenAsyncGen:
        with _refusals_propagate():
            return _apropagating(await super().astream(*args, **kwargs))

    def stream_structured_predict(self, *args: Any, **kwargs: Any) -> Generator[Any, None, None]:
        with _refusals_propagate():
            return _propagating(super().stream_structured_predict(*args, **kwargs))

    async def astream_structured_predict(
        self, *args: Any, **kwargs: Any
    ) -> AsyncGenerator[Any, None]:
        with _refusals_propagate():
            return _apropagating(await super().astream_structured_predict(*args, **kwargs))

    # --- token counting ----------------------------------------------------------

    def count_tokens(self, messages: Sequence[ChatMessage], tools: Sequence[BaseTool] = ()) -> int:
        """An **estimate** of the prompt tokens ``messages`` (and ``tools``) cost, made
        offline (``nemovlm.tokens.estimate_tokens``): text by a rule of thumb, images
        from the model's tiling, videos by sampled frames; nothing is downloaded. Not
        exact: ``raw["usage"]`` of a response is the true count."""
        specs = [tool_spec_from_llama_index(t) for t in tools]
        return estimate_tokens(
            self._turns(messages), self.nemo_profile, tools=specs, options=self.request_defaults()
        )

    @property
    def tokenizer(self) -> Callable[[str], list[int]]:
        """A tokenizer for LlamaIndex's token counting that needs no download:
        ``TokenCountingHandler(tokenizer=llm.tokenizer)``,
        ``Memory.from_defaults(tokenizer_fn=llm.tokenizer)``, ``Settings.tokenizer``.
        An **estimate**: LlamaIndex reads only the length of what it returns, a list as
        long as ``nemovlm.tokens.estimate_text_tokens`` counts (not real token ids)."""
        return _estimating_tokenizer

    # --- LlamaIndex endpoints ---------------------------------------------------

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._call(self._turns(messages), kwargs)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return await self._acall(self._turns(messages), kwargs)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return self._stream_call(self._turns(messages), kwargs)

    @llm_chat_callback()
    async def astream_chat(
        self, messages: Sequence[ChatMessage], **kwargs: Any
    ) -> ChatResponseAsyncGen:
        return self._astream_call(self._turns(messages), kwargs)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return process_completion(self._call(_prompt_turns(prompt), kwargs))

    @llm_completion_callback()
    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        return process_completion(await self._acall(_prompt_turns(prompt), kwargs))

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        return _completions(self._stream_call(_prompt_turns(prompt), kwargs))

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        return _acompletions(self._astream_call(_prompt_turns(prompt), kwargs))

    # --- tools --------------------------------------------------------------------

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        tool_choice: str | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Tools go to the core as ``ToolSpec``s: native OpenAI tools where the model's
        server has them, the core's prompt protocol otherwise. ``tool_required`` ->
        ``tool_choice="required"``; ``tool_choice`` may also name one tool."""
        messages = list(chat_history or [])
        if isinstance(user_msg, str):
            user_msg = ChatMessage(role=MessageRole.USER, content=user_msg)
        if user_msg is not None:
            messages.append(user_msg)
        specs = [tool_spec_from_llama_index(t) for t in tools]
        prepared: dict[str, Any] = {"messages": messages, **kwargs}
        if specs:
            prepared["tools"] = specs
            choice = (
                tool_choice if tool_choice is not None else ("required" if tool_required else None)
            )
            if choice is not None:
                prepared["tool_choice"] = choice
        return prepared

    def _validate_chat_with_tools_response(
        self,
        response: ChatResponse,
        tools: Sequence[BaseTool],
        allow_parallel_tool_calls: bool = False,
        **kwargs: Any,
    ) -> ChatResponse:
        if not allow_parallel_tool_calls:
            _keep_first_tool_call(response)
        return response

    def get_tool_calls_from_response(
        self,
        response: ChatResponse,
        error_on_no_tool_call: bool = True,
        **kwargs: Any,
    ) -> list[ToolSelection]:
        """The response's tool calls as ``ToolSelection``s (``ToolCallBlock``s first, else
        OpenAI-shaped ``additional_kwargs["tool_calls"]``).

        A call whose arguments did not parse is never passed over: with
        ``error_on_no_tool_call=False`` (what ``FunctionAgent`` asks) it raises
        ``IncompleteResponseError`` naming the tool and why, rather than letting the
        agent take the turn for a final answer."""
        if not error_on_no_tool_call:
            _refuse_unparsed_tool_calls(response)
        return process_tool_selections(response, error_on_no_tool_call)


class BaseNemoMultiModal(_LlamaIndexSettings, MultiModalLLM):
    """Shared base of the ``MultiModalLLM`` classes (image RAG query engines).

    Holds one ``_llm_class`` instance built from the same fields and calls its
    ``_call``s, so there is one mapping and one backend per instance.
    """

    # The LLM callbacks read this; MultiModalLLM (llama-index-core 0.14) lacks the field.
    rate_limiter: Any | None = Field(
        default=None, exclude=True, description="A BaseRateLimiter to throttle calls."
    )

    _llm_class: ClassVar[type[BaseNemoLLM]]
    _llm: BaseNemoLLM | None = PrivateAttr(default=None)

    @property
    def llm(self) -> BaseNemoLLM:
        """The chat LLM doing the work (same model, same settings)."""
        if self._llm is None:
            shared = set(self._llm_class.model_fields) & set(type(self).model_fields)
            self._llm = self._llm_class(**{name: getattr(self, name) for name in shared})
        return self._llm

    @property
    def metadata(self) -> MultiModalLLMMetadata:
        profile = self.nemo_profile
        return MultiModalLLMMetadata(
            context_window=profile.context_window,
            num_output=self.max_tokens or profile.max_output_tokens or DEFAULT_NUM_OUTPUTS,
            num_input_files=profile.max_images or DEFAULT_NUM_INPUT_FILES,
            is_function_calling_model=True,
            model_name=self.model,
            is_chat_model=True,
        )

    def to_payload(self) -> dict[str, Any]:
        # The callbacks call this; MultiModalLLM (llama-index-core 0.14) lacks it.
        return {"class_name": self.class_name(), **self.metadata.model_dump()}

    def _document_turns(self, prompt: str, image_documents: ImageDocuments) -> list[Turn]:
        policy = self.media_policy()
        media = [map_image_document(d, policy) for d in image_documents]
        return [Turn("user", [*media, TextPart(prompt)] if prompt else list(media))]

    def complete(
        self, prompt: str, image_documents: ImageDocuments, **kwargs: Any
    ) -> CompletionResponse:
        turns = self._document_turns(prompt, image_documents)
        return process_completion(self.llm._call(turns, kwargs))

    async def acomplete(
        self, prompt: str, image_documents: ImageDocuments, **kwargs: Any
    ) -> CompletionResponse:
        turns = self._document_turns(prompt, image_documents)
        return process_completion(await self.llm._acall(turns, kwargs))

    def stream_complete(
        self, prompt: str, image_documents: ImageDocuments, **kwargs: Any
    ) -> CompletionResponseGen:
        turns = self._document_turns(prompt, image_documents)
        return _completions(self.llm._stream_call(turns, kwargs))

    async def astream_complete(
        self, prompt: str, image_documents: ImageDocuments, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        turns = self._document_turns(prompt, image_documents)
        return _acompletions(self.llm._astream_call(turns, kwargs))

    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self.llm._call(self.llm._turns(messages), kwargs)

    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return await self.llm._acall(self.llm._turns(messages), kwargs)

    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return self.llm._stream_call(self.llm._turns(messages), kwargs)

    async def astream_chat(
        self, messages: Sequence[ChatMessage], **kwargs: Any
    ) -> ChatResponseAsyncGen:
        return self.llm._astream_call(self.llm._turns(messages), kwargs)


def _estimating_tokenizer(text: str) -> list[int]:
    return [0] * estimate_text_tokens(text)


def _prompt_turns(prompt: str) -> list[Turn]:
    return [Turn("user", [TextPart(prompt)])]


def _completions(responses: ChatResponseGen) -> CompletionResponseGen:
    for response in responses:
        yield process_completion(response)


async def _acompletions(responses: ChatResponseAsyncGen) -> CompletionResponseAsyncGen:
    async for response in responses:
        yield process_completion(response)


def _refuse_unparsed_tool_calls(response: ChatResponse) -> None:
    invalid = response.message.additional_kwargs.get("invalid_tool_calls") or []
    if not invalid:
        return
    why = "; ".join(f"{c.get('name')!r}: {c.get('error')}" for c in invalid)
    raise IncompleteResponseError(
        f"The model called a tool but the call did not parse ({why}); nothing was run. "
        "Ask again, or give the model a simpler tool signature."
    )


def _keep_first_tool_call(response: ChatResponse) -> None:
    """One call only, when the caller did not allow parallel calls."""
    message = response.message
    seen = False
    blocks = []
    for block in message.blocks:
        if isinstance(block, ToolCallBlock):
            if seen:
                continue
            seen = True
        blocks.append(block)
    message.blocks = blocks
    calls = message.additional_kwargs.get("tool_calls")
    if calls:
        message.additional_kwargs["tool_calls"] = calls[:1]
