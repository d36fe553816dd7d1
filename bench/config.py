"""Settings shared by every scenario of one bench run."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Config:
    canned_url: str
    """Root URL of the canned server (``bench.canned``), without ``/v1``."""
    rounds: int = 3
    """Rounds of interleaved calls; each scenario scales its own work by this."""
    quick: bool = False
    """The smallest run that still produces every table (the smoke test's)."""

    frameworks: tuple[str, ...] = ("langchain", "llama_index")
    """Which adapters' clients this process measures (the LlamaIndex peers may live in
    a venv of their own: ``bench.run --llama-index-python``)."""

    def wants(self, framework: str) -> bool:
        return framework in self.frameworks

    def scaled(self, full: int, quick: int) -> int:
        return quick if self.quick else full
