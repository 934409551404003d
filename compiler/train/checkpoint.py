"""Training checkpoints with Orbax: atomic, waited for, checked, resumable bit for bit.

A checkpoint holds the whole training state (parameters, other variable collections, optimizer
state, learning-rate scale, early-stopping state and best weights) plus a JSON record of where
training stands (epoch, batch within the epoch, step, history). The data order needs no state:
each epoch's permutation is derived from the seed and the epoch number. The record's `loader`
names the streamed route's position (epoch, step, seed, and the Grain loader's chunk size and
workers): a Grain element is a pure function of its position, so resuming there is exact.

The record also holds a SHA-256 of the state's arrays, checked on restore: a checkpoint whose
files changed after they were written (a bad disk, a partial copy) is refused with a message
and the one before it is used; and a SHA-256 of the training data, so that `--resume` on data
that changed since is refused rather than silently mixing two datasets.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from nnspec.spec.errors import DataError

HASH_BLOCK_BYTES = 64 << 20
REFUSED = "refused"
"""The subfolder refused checkpoints are moved to."""


class OutputError(RuntimeError):
    """The run directory could not be written (full disk, read-only or missing folder)."""


class CheckpointError(DataError):
    """No checkpoint to resume from is usable (each was unreadable or failed its checksum)."""


def state_sha256(tree: Any) -> str:
    """SHA-256 over every array of `tree` (dtype, shape and bytes, in tree order)."""
    import jax

    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        a = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def data_sha256(splits: dict[str, Any]) -> str:
    """SHA-256 over the arrays of every split (`Dataset.splits()`), by split and name."""
    digest = hashlib.sha256()
    for split_name, split in sorted(splits.items()):
        for kind, arrays in (("x", split.x), ("y", split.y)):
            for name, value in sorted(arrays.items()):
                head = np.asarray(value[:1])
                shape = (len(value), *head.shape[1:])
                digest.update(f"{split_name}/{kind}/{name}:{head.dtype.str}{shape}".encode())
                # A Parquet file's input, lazy or in memory: file, encoding, rows.
                printed = (split.fingerprints.get(name) if kind == "x" else None) or (
                    value.fingerprint() if hasattr(value, "fingerprint") else None)
                if printed is not None:
                    digest.update(printed)
                    continue
                # In blocks of rows: a memory-mapped or lazy set larger than memory is
                # hashed without being read whole (the digest is the same as in one piece).
                step = max(1, HASH_BLOCK_BYTES // max(head.nbytes, 1))
                for lo in range(0, len(value), step):
                    digest.update(np.ascontiguousarray(value[lo:lo + step]).tobytes())
    return digest.hexdigest()


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


class Checkpoints:
    """An Orbax checkpoint manager over `folder`, keyed by the global step."""

    def __init__(self, folder: str, keep: int, log: Callable[[str], None] = _warn):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.folder = os.path.abspath(folder)
        self.log = log
        _hush_orbax_errors()
        try:
            self.manager = ocp.CheckpointManager(
                self.folder, options=ocp.CheckpointManagerOptions(
                    max_to_keep=keep, create=True, enable_async_checkpointing=False))
        except OSError as err:
            raise OutputError(f"cannot create the checkpoint folder {self.folder}: "
                              f"{err.strerror or err}") from None

    def save(self, step: int, state: Any, record: dict[str, Any]) -> None:
        """Save synchronously (Orbax writes a temporary folder, then renames it), with the
        state's checksum in the record. A failed write (full disk, read-only folder) raises
        OutputError; the checkpoints saved before it stay as they were."""
        ocp = self._ocp
        state = _numpy(state)
        record = {**record, "state_sha256": state_sha256(state)}
        try:
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)),
                force=True)
            self.manager.wait_until_finished()
        except Exception as err:  # noqa: BLE001 - Orbax and TensorStore wrap OSError
            _quiet_after_failure()
            previous = [s for s in self.manager.all_steps() if s != step]
            kept = (f"the checkpoint of step {max(previous)} is kept" if previous else
                    "no earlier checkpoint exists")
            raise OutputError(f"cannot write the checkpoint of step {step} in {self.folder}: "
                              f"{_reason(err)}; {kept}") from None

    def latest(self, template: Any) -> tuple[Any, dict[str, Any]] | None:
        """The newest checkpoint that reads back whole and matches its checksum, restored
        into `template`'s structure; None when there is none. Each newer one refused is
        reported through `log`; when every one is refused, CheckpointError."""
        ocp = self._ocp
        steps = sorted(self.manager.all_steps(), reverse=True)
        refused = []
        for step in steps:
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(_numpy(template)),
                    record=ocp.args.JsonRestore()))
                state, record = restored["state"], dict(restored["record"])
            except Exception as err:  # noqa: BLE001 - any failure to read is a bad checkpoint
                why = f"it cannot be read ({_reason(err)})"
            else:
                expected = record.get("state_sha256")
                if expected is None or expected == state_sha256(state):
                    if refused:
                        self.log(f"resuming from the checkpoint of step {step} instead")
                    return state, record
                why = "its arrays do not match the checksum saved with them"
            refused.append(f"step {step}: {why}")
            kept = self._set_aside(step)
            self.log(f"refusing the checkpoint of step {step} in {self.folder}: {why}; "
                     f"moved to {kept}")
        if refused:
            raise CheckpointError(f"no usable checkpoint in {self.folder} ("
                                  + "; ".join(refused) + "); train again without --resume")
        return None

    def _set_aside(self, step: int) -> str:
        """Move a refused checkpoint out of the manager's sight (training will save that
        step again), keeping its files for whoever wants to look at them."""
        source = os.path.join(self.folder, str(step))
        target = os.path.join(self.folder, REFUSED, str(step))
        n = 1
        while os.path.exists(target):
            n += 1
            target = os.path.join(self.folder, REFUSED, f"{step}-{n}")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(source, target)
        self.manager.reload()
        return target

    def close(self) -> None:
        try:
            self.manager.wait_until_finished()
            self.manager.close()
        except Exception:  # noqa: BLE001 - closing after a failed save must not hide it
            pass


def _reason(err: BaseException) -> str:
    """The system's words for a failed write or read, without Orbax's wrapping."""
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return f"{cause.strerror}" + (f": {cause.filename}" if cause.filename else "")
        cause = cause.__cause__ or cause.__context__
    text = str(err)
    code = re.search(r"os_error_code='(\d+)'", text)  # TensorStore's words for an OSError
    if code:
        return os.strerror(int(code.group(1)))
    lines = text.strip().splitlines()
    return lines[0][:200] if lines else type(err).__name__


def _orbax_error(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR and f"{os.sep}orbax{os.sep}" in record.pathname


def _hush_orbax_errors() -> None:
    """Orbax logs a failed write (with its traceback) from its worker thread before raising
    it; `save` turns what it raises into one line, so the log would only repeat it."""
    logger = logging.getLogger("absl")
    if not any(f is _ORBAX_FILTER for f in logger.filters):
        logger.addFilter(_ORBAX_FILTER)
    if not getattr(sys.unraisablehook, "_nnspec", False):
        sys.unraisablehook = _without_closed_loop_noise(sys.unraisablehook)


def _without_closed_loop_noise(previous: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """After a failed save TensorStore's threads call back into Orbax's closed event loop;
    the RuntimeError each raises is reported as unraisable (from native code, while the
    save's own error is on its way to the user). Those alone are dropped."""
    def hook(unraisable: Any) -> None:
        value = unraisable.exc_value
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        previous(unraisable)

    hook._nnspec = True  # type: ignore[attr-defined]
    return hook


_ORBAX_FILTER = logging.Filter()
_ORBAX_FILTER.filter = lambda record: not _orbax_error(record)  # type: ignore[method-assign]


def _quiet_after_failure() -> None:
    """After a failed save, TensorStore's threads call back into Orbax's closed event loop
    and print those tracebacks (through sys.excepthook) until the process exits: the error
    is reported once, by nnspec, so they are silenced from here on."""
    import threading

    threading.excepthook = lambda args: None
    sys.excepthook = lambda *args: None
    sys.unraisablehook = lambda args: None
    for name in ("absl", "asyncio", "orbax"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _numpy(tree: Any) -> Any:
    """Orbax stores arrays, not Python or numpy scalars."""
    import jax

    return jax.tree.map(lambda a: np.asarray(a), tree)
