"""Several processes, one training run: `jax.distributed` wiring for multi-host data parallelism.

Every process runs the same command on the same spec. Each loads the same data (splits and
shuffles are seeded, so they agree), builds one mesh over the devices of all processes and feeds
the same global batches, of which JAX transfers only its own devices' shards. Every decision
taken on the host (early stopping, learning-rate plateaus, NaN guard) reads replicated values,
so the processes agree without talking; the exceptions, a signal that reached only some of
them and chunk sizes timed locally, are settled by `agree` and `same`. Process 0 writes the
run directory; all take part in checkpoints.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Join the run's processes (before any other JAX call). Without arguments, JAX reads the
    cluster's environment (SLURM, Open MPI, Kubernetes, Cloud TPU)."""
    import jax

    # CPU devices of several processes talk through gloo; GPUs and TPUs ignore this setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id)


def process_count() -> int:
    import jax

    return jax.process_count()


def is_primary() -> bool:
    """Whether this process writes the run directory (process 0; always, with one process)."""
    import jax

    return jax.process_index() == 0


def agree(flag: bool) -> bool:
    """True on every process when it is true on any of them (a no-op with one process)."""
    if process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def same(value: int) -> int:
    """Process 0's `value`, on every process: for choices made from local timings (how many
    steps the next compiled call runs), which must not differ between processes."""
    if process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier `name` (a no-op with one process)."""
    if process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def replicate(tree: Any, sharding: Any) -> Any:
    """`tree` placed on every device of `sharding`. With several processes a process can only
    hand JAX host values (it cannot reach another process's device), so go through numpy."""
    import jax

    if process_count() > 1:
        tree = jax.device_get(tree)
    return jax.device_put(tree, sharding)
