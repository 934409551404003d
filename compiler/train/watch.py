"""Watching a metric across epochs: early stopping and reduce-on-plateau both ask whether the
monitored value improved, and for how many epochs it has not."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def monitor_mode(monitor: str, mode: str) -> str:
    """'min' for losses and errors, 'max' for scores, unless the spec says."""
    if mode != "auto":
        return mode
    return "min" if any(w in monitor for w in ("loss", "mae", "rmse")) else "max"


@dataclass
class Watch:
    """Tracks the best value of a monitored metric and the epochs since it improved."""

    mode: str
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int = 0
    wait: int = 0

    def update(self, value: float, epoch: int) -> bool:
        better = self.best is None or (value < self.best - self.min_delta if self.mode == "min"
                                       else value > self.best + self.min_delta)
        if better:
            self.best, self.best_epoch, self.wait = value, epoch, 0
        else:
            self.wait += 1
        return better

    def record(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}
