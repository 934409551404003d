"""The graph stage: a validated spec becomes a typed, shape-inferred IR; its summary,
picture, JSON Schema and generated reference."""
