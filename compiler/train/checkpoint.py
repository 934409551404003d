"""Training checkpoints with Orbax: atomic, waited for, resumable bit for bit.

A checkpoint holds the whole training state (parameters, other variable collections, optimizer
state, learning-rate scale, early-stopping state and best weights) plus a JSON record of where
training stands (epoch, batch within the epoch, step, history). The data order needs no state:
each epoch's permutation is derived from the seed and the epoch number.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np


class Checkpoints:
    """An Orbax checkpoint manager over `folder`, keyed by the global step."""

    def __init__(self, folder: str, keep: int):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.folder = os.path.abspath(folder)
        self.manager = ocp.CheckpointManager(
            self.folder, options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=False))

    def save(self, step: int, state: Any, record: dict[str, Any]) -> None:
        """Save synchronously (Orbax writes a temporary folder, then renames it)."""
        ocp = self._ocp
        state = _numpy(state)
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)), force=True)
        self.manager.wait_until_finished()

    def latest(self, template: Any) -> tuple[Any, dict[str, Any]] | None:
        """The newest complete checkpoint, restored into `template`'s structure."""
        ocp = self._ocp
        step = self.manager.latest_step()
        if step is None:
            return None
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_numpy(template)), record=ocp.args.JsonRestore()))
        return restored["state"], dict(restored["record"])

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _numpy(tree: Any) -> Any:
    """Orbax stores arrays, not Python or numpy scalars."""
    import jax

    return jax.tree.map(lambda a: np.asarray(a), tree)
