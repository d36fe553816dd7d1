"""LangChain's unit conformance suite for ChatNemoFal (no network: construction,
tool binding, structured output, tracing parameters, serialisation)."""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_tests.unit_tests import ChatModelUnitTests
from lc_standard import SerdesByAllowList

from langchain_nemovlm import ChatNemoFal

OMNI = "nvidia/nemotron-3-nano-omni/video"


class TestChatNemoFalUnit(SerdesByAllowList, ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return ChatNemoFal

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": OMNI, "api_key": "test-key"}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        return ({"FAL_KEY": "env-key"}, {"model": OMNI}, {"api_key": "env-key"})

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def supports_video_inputs(self) -> bool:
        return True
