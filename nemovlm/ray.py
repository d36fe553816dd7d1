"""The batch job on Ray Data: ``NemoVLMPredictor`` for ``Dataset.map_batches``.

::

    import ray
    from nemovlm.ray import NemoVLMPredictor

    ds = ray.data.read_images("s3://bucket/photos/")        # or from_items([...])
    captions = ds.map_batches(
        NemoVLMPredictor,
        fn_constructor_kwargs={"model": "nvidia/nemotron-nano-12b-v2-vl",
                               "prompt": "Caption this image.",
                               "base_url": "http://nim:8000/v1"},
        compute=ray.data.ActorPoolStrategy(size=4),   # actors
        num_cpus=0.25,        # they wait on the network; leave CPUs for reading
        batch_size=16,
    )
    captions.write_parquet("captions/")

Columns in: ``image`` (a path, URL, bytes, or the array ``read_images`` gives), an
optional ``prompt`` (else the predictor's), and anything else (``id``...), which is
passed through. Columns out: ``answer``, ``reasoning``, ``input_tokens``,
``output_tokens`` and ``error`` (``None``, or the failure in one line: a failed row
does not fail the batch).

Each actor builds one predictor, hence one backend and one event loop, hence one
HTTP client and connection pool; inside a batch up to ``concurrency`` calls run at
once on the async client. The calls go through ``nemovlm.batch.calls.answer``, the
same core path as ``nemovlm batch`` (same checks, same refusals). On a cluster, run the
same code after ``ray.init(address=...)``; see ``docs/batch.md``.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import SecretStr

from nemovlm.batch.calls import (
    Outcome,
    answer,
    connect,
    error_record,
    json_schema_option,
    request_options,
)
from nemovlm.errors import UnsupportedInputError
from nemovlm.hosted import HostedMedia

OUTPUT_COLUMNS = ("answer", "reasoning", "input_tokens", "output_tokens", "error")


class NemoVLMPredictor:
    """A callable class for ``Dataset.map_batches``: one model call per row."""

    def __init__(
        self,
        model: str,
        prompt: str | None = None,
        *,
        base_url: str | None = None,
        api_key: SecretStr | str | None = None,
        concurrency: int = 8,
        max_retries: int | None = None,
        timeout: float | None = None,
        hosted: bool | None = None,
        hosted_media: HostedMedia | None = None,
        assets_url: str | None = None,
        reasoning: bool | None = None,
        max_tokens: int | None = None,
        json_schema: Mapping[str, Any] | str | None = None,
        input_column: str = "image",
    ) -> None:
        if concurrency < 1:
            raise UnsupportedInputError(f"concurrency must be >= 1 (got {concurrency}).")
        self.backend = connect(
            model,
            base_url=base_url,
            api_key=api_key,
            max_retries=max_retries,
            timeout=timeout,
            hosted=hosted,
            hosted_media=hosted_media,
            assets_url=assets_url,
        )
        self.options = request_options(
            self.backend.profile,
            reasoning=reasoning,
            max_tokens=max_tokens,
            json_schema=json_schema_option(json_schema),
        )
        self.prompt = prompt
        self.concurrency = concurrency
        self.input_column = input_column
        # One loop for the actor's life: the backend keeps one async client per loop.
        self._loop = asyncio.new_event_loop()

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        import numpy as np

        if self.input_column not in batch:
            raise KeyError(
                f"NemoVLMPredictor reads the column {self.input_column!r}, which this dataset "
                f"lacks (columns: {sorted(batch)}); rename it or pass input_column=..."
            )
        inputs = list(batch[self.input_column])
        prompts = _prompts(batch.get("prompt"), self.prompt, len(inputs))
        outcomes = self._loop.run_until_complete(self._answer_all(inputs, prompts))
        out = dict(batch)
        columns: dict[str, list[Any]] = {
            "answer": [o.answer for o in outcomes],
            "reasoning": [o.reasoning for o in outcomes],
            "input_tokens": [o.input_tokens for o in outcomes],
            "output_tokens": [o.output_tokens for o in outcomes],
            "error": [_error_text(o) for o in outcomes],
        }
        for name, values in columns.items():
            out[name] = np.array(values, dtype=object)
        return out

    async def _answer_all(
        self, inputs: Sequence[Any], prompts: Sequence[str | None]
    ) -> list[Outcome]:
        gate = asyncio.Semaphore(self.concurrency)

        async def one(value: Any, prompt: str | None) -> Outcome:
            async with gate:
                try:
                    source = _input_value(value)
                except Exception as exc:  # this row only
                    return Outcome(error=error_record(exc))
                return await answer(self.backend, source, prompt, self.options)

        return await asyncio.gather(*(one(v, p) for v, p in zip(inputs, prompts)))

    def __del__(self) -> None:
        loop = getattr(self, "_loop", None)
        if loop is not None and not loop.is_closed() and not loop.is_running():
            # As asyncio.run ends a loop: the backend's per-loop clients (their aiohttp
            # sessions) close on shutdown_asyncgens.
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


def _prompts(column: Any, default: str | None, n: int) -> list[str | None]:
    if column is None:
        return [default] * n
    return [str(p) if p is not None and str(p) else default for p in column]


def _input_value(value: Any) -> str | bytes:
    """A row's ``image`` as ``nemovlm.batch.calls.media_part`` takes it: a path or URL
    string, bytes, or an image array (``read_images``) encoded as PNG."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value
    if hasattr(value, "__array_interface__"):
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(value).save(buffer, format="PNG")
        return buffer.getvalue()
    raise UnsupportedInputError(
        f"An 'image' value must be a path, URL, bytes or an image array, not "
        f"{type(value).__name__}."
    )


def _error_text(outcome: Outcome) -> str | None:
    if outcome.error is None:
        return None
    return f"{outcome.error['type']}: {outcome.error['message']}"
