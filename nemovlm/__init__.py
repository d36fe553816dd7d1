"""nemovlm: the framework-neutral core behind ``langchain_nemovlm`` and ``llama_index_nemovlm``.

It knows each NVIDIA vision-language model's wire contract (``profiles``), holds the
neutral conversation (``messages``), prepares media (``media``), switches and splits
reasoning (``reasoning``), maps tools natively or through a prompt protocol
(``tools``), and talks to NIM (``backends.nim``) and fal (``backends.fal``).
"""

from __future__ import annotations

from nemovlm.errors import (
    IncompleteResponseError,
    MissingCredentialsError,
    NemoVLMError,
    RateLimitError,
    RequestError,
    RequestTimeoutError,
    UnsupportedInputError,
)
from nemovlm.profiles import PROFILES, ModelProfile, get_profile

__version__ = "0.1.0"

__all__ = [
    "PROFILES",
    "IncompleteResponseError",
    "MissingCredentialsError",
    "ModelProfile",
    "NemoVLMError",
    "RateLimitError",
    "RequestError",
    "RequestTimeoutError",
    "UnsupportedInputError",
    "get_profile",
]
