"""Per-epoch records of a run: metrics.jsonl and metrics.csv (appended and flushed each epoch,
so they survive a crash and continue on resume) and history.json (rewritten atomically)."""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Any

from nnspec._io import write_json


class EpochRecords:
    """Writes one row per epoch to the run directory."""

    def __init__(self, out_dir: str, history: list[dict[str, Any]] | None = None):
        self.out_dir = out_dir
        self.reset(history)

    def reset(self, history: list[dict[str, Any]] | None) -> None:
        """Start over from `history` (a resumed run: the rows of its checkpoint)."""
        self.history = list(history or [])
        self.jsonl = os.path.join(self.out_dir, "metrics.jsonl")
        self.csv = os.path.join(self.out_dir, "metrics.csv")
        # Rewrite both from the known history, so a resumed run drops rows of epochs that
        # were redone after the last checkpoint.
        with open(self.jsonl, "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in self.history)
        self._rewrite_csv()
        write_json(os.path.join(self.out_dir, "history.json"), self.history)

    def _columns(self) -> list[str]:
        cols: list[str] = []
        for row in self.history:
            cols += [k for k in row if k not in cols]
        return cols

    def _rewrite_csv(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self._columns())
        writer.writeheader()
        writer.writerows(self.history)
        with open(self.csv, "w", newline="") as fh:
            fh.write(buffer.getvalue() if self.history else "")

    def add(self, row: dict[str, Any]) -> None:
        known = self._columns()
        self.history.append(row)
        with open(self.jsonl, "a") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()
        if set(row) - set(known) or len(self.history) == 1:
            self._rewrite_csv()  # a new column (e.g. after unfreezing): rewrite with it
        else:
            with open(self.csv, "a", newline="") as fh:
                csv.DictWriter(fh, fieldnames=known).writerow(row)
        write_json(os.path.join(self.out_dir, "history.json"), self.history)
