"""The import path LlamaIndex users expect: ``from llama_index.llms.nemovlm import NemoVLM``.

``llama_index`` and ``llama_index.llms`` are namespace packages (no ``__init__.py``
of ours above this one); the classes live in ``llama_index_nemovlm``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llama_index_nemovlm import InputRefusedError, NemoVLM, NemoVLMMultiModal

if TYPE_CHECKING:
    from llama_index_nemovlm import NemoFal, NemoFalMultiModal

__all__ = ["InputRefusedError", "NemoFal", "NemoFalMultiModal", "NemoVLM", "NemoVLMMultiModal"]


def __getattr__(name: str) -> Any:
    if name in ("NemoFal", "NemoFalMultiModal"):
        import llama_index_nemovlm

        return getattr(llama_index_nemovlm, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
