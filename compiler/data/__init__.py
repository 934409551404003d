"""Data sources named by a spec's `data` section; none of them imports JAX."""
