"""What ``ChatNemoVLM`` and ``ChatNemoFal`` share: the call flow, tools, structured output.

The settings themselves are the core's (``nemovlm.settings``); this module adds
LangChain's spellings (``model_name``, ``max_completion_tokens``, ``stop_sequences``)
and LangChain-only fields (``stop``, ``streaming``, ``model_kwargs``).

Flow: ``_generate``/``_agenerate``/``_stream``/``_astream`` -> ``_request`` (messages ->
turns via ``_convert.map_messages``, fields + call kwargs -> ``RequestOptions`` via the
settings' ``request_options``) -> ``self.backend`` (a core backend: NIM or fal) ->
``Reply``/``Delta`` -> ``_convert.process_reply``/``process_delta``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput, ModelProfile
from langchain_core.language_models.chat_models import LangSmithParams
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import (
    JsonOutputKeyToolsParser,
    PydanticToolsParser,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import BaseModel, ConfigDict, Field

from langchain_nemovlm._convert import (
    map_messages,
    process_cut_arguments,
    process_delta,
    process_llm_output,
    process_reply,
    process_response_metadata,
)
from nemovlm.errors import UnsupportedInputError
from nemovlm.messages import Delta, Reply, ToolSpec, Turn
from nemovlm.options import RequestOptions
from nemovlm.settings import CommonSettings
from nemovlm.tokens import estimate_text_tokens, estimate_tokens
from nemovlm.tools import ToolCallAccumulator, normalize_tool_choice, tool_spec_from_openai

# LangChain's spellings of the core's settings, accepted as well as the core's names.
_ALIASES = {"model": "model_name", "max_tokens": "max_completion_tokens"}


def langchain_aliases(**more: str) -> Callable[[str], str]:
    """An ``alias_generator``: the core's field names, spelled LangChain's way."""
    names = {**_ALIASES, **more}
    return lambda name: names.get(name, name)


class BaseChatNemo(CommonSettings, BaseChatModel):
    """Shared base; use ``ChatNemoVLM`` (NIM) or ``ChatNemoFal`` (fal)."""

    model_config = ConfigDict(
        populate_by_name=True, arbitrary_types_allowed=True, alias_generator=langchain_aliases()
    )

    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    """Stop sequences for every call (a call's own ``stop`` wins)."""
    streaming: bool = False
    """``invoke`` streams under the hood (so callbacks see tokens)."""
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra wire parameters, sent as they are after the backend's checks. Unknown
    constructor arguments land here too, with a warning (as ``ChatOpenAI`` does)."""
    extra_body: dict[str, Any] | None = None
    """Fields merged into the request body, as the ``openai`` SDK merges ``extra_body``
    (they win over the others); a call's own ``extra_body`` is merged after it."""

    _extra_arguments_field = "model_kwargs"

    def _resolve_model_profile(self) -> ModelProfile | None:
        p = self.nemo_profile
        profile = ModelProfile(
            name=p.name or p.model,
            max_input_tokens=p.context_window,
            text_inputs=True,
            image_inputs=p.accepts_images,
            image_url_inputs=p.accepts_images,
            video_inputs=p.accepts_video,
            image_tool_message=p.accepts_images,
            pdf_inputs=False,
            audio_inputs=False,
            reasoning_output=p.can_reason,
            text_outputs=True,
            tool_calling=True,
            tool_choice=True,
            tool_call_streaming=p.tools == "native" and p.backend == "nim",
            structured_output=True,
        )
        if p.max_output_tokens:
            profile["max_output_tokens"] = p.max_output_tokens
        return profile

    # --- LangChain plumbing -----------------------------------------------------

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "temperature": self.temperature, "max_tokens": self.max_tokens}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="nvidia",
            ls_model_name=kwargs.get("model", self.model),
            ls_model_type="chat",
        )
        temperature = kwargs.get("temperature", self.temperature)
        if temperature is not None:
            params["ls_temperature"] = temperature
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if max_tokens is not None:
            params["ls_max_tokens"] = max_tokens
        stop = stop or kwargs.get("stop") or self.stop
        if stop:
            params["ls_stop"] = stop
        return params

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return True

    # --- request ----------------------------------------------------------------

    def _options(self, stop: list[str] | None, kwargs: dict[str, Any]) -> RequestOptions:
        model = kwargs.get("model")
        if model is not None and model != self.model:
            raise UnsupportedInputError(
                f"This instance serves {self.model}; create another for {model}."
            )
        overrides = dict(kwargs)
        if "tools" in overrides:
            overrides["tools"] = [_tool_spec(t) for t in overrides["tools"]]
        extra = dict(self.model_kwargs)
        if self.extra_body:
            extra["extra_body"] = {**(extra.get("extra_body") or {}), **self.extra_body}
        return self.request_options(overrides, extra=extra, stop=stop or self.stop)

    def _request(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[list[Turn], RequestOptions]:
        return map_messages(messages, self.media_policy()), self._options(stop, kwargs)

    # --- calls ------------------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            from langchain_core.language_models.chat_models import generate_from_stream

            return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))
        turns, options = self._request(messages, stop, kwargs)
        return self._chat_result(self.backend.complete(turns, options))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            from langchain_core.language_models.chat_models import agenerate_from_stream

            return await agenerate_from_stream(self._astream(messages, stop, run_manager, **kwargs))
        turns, options = self._request(messages, stop, kwargs)
        return self._chat_result(await self.backend.acomplete(turns, options))

    def _chat_result(self, reply: Reply) -> ChatResult:
        """One generation per choice (``n > 1``), each with the whole reply's usage, as
        ``ChatOpenAI`` fills them; ``llm_output`` as ``ChatOpenAI``'s."""
        generations = [
            ChatGeneration(message=process_reply(choice, self.model, usage=reply.usage))
            for choice in reply.all_choices
        ]
        return ChatResult(generations=generations, llm_output=process_llm_output(reply, self.model))

    def _combine_llm_outputs(self, llm_outputs: list[dict[str, Any] | None]) -> dict[str, Any]:
        # generate()/batch over several prompts: token counts add up (as ChatOpenAI's).
        combined: dict[str, Any] = {"token_usage": {}}
        for output in llm_outputs:
            if not output:
                continue
            for key, value in output.items():
                if key != "token_usage":
                    combined.setdefault(key, value)
            _add_counts(combined["token_usage"], output.get("token_usage") or {})
        return combined

    # --- token counting ----------------------------------------------------------

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """An **estimate** of the prompt tokens ``messages`` (and ``tools``) cost, made
        offline (``nemovlm.tokens.estimate_tokens``): text by a rule of thumb, images
        from the model's tiling, videos by sampled frames; nothing is downloaded. Not
        exact: the reply's ``usage_metadata`` is the true count. What
        ``trim_messages(token_counter=llm)`` calls."""
        specs = [_tool_spec(convert_to_openai_tool(t)) for t in tools or ()]
        turns = map_messages(messages, self.media_policy())
        return estimate_tokens(
            turns, self.nemo_profile, tools=specs, options=self.request_defaults()
        )

    def get_num_tokens(self, text: str) -> int:
        """An **estimate** of the tokens in ``text``, made offline (no tokenizer
        download)."""
        return estimate_text_tokens(text)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        turns, options = self._request(messages, stop, kwargs)
        tail = _StreamTail(self.model)
        for delta in self.backend.stream(turns, options):
            chunk = tail.chunk(delta)
            if chunk is None:
                continue
            if run_manager and delta.text:
                run_manager.on_llm_new_token(delta.text, chunk=chunk)
            yield chunk
        yield tail.last()

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        turns, options = self._request(messages, stop, kwargs)
        tail = _StreamTail(self.model)
        async for delta in self.backend.astream(turns, options):
            chunk = tail.chunk(delta)
            if chunk is None:
                continue
            if run_manager and delta.text:
                await run_manager.on_llm_new_token(delta.text, chunk=chunk)
            yield chunk
        yield tail.last()

    # --- tools and structured output -------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | bool | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools: native OpenAI tools where the model's NIM has them, else the core's
        prompt protocol. ``tool_choice``: ``"auto"``, ``"none"``, ``"required"``/``"any"``,
        ``True`` (the only tool), or a tool name."""
        formatted = [convert_to_openai_tool(t) for t in tools]
        if tool_choice is not None:
            kwargs["tool_choice"] = normalize_tool_choice(
                tool_choice, tuple(_tool_spec(t) for t in formatted)
            )
        return super().bind(tools=formatted, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        method: Literal["json_schema", "function_calling", "json_mode"] = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """Structured output. ``json_schema`` (default): ``response_format`` where the
        model honours it, else the core's prompt protocol; ``function_calling``: a forced
        tool call (native or prompted), ``strict`` on the tool; ``json_mode``: any JSON
        object (``response_format: {"type": "json_object"}`` where the model takes it,
        the prompt protocol elsewhere), the schema only parses the answer and may be
        left out."""
        if kwargs:
            raise UnsupportedInputError(
                f"with_structured_output does not take {sorted(kwargs)}; bind call "
                "arguments with .bind(...) first."
            )
        is_model = isinstance(schema, type) and is_basemodel_subclass(schema)  # v2 or v1
        parser: Runnable[Any, Any] = (
            PydanticOutputParser(pydantic_object=schema) if is_model else JsonOutputParser()  # type: ignore[arg-type]
        )
        llm: Runnable[LanguageModelInput, Any]
        if method == "json_mode":
            llm = self.bind(
                json_mode=True,
                ls_structured_output_format={"kwargs": {"method": method}, "schema": schema},
            )
            return _with_raw(llm, parser) if include_raw else llm | parser
        if schema is None:
            raise UnsupportedInputError(
                f"with_structured_output(method={method!r}) needs a schema; "
                "method='json_mode' takes none."
            )
        if method == "function_calling":
            # BaseChatModel's own drops ``strict``; the tool carries it here.
            bound = {} if strict is None else {"strict": strict}
            llm = self.bind_tools(
                [schema],
                tool_choice="any",
                ls_structured_output_format={
                    "kwargs": {"method": method, "strict": strict},
                    "schema": schema,
                },
                **bound,
            )
            tools_parser: Runnable[Any, Any] = (
                PydanticToolsParser(tools=[schema], first_tool_only=True)  # type: ignore[list-item]
                if is_model
                else JsonOutputKeyToolsParser(
                    key_name=convert_to_openai_tool(schema)["function"]["name"],
                    first_tool_only=True,
                )
            )
            return _with_raw(llm, tools_parser) if include_raw else llm | tools_parser
        tool = convert_to_openai_tool(schema)["function"]
        json_schema: dict[str, Any] = {"name": tool["name"], "schema": tool["parameters"]}
        if strict is not None:
            json_schema["strict"] = strict
        llm = self.bind(
            json_schema=json_schema,
            ls_structured_output_format={"kwargs": {"method": method}, "schema": tool},
        )
        return _with_raw(llm, parser) if include_raw else llm | parser


def _add_counts(total: dict[str, Any], more: dict[str, Any]) -> None:
    for key, value in more.items():
        if isinstance(value, dict):
            _add_counts(total.setdefault(key, {}), value)
        elif isinstance(value, int):
            total[key] = total.get(key, 0) + value


def _with_raw(
    llm: Runnable[LanguageModelInput, Any], parser: Runnable[Any, Any]
) -> Runnable[LanguageModelInput, dict[str, Any]]:
    """``{"raw", "parsed", "parsing_error"}``, as ``include_raw=True`` promises."""
    parsed = RunnablePassthrough.assign(
        parsed=lambda x: parser.invoke(x["raw"]), parsing_error=lambda _: None
    ).with_fallbacks(
        [RunnablePassthrough.assign(parsed=lambda _: None)],
        exception_key="parsing_error",
    )
    return RunnableMap(raw=llm) | parsed


class _StreamTail:
    """Remembers what belongs on the last chunk (finish reason, model, id, metadata)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.finish_reason: str | None = None
        self.response_id: str | None = None
        self.reply_model: str | None = None
        self.metadata: dict[str, Any] = {}
        self.calls = ToolCallAccumulator()

    def chunk(self, delta: Delta) -> ChatGenerationChunk | None:
        self.finish_reason = delta.finish_reason or self.finish_reason
        self.response_id = delta.response_id or self.response_id
        self.reply_model = delta.model or self.reply_model
        self.metadata.update(delta.metadata)
        for call in delta.tool_call_chunks:
            self.calls.add(call)
        if delta.is_empty():
            return None
        return ChatGenerationChunk(message=process_delta(delta))

    def last(self) -> ChatGenerationChunk:
        meta = process_response_metadata(
            self.reply_model or self.model, self.finish_reason, self.response_id, self.metadata
        )
        tails = process_cut_arguments({i: a for i, (_, _, a) in self.calls.joined().items()})
        return ChatGenerationChunk(message=process_delta(Delta(tool_call_chunks=tails), meta))


def _tool_spec(tool: Any) -> ToolSpec:
    """A bound tool (``convert_to_openai_tool``'s dict, or a ``ToolSpec``) for the core."""
    if isinstance(tool, ToolSpec):
        return tool
    spec = tool_spec_from_openai(tool) if isinstance(tool, dict) else None
    if spec is None:
        raise UnsupportedInputError(
            f"Cannot use {tool!r} as a tool: bind tools with bind_tools(), or pass OpenAI "
            "tool dicts {'type': 'function', 'function': {'name': ..., 'parameters': ...}}."
        )
    return spec
