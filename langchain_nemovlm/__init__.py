"""LangChain chat models for NVIDIA vision-language models (NIM and fal).

``ChatNemoFal`` needs the ``fal`` extra (``fal-client``); it is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from langchain_nemovlm._convert import media_block
from langchain_nemovlm.chat_models import ChatNemoVLM

if TYPE_CHECKING:
    from langchain_nemovlm.fal import ChatNemoFal

__all__ = ["ChatNemoFal", "ChatNemoVLM", "media_block"]


def __getattr__(name: str) -> Any:
    if name == "ChatNemoFal":
        from langchain_nemovlm.fal import ChatNemoFal

        return ChatNemoFal
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
