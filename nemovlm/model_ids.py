"""Model ids that are almost, but not quite, a known one.

Any id works (a new NIM needs no release: it gets the generic profile), so an unknown
id is never an error. But ``nvidia/nemotron-nano-12b-vl`` is almost surely a typo of
``nvidia/nemotron-nano-12b-v2-vl``, and served with the generic profile it would lose
every quirk the real model needs: ``warn_if_near_miss`` says so, once per id.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Iterable

NEAR_MISS_CUTOFF = 0.92
"""Similarity (``difflib`` ratio, case-insensitive) from which an unknown id counts as a
near miss. Chosen so that typos and case slips of the five known ids warn while
other models' ids (``nvidia/nemotron-nano-9b-v2``: 0.89) do not."""

_warned: set[str] = set()


def closest_known_id(model: str, known: Iterable[str]) -> str | None:
    """The known id ``model`` most resembles, if it is a near miss of one."""
    lowered = {k.lower(): k for k in known}
    if model in lowered.values():
        return None
    match = difflib.get_close_matches(model.lower(), lowered, n=1, cutoff=NEAR_MISS_CUTOFF)
    return lowered[match[0]] if match else None


def warn_if_near_miss(model: str, known: Iterable[str]) -> None:
    """Warn (once per id, per process) when ``model`` is not known but nearly is."""
    if model in _warned:
        return
    closest = closest_known_id(model, known)
    if closest is None:
        return
    _warned.add(model)
    warnings.warn(
        f"Model id {model!r} is not one nemovlm knows; did you mean {closest!r}? It is "
        "used as a generic OpenAI-compatible model, without that model's wire rules. "
        "If it is a new model, ignore this warning.",
        UserWarning,
        stacklevel=3,
    )
