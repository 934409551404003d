"""The summary of a spec as a value: rows, totals, a rich table and a notebook view."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Summary:
    """`spec.summary()`: one row per layer, with totals. Prints as a table in a terminal and
    in a notebook; `to_dict()` gives plain data (rows load straight into a DataFrame)."""

    name: str
    rows: tuple[Any, ...]
    graph: Any

    @classmethod
    def of(cls, graph: Any) -> Summary:
        from nnspec.compiler.graph.summary import summarize

        return cls(graph.name, tuple(summarize(graph)), graph)

    @property
    def params(self) -> int:
        """All parameters, trainable or not (batch-norm statistics count as non-trainable)."""
        return sum(r.params + r.non_trainable for r in self.rows)

    @property
    def trainable_params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def macs(self) -> int:
        """Multiply-adds per sample, summed over the layers that report them."""
        return sum(r.macs or 0 for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params,
                "trainable_params": self.trainable_params, "macs": self.macs,
                "layers": [{**asdict(r), "inputs": list(r.inputs), "shape": list(r.shape)}
                           for r in self.rows]}

    def table(self) -> Any:
        """The rich table `nnspec summary` prints."""
        from nnspec.compiler.graph.summary import render

        return render(self.graph, list(self.rows))

    def __rich__(self) -> Any:
        return self.table()

    def __str__(self) -> str:
        from rich.console import Console

        console = Console(width=130, record=True, file=_Null())
        console.print(self.table())
        return console.export_text()

    def _repr_html_(self) -> str:
        from rich.console import Console

        console = Console(width=130, record=True, file=_Null())
        console.print(self.table())
        return console.export_html(inline_styles=True)

    def __repr__(self) -> str:
        return (f"Summary({self.name!r}: {len(self.rows)} layers, {self.params:,} params, "
                f"{self.macs:,} multiply-adds)")


class _Null:
    """A file that swallows what a recording console writes (we only want the export)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        return None
