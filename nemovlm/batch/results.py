"""The output file of a job: resume from it, append to it, sum it up.

``ResultFile.open`` reads what an earlier run left: ids with an answer are done; rows
that failed, and a line a crash cut short, are dropped (the file is rewritten without
them, atomically) so those inputs are tried again. Ids live in a temporary on-disk
SQLite table, not a Python set, so memory stays flat however many rows the file holds.
Each row is written and flushed as it completes: a crash loses only the calls in flight.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

Claim = Literal["new", "done", "duplicate"]


class ResultFile:
    """One job's JSONL output and the index of the ids it holds."""

    def __init__(self, path: str | Path, *, overwrite: bool = False, dry_run: bool = False):
        self.path = Path(path).expanduser()
        self.overwrite = overwrite
        self.dry_run = dry_run
        self.retried = 0
        """Failed or broken rows an earlier run left, dropped so they are tried again."""
        # "": a private temporary database on disk, removed on close (SQLite docs).
        self._ids = sqlite3.connect("", isolation_level=None)
        self._ids.execute("PRAGMA journal_mode=OFF")
        self._ids.execute("PRAGMA synchronous=OFF")
        self._ids.execute("CREATE TABLE ids (id TEXT PRIMARY KEY, earlier INTEGER)")
        # One transaction for the table's life: nothing needs to survive a crash, and a
        # commit per row would cost more than the lookup.
        self._ids.execute("BEGIN")
        self._file: IO[str] | None = None

    def open(self) -> ResultFile:
        if self.path.is_dir():
            raise IsADirectoryError(f"--out {self.path} is a directory: name a .jsonl file.")
        if self.path.exists() and not self.overwrite:
            self._resume()
        if not self.dry_run:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            mode = "w" if self.overwrite else "a"
            self._file = self.path.open(mode, encoding="utf-8")
        return self

    def _resume(self) -> None:
        self._ids.executemany("INSERT OR IGNORE INTO ids VALUES (?, 1)", self._answered_ids())
        if self.retried and not self.dry_run:
            self._rewrite_without_failures()

    def _answered_ids(self) -> Iterator[tuple[str]]:
        """The ids the file answers, streamed; counts the rows to try again."""
        with self.path.open(encoding="utf-8", errors="replace") as file:
            for line in file:
                row = _parse(line)
                if row is None or row.get("error") is not None or "id" not in row:
                    self.retried += 1
                else:
                    yield (_key(row["id"]),)

    def _rewrite_without_failures(self) -> None:
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", dir=self.path.parent)
        try:
            with (
                os.fdopen(fd, "w", encoding="utf-8") as out,
                self.path.open(encoding="utf-8", errors="replace") as file,
            ):
                for line in file:
                    row = _parse(line)
                    if row is not None and row.get("error") is None and "id" in row:
                        out.write(line if line.endswith("\n") else line + "\n")
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise

    def claim(self, row_id: str) -> Claim:
        """``new`` (send it), ``done`` (answered by an earlier run) or ``duplicate`` (an
        earlier row of this run has the same id)."""
        found = self._ids.execute("SELECT earlier FROM ids WHERE id = ?", (row_id,)).fetchone()
        if found is None:
            self._ids.execute("INSERT INTO ids VALUES (?, 0)", (row_id,))
            return "new"
        return "done" if found[0] else "duplicate"

    def write(self, row: dict[str, Any]) -> None:
        if self._file is None:
            return
        self._file.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._ids.close()


def _parse(line: str) -> dict[str, Any] | None:
    if not line.endswith("\n"):
        return None  # the last line of a run that was killed mid-write
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _key(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


@dataclass
class BatchSummary:
    """What a job did; ``str()`` is the summary ``nemovlm batch`` prints."""

    model: str
    out: Path
    done: int = 0
    """Rows answered by this run (with ``dry_run``: rows that would be sent)."""
    failed: int = 0
    """Rows written with an ``error`` (refused inputs included)."""
    skipped: int = 0
    """Inputs already answered in ``out`` by an earlier run."""
    duplicates: int = 0
    """Rows whose id an earlier row of this run already had."""
    retried: int = 0
    """Failed rows an earlier run left in ``out``, tried again by this run."""
    not_media: int = 0
    """Files under the given directories that are not images or videos."""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    """Estimated, from the model's published price; ``None`` where it has none."""
    seconds: float = 0.0
    dry_run: bool = False
    first_error: str | None = None
    errors_by_type: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.failed == 0

    @property
    def rows(self) -> int:
        return self.done + self.failed + self.skipped + self.duplicates

    def __str__(self) -> str:
        verb = "would send" if self.dry_run else "done"
        head = (
            f"{self.done} {verb}, {self.failed} failed, "
            f"{self.skipped} skipped (already in {self.out})"
        )
        lines = [f"nemovlm batch {self.model}: {head}, in {self.seconds:.1f} s"]
        if self.duplicates:
            lines.append(
                f"  {self.duplicates} rows repeated an earlier row's id and were not sent "
                "again: give each row its own id."
            )
        if self.retried:
            lines.append(f"  {self.retried} failed rows of an earlier run were tried again.")
        if self.not_media:
            lines.append(
                f"  {self.not_media} files in the given folders are not images or videos "
                "and were left out."
            )
        if not self.dry_run:
            cost = (
                f"estimated cost ${self.cost_usd:.4f}"
                if self.cost_usd is not None
                else "cost: no published price for this model"
            )
            lines.append(f"  tokens: {self.input_tokens:,} in / {self.output_tokens:,} out; {cost}")
        if self.failed:
            kinds = ", ".join(f"{n} {t}" for t, n in sorted(self.errors_by_type.items()))
            lines.append(f"  failures ({kinds}); first: {self.first_error}")
            if not self.dry_run:
                lines.append(
                    f"  Each failed row is in {self.out} with its 'error'; run the same "
                    "command again to retry them."
                )
        return "\n".join(lines)
