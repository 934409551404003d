"""More `nnspec` verbs, one module each: a module defines `add_parser(verbs, overrides)`,
which adds its sub-parser and sets `func`. `nnspec.main` discovers them, so a new verb is one
new file. Heavy imports belong inside the command functions."""
