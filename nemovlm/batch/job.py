"""Running a job: rows in, a bounded number of calls in flight, rows out.

``arun`` connects the backend once and checks the job's settings once (before any row
is read), opens the output (``ResultFile``: resume, or ``overwrite``), then streams
``iter_rows`` into a queue of at most ``concurrency`` rows that as many workers drain:
each worker calls ``calls.answer`` and writes the row as soon as it completes. Memory
holds the rows in flight, never the inputs. ``run`` does the same from code that is
not async (and from a notebook, whose event loop is already running).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, TextIO

from pydantic import SecretStr
from tqdm import tqdm

from nemovlm.backends import ChatBackend
from nemovlm.batch.calls import (
    Outcome,
    answer,
    connect,
    error_record,
    json_schema_option,
    request_options,
    user_turn,
)
from nemovlm.batch.inputs import InputStats, Row, count_rows, iter_rows
from nemovlm.batch.results import BatchSummary, ResultFile
from nemovlm.errors import UnsupportedInputError
from nemovlm.hosted import HostedMedia
from nemovlm.options import RequestOptions
from nemovlm.pipeline import aprepare
from nemovlm.profiles import ModelProfile, get_profile

DEFAULT_CONCURRENCY = 8
DEFAULT_PROGRESS_INTERVAL = 30.0


def run(
    model: str,
    prompt: str | None,
    inputs: Iterable[str | Path] | str | Path,
    out: str | Path,
    **settings: Any,
) -> BatchSummary:
    """Run a batch job to the end and return its summary (see ``arun`` for the settings).

    Example::

        from nemovlm.batch import run
        summary = run("nvidia/nemotron-nano-12b-v2-vl", "Caption this image.",
                      ["photos/"], "captions.jsonl", base_url="http://localhost:8000/v1")
        print(summary)          # done / failed / skipped, tokens, estimated cost
    """
    job = arun(model, prompt, inputs, out, **settings)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(job)
    # A notebook cell runs inside an event loop already: give the job a loop of its own.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, job).result()


async def arun(
    model: str,
    prompt: str | None,
    inputs: Iterable[str | Path] | str | Path,
    out: str | Path,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    max_retries: int | None = None,
    base_url: str | None = None,
    api_key: SecretStr | str | None = None,
    timeout: float | None = None,
    hosted: bool | None = None,
    hosted_media: HostedMedia | None = None,
    assets_url: str | None = None,
    json_schema: Mapping[str, Any] | str | Path | None = None,
    reasoning: bool | None = None,
    max_tokens: int | None = None,
    overwrite: bool = False,
    dry_run: bool = False,
    progress: bool | None = None,
    progress_interval: float = DEFAULT_PROGRESS_INTERVAL,
    progress_file: TextIO | None = None,
) -> BatchSummary:
    """Ask ``model`` about every input; one JSONL row per input in ``out``.

    ``prompt`` is asked of every row that has none of its own. ``inputs``: files,
    directories (walked, media by content), http(s) URLs, ``.jsonl`` / ``.csv``
    manifests (see ``nemovlm.batch.inputs``). Rows already answered in ``out`` are
    skipped (rows that failed are tried again); ``overwrite`` starts over. A row that
    fails is written with an ``error``; the job goes on. ``json_schema`` (a schema
    mapping or a file) asks for structured output and adds ``parsed`` to each row.
    ``reasoning`` switches the model's reasoning the model's own way; the trace lands
    in ``reasoning``. ``max_retries`` is the NIM client's retry count (fal retries on
    its own). ``hosted`` / ``hosted_media`` / ``assets_url``: NVIDIA's hosted catalog
    (``None``: decided from the base URL), whose large media go up as NVCF assets,
    each deleted after its call (``nemovlm.hosted``). ``dry_run`` reads and checks
    every row, refusing bad ones, without sending anything or writing ``out``.

    Progress goes to ``progress_file`` (default stderr): a bar on a terminal, else a
    plain line every ``progress_interval`` seconds (0: after every row) and at the end.
    ``progress=False`` turns it off.
    """
    if concurrency < 1:
        raise UnsupportedInputError(f"concurrency must be >= 1 (got {concurrency}).")
    if progress_interval < 0:
        raise UnsupportedInputError(f"progress_interval must be >= 0 (got {progress_interval}).")
    names = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not names:
        raise UnsupportedInputError("No inputs: name files, folders, URLs or a manifest.")
    profile = get_profile(model)
    options = request_options(
        profile,
        reasoning=reasoning,
        max_tokens=max_tokens,
        json_schema=json_schema_option(json_schema),
    )
    backend = None
    if not dry_run:
        backend = connect(
            model,
            base_url=base_url,
            api_key=api_key,
            max_retries=max_retries,
            timeout=timeout,
            hosted=hosted,
            hosted_media=hosted_media,
            assets_url=assets_url,
        )
    total = count_rows(names, prompt) if progress is not False else None
    results = ResultFile(out, overwrite=overwrite, dry_run=dry_run).open()
    summary = BatchSummary(model=model, out=results.path, dry_run=dry_run, retried=results.retried)
    stream = progress_file if progress_file is not None else sys.stderr
    meter = _Progress(total, stream, progress, progress_interval, summary)
    started = time.monotonic()
    stats = InputStats()
    job = _Job(profile, backend, options, results, summary, meter, stream, dry_run)
    try:
        await job.run(iter_rows(names, prompt, stats), concurrency)
    finally:
        summary.seconds = time.monotonic() - started
        summary.not_media = stats.not_media
        results.close()
        meter.close()
    return summary


class _Job:
    """The queue, the workers and what they share."""

    def __init__(
        self,
        profile: ModelProfile,
        backend: ChatBackend | None,
        options: RequestOptions,
        results: ResultFile,
        summary: BatchSummary,
        meter: _Progress,
        stream: TextIO,
        dry_run: bool,
    ) -> None:
        self.profile, self.backend, self.options = profile, backend, options
        self.results, self.summary, self.meter = results, summary, meter
        self.stream, self.dry_run = stream, dry_run

    async def run(self, rows: Iterable[Row], concurrency: int) -> None:
        queue: asyncio.Queue[Row | None] = asyncio.Queue(maxsize=concurrency)
        workers = [asyncio.create_task(self._worker(queue)) for _ in range(concurrency)]
        try:
            for row in rows:
                claim = self.results.claim(row.id)
                if claim == "new":
                    await queue.put(row)
                    continue
                if claim == "done":
                    self.summary.skipped += 1
                else:
                    self.summary.duplicates += 1
                self.meter.update()
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _worker(self, queue: asyncio.Queue[Row | None]) -> None:
        while (row := await queue.get()) is not None:
            outcome = await self._answer(row)
            if not self.dry_run:
                self.results.write(self._record(row, outcome))
            self._count(row, outcome)
            self.meter.update()

    async def _answer(self, row: Row) -> Outcome:
        if row.problem is not None:
            return Outcome(error=error_record(UnsupportedInputError(row.problem)))
        if self.backend is not None:
            return await answer(self.backend, row.source, row.prompt, self.options, kind=row.kind)
        try:  # dry run: every check a real call makes before sending, and no request
            turn = await user_turn(row.source, row.prompt, self.profile, row.kind)
            await aprepare([turn], self.options, self.profile)
        except Exception as exc:
            return Outcome(error=error_record(exc))
        return Outcome()

    def _record(self, row: Row, outcome: Outcome) -> dict[str, Any]:
        record: dict[str, Any] = {
            "id": row.id,
            "input": row.input,
            "prompt": row.prompt,
            "model": self.profile.model,
            "answer": outcome.answer,
            "reasoning": outcome.reasoning,
        }
        if self.options.json_schema is not None:
            record["parsed"] = outcome.parsed
        record.update(
            input_tokens=outcome.input_tokens,
            output_tokens=outcome.output_tokens,
            cost_usd=outcome.cost_usd,
            response_id=outcome.response_id,
            seconds=round(outcome.seconds, 3),
            finished_at=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        )
        if row.meta:
            record["meta"] = row.meta
        record["error"] = outcome.error
        return record

    def _count(self, row: Row, outcome: Outcome) -> None:
        summary = self.summary
        summary.input_tokens += outcome.input_tokens or 0
        summary.output_tokens += outcome.output_tokens or 0
        if outcome.cost_usd is not None:
            summary.cost_usd = (summary.cost_usd or 0.0) + outcome.cost_usd
        if outcome.error is None:
            summary.done += 1
            return
        summary.failed += 1
        kind = str(outcome.error["type"])
        summary.errors_by_type[kind] = summary.errors_by_type.get(kind, 0) + 1
        message = f"{row.id}: {outcome.error['message']}"
        if summary.first_error is None:
            summary.first_error = message
        if self.dry_run:
            self.meter.write(f"refused {message}")


class _Progress:
    """A tqdm bar on a terminal; plain periodic lines elsewhere (logs get no ``\\r``)."""

    def __init__(
        self,
        total: int | None,
        stream: TextIO,
        enabled: bool | None,
        interval: float,
        summary: BatchSummary,
    ) -> None:
        self.total, self.stream, self.interval, self.summary = total, stream, interval, summary
        self.mode: Literal["bar", "lines", "off"] = "off"
        if enabled is not False:
            self.mode = "bar" if _isatty(stream) else "lines"
        self.n = 0
        self.started = self.last = time.monotonic()
        self.bar: tqdm[Any] | None = None
        if self.mode == "bar":
            self.bar = tqdm(
                total=total, unit="row", desc="nemovlm batch", file=stream, dynamic_ncols=True
            )

    def update(self) -> None:
        self.n += 1
        if self.bar is not None:
            if self.summary.failed:
                self.bar.set_postfix_str(f"failed {self.summary.failed}", refresh=False)
            self.bar.update()
        elif self.mode == "lines":
            now = time.monotonic()
            if now - self.last >= self.interval:
                self.last = now
                self._line(now)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        elif self.mode == "lines":
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.mode == "lines" and self.interval > 0:
            self._line(time.monotonic())

    def _line(self, now: float) -> None:
        s = self.summary
        counts = f"done {s.done}, failed {s.failed}, skipped {s.skipped + s.duplicates}"
        meter = tqdm.format_meter(
            self.n, self.total, now - self.started, ncols=0, unit="row", postfix=counts
        )
        print(f"nemovlm batch: {meter.strip()}", file=self.stream, flush=True)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
