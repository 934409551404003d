"""The training stage: the IR as a Flax module, trained with Optax under XLA (losses,
optimizers, input pipeline, checkpoints, devices and hosts, transfer, records)."""
