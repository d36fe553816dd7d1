"""A job's inputs, streamed one ``Row`` at a time: nothing is loaded whole.

``iter_rows`` expands what the user named, in order:

- an http(s) or ``data:`` URL: one row;
- a directory: every file below it (walked recursively, in name order) that is an
  image or a video *by content* (magic bytes, never the extension); other files are
  counted as left out;
- a ``.jsonl`` or ``.csv`` manifest: one row per line / record, with an ``input`` (or
  ``image`` / ``video``, which also says the kind) and optionally its own ``prompt``
  and ``id``; relative paths are relative to the manifest; other columns are carried
  to the output row under ``meta`` (with a warning naming them);
- any other path: one row (a file that is not media is refused on its row).

A row's id is its ``id`` column, else the input as written; the id is what resume and
the exactly-once rule key on. A malformed manifest line becomes a row with
``problem`` set, so it is reported in the output rather than lost.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nemovlm.batch.calls import is_url
from nemovlm.media import IMAGE_FORMATS, VIDEO_FORMATS, sniff_format
from nemovlm.messages import MediaKind

MANIFEST_SUFFIXES = (".jsonl", ".csv")
INPUT_COLUMNS: tuple[str, ...] = ("input", "image", "video")
KNOWN_COLUMNS = frozenset({*INPUT_COLUMNS, "prompt", "id"})
_SNIFF_BYTES = 4096  # enough for every signature sniff_format reads


class BatchInputWarning(UserWarning):
    """A manifest carries columns the job does not use (they are kept under ``meta``)."""


@dataclass(frozen=True)
class Row:
    id: str
    input: str
    """The input as written (a path or URL)."""
    prompt: str | None
    """The row's own prompt, else the job's; ``None`` when neither gave one."""
    source: str | Path = ""
    """What to read: the URL, or the path resolved against the manifest's folder."""
    kind: MediaKind | None = None
    """Image or video as the manifest's column said; ``None``: found from the content."""
    meta: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None
    """Why this row cannot be sent at all (a malformed manifest line)."""


@dataclass
class InputStats:
    """What reading the inputs found besides rows."""

    not_media: int = 0
    """Files under a directory that are neither images nor videos (left out)."""


def iter_rows(
    inputs: Iterable[str | Path], prompt: str | None, stats: InputStats | None = None
) -> Iterator[Row]:
    """Every row of ``inputs``, streamed."""
    stats = stats if stats is not None else InputStats()
    for item in inputs:
        text = str(item)
        if is_url(text):
            yield Row(id=text, input=text, prompt=prompt, source=text)
            continue
        path = Path(text).expanduser()
        if path.is_dir():
            yield from _walk(path, prompt, stats)
        elif path.suffix.lower() in MANIFEST_SUFFIXES and path.is_file():
            yield from _manifest(path, prompt)
        else:
            yield Row(id=text, input=text, prompt=prompt, source=path)


def count_rows(inputs: Iterable[str | Path], prompt: str | None) -> int:
    """How many rows ``iter_rows`` will yield (one more streaming pass, for the
    progress bar's total)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BatchInputWarning)  # warned once, by the job
        return sum(1 for _ in iter_rows(inputs, prompt))


def is_media_file(path: Path) -> bool:
    try:
        with path.open("rb") as file:
            head = file.read(_SNIFF_BYTES)
    except OSError:
        return False
    return sniff_format(head) in IMAGE_FORMATS | VIDEO_FORMATS


def _walk(root: Path, prompt: str | None, stats: InputStats) -> Iterator[Row]:
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder, name)
            if is_media_file(path):
                yield Row(id=str(path), input=str(path), prompt=prompt, source=path)
            else:
                stats.not_media += 1


def _manifest(path: Path, prompt: str | None) -> Iterator[Row]:
    records = _jsonl_records(path) if path.suffix.lower() == ".jsonl" else _csv_records(path)
    folder = str(path.parent)
    warned = False
    for where, record in records:
        if isinstance(record, str):  # a line that did not parse
            yield Row(id=where, input=where, prompt=prompt, problem=record)
            continue
        extra = {k: v for k, v in record.items() if k not in KNOWN_COLUMNS}
        if extra and not warned:
            warnings.warn(
                f"{path}: columns {sorted(extra)} are not used by the job; they are copied "
                "to each output row under 'meta'.",
                BatchInputWarning,
                stacklevel=2,
            )
            warned = True
        yield _manifest_row(folder, where, record, extra, prompt)


def _manifest_row(
    folder: str, where: str, record: Mapping[str, Any], extra: dict[str, Any], prompt: str | None
) -> Row:
    given = [c for c in INPUT_COLUMNS if record.get(c) not in (None, "")]
    own_prompt = record.get("prompt")
    row_prompt = own_prompt if isinstance(own_prompt, str) and own_prompt else prompt
    raw_id = record.get("id")
    named = str(raw_id) if raw_id not in (None, "") else None
    if len(given) != 1:
        problem = (
            f"{where}: a row needs exactly one of the columns {', '.join(INPUT_COLUMNS)} "
            f"(got {', '.join(given) or 'none'})."
        )
        return Row(id=named or where, input="", prompt=row_prompt, problem=problem)
    if own_prompt is not None and not isinstance(own_prompt, str):
        problem = f"{where}: 'prompt' must be a string (got {own_prompt!r})."
        return Row(id=named or where, input="", prompt=row_prompt, problem=problem)
    column = given[0]
    value = record[column]
    if not isinstance(value, str):
        problem = f"{where}: '{column}' must be a path or URL string (got {value!r})."
        return Row(id=named or where, input=str(value), prompt=row_prompt, problem=problem)
    kind: MediaKind | None = (
        "image" if column == "image" else "video" if column == "video" else None
    )
    # Plain string joins: a Path per row costs more than the rest of reading it.
    source = value if is_url(value) else os.path.join(folder, os.path.expanduser(value))
    return Row(named or value, value, row_prompt, source, kind, extra)


def _jsonl_records(path: Path) -> Iterator[tuple[str, dict[str, Any] | str]]:
    with path.open(encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            where = f"{path.name}:{number}"
            try:
                value = json.loads(line)
            except ValueError as exc:
                yield where, f"not a JSON line ({exc})."
                continue
            if not isinstance(value, dict):
                yield where, "each line must be a JSON object with an 'input'."
                continue
            yield where, value


def _csv_records(path: Path) -> Iterator[tuple[str, dict[str, Any] | str]]:
    with path.open(encoding="utf-8", newline="") as file:
        reader = csv.DictReader(file)
        for record in reader:
            where = f"{path.name}:{reader.line_num}"
            if None in record:  # more cells than header names
                yield where, "more cells than the header has columns."
                continue
            yield where, {k: v for k, v in record.items() if v not in (None, "")}
