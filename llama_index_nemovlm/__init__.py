"""LlamaIndex LLMs for NVIDIA vision-language models (NIM and fal).

``NemoVLM`` / ``NemoFal`` are ``FunctionCallingLLM``s; ``NemoVLMMultiModal`` /
``NemoFalMultiModal`` are ``MultiModalLLM``s for image RAG query engines. LlamaIndex
users may import them from ``llama_index.llms.nemovlm`` too. The fal classes need the
``fal`` extra (``fal-client``); they are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llama_index_nemovlm._base import InputRefusedError
from llama_index_nemovlm.nim import NemoVLM, NemoVLMMultiModal

if TYPE_CHECKING:
    from llama_index_nemovlm.fal import NemoFal, NemoFalMultiModal

__all__ = ["InputRefusedError", "NemoFal", "NemoFalMultiModal", "NemoVLM", "NemoVLMMultiModal"]


def __getattr__(name: str) -> Any:
    if name in ("NemoFal", "NemoFalMultiModal"):
        try:
            from llama_index_nemovlm import fal
        except ModuleNotFoundError as exc:
            if exc.name != "fal_client":
                raise
            raise ImportError(f"{name} needs fal-client: pip install 'nemovlm[fal]'.") from exc
        return getattr(fal, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
