"""Callbacks: what a training run tells the code that started it, and how that code stops it.

A callback is any object with some of these methods (subclass `Callback` and override what you
need); the `nnspec` command's own progress display is one:

- `on_train_begin(info)`: the spec's name, epochs, steps per epoch and sample counts;
- `on_log(message)`: a line of the run's log (data found, epochs, early stopping...);
- `on_step(progress)`: after each chunk of steps (about twice a second): `epoch`, `epochs`,
  `step`, `steps`, `samples_per_second` and `metrics`, the epoch's running loss and metrics;
- `on_epoch_end(epoch, metrics)`: the epoch's record as in `history.json`; return True to stop
  training after this epoch (the run then finishes as after early stopping: exported, checked);
- `on_train_end(run)`: the finished `Run`, or None when training failed.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any


class Callback:
    """A callback that does nothing; subclass it and override what you need."""

    def on_train_begin(self, info: dict[str, Any]) -> None:
        return None

    def on_log(self, message: str) -> None:
        return None

    def on_step(self, progress: dict[str, Any]) -> None:
        return None

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> bool | None:
        return None

    def on_train_end(self, run: Any) -> None:
        return None


class Callbacks:
    """Several callbacks called as one, in order; an object may define any subset of the
    methods (duck typing), so a plain class without the base works too."""

    def __init__(self, callbacks: Iterable[Any]):
        self.callbacks = list(callbacks)

    def _each(self, method: str, *args: Any) -> list[Any]:
        return [getattr(cb, method)(*args) for cb in self.callbacks if hasattr(cb, method)]

    def on_train_begin(self, info: dict[str, Any]) -> None:
        self._each("on_train_begin", info)

    def on_log(self, message: str) -> None:
        self._each("on_log", message)

    def on_step(self, progress: dict[str, Any]) -> None:
        self._each("on_step", progress)

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> bool:
        return any(bool(r) for r in self._each("on_epoch_end", epoch, dict(metrics)))

    def on_train_end(self, run: Any) -> None:
        self._each("on_train_end", run)

    @property
    def wants_steps(self) -> bool:
        return any(hasattr(cb, "on_step") and type(cb).on_step is not Callback.on_step
                   for cb in self.callbacks)


class EpochLines(Callback):
    """The log as plain lines on a stream (stderr by default): one line per epoch, for logs and
    CI where a progress bar would only print carriage returns."""

    def __init__(self, stream: Any = None):
        self.stream = stream

    def on_log(self, message: str) -> None:
        print(message, file=self.stream or sys.stderr, flush=True)


class ProgressBar(Callback):
    """A progress bar over epochs with the running metrics beside it (rich): a live bar on a
    terminal, a live widget in a Jupyter notebook (rich renders there itself)."""

    def __init__(self, console: Any = None):
        self.console = console
        self.progress: Any = None
        self.task: Any = None

    def on_train_begin(self, info: dict[str, Any]) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(TextColumn("epoch"), MofNCompleteColumn(), BarColumn(),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                 TextColumn("{task.description}"),
                                 console=self.console or Console(stderr=True))
        self.task = self.progress.add_task("", total=info.get("epochs") or 1)
        self.progress.start()

    def on_step(self, progress: dict[str, Any]) -> None:
        if self.progress is None:
            return
        running = "  ".join(f"{k} {v:.4f}" for k, v in progress["metrics"].items())
        self.progress.update(self.task, completed=progress["epoch"] - 1, description=(
            f"step {progress['step']}/{progress['steps']}  {running}  "
            f"{progress['samples_per_second']:,.0f} samples/s"))

    def on_log(self, message: str) -> None:
        words = message.split(None, 2)
        if self.progress is None:
            return
        if len(words) > 1 and words[0] == "epoch" and "/" in words[1]:
            done = int(words[1].split("/")[0])
            self.progress.update(self.task, completed=done,
                                 description=words[2] if len(words) > 2 else "")
        else:
            self.progress.console.print(message)

    def on_train_end(self, run: Any) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
