"""Batch jobs: one question about thousands of images or videos, resumable, with
progress and cost. ``nemovlm batch`` on the command line; ``run`` / ``arun`` from code.

Flow: ``job.arun`` -> ``inputs.iter_rows`` (files, folders, URLs, manifests; streamed)
-> ``results.ResultFile.claim`` (resume and exactly-once, keyed by row id) -> a queue
of at most ``concurrency`` rows -> ``calls.answer`` (``calls.user_turn`` ->
``ChatBackend.acomplete`` on the core's NIM or fal backend -> ``calls.process_reply``)
-> ``ResultFile.write`` (one flushed JSONL row) -> ``BatchSummary``.

``calls`` is also what ``nemovlm ask`` and ``nemovlm.ray.NemoVLMPredictor`` use.
"""

from __future__ import annotations

from nemovlm.batch.calls import Outcome, answer, connect, load_json_schema, media_part
from nemovlm.batch.inputs import BatchInputWarning, Row, iter_rows
from nemovlm.batch.job import arun, run
from nemovlm.batch.results import BatchSummary, ResultFile

__all__ = [
    "BatchInputWarning",
    "BatchSummary",
    "Outcome",
    "ResultFile",
    "Row",
    "answer",
    "arun",
    "connect",
    "iter_rows",
    "load_json_schema",
    "media_part",
    "run",
]
