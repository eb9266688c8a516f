"""Which version an optimized version was made from, read from its ``optimization.json``.

Light on purpose (json only): the server's repository index and ``forwardpass models`` read it
for every version. A missing or unreadable file means "not an optimized version".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

__all__ = ["OPTIMIZATION_FILE", "Provenance", "read_provenance"]

#: The report written beside an optimized version's model file.
OPTIMIZATION_FILE = "optimization.json"


@dataclass(frozen=True, slots=True)
class Provenance:
    """An optimized version's origin."""

    optimized_from: int
    method: str
    candidate: str
    target: str

    def describe(self) -> str:
        """``derived from v1 by int8-static (int8-static-s8s8-pc, target cpu)``."""
        return (
            f"derived from v{self.optimized_from} by {self.method} "
            f"({self.candidate}, target {self.target})"
        )


def read_provenance(version_dir: Path) -> Provenance | None:
    """The provenance recorded in ``version_dir``, or None when there is none to read."""
    try:
        data = json.loads((version_dir / OPTIMIZATION_FILE).read_text(encoding="utf-8"))
        return Provenance(
            optimized_from=int(data["optimized_from"]),
            method=str(data["method"]),
            candidate=str(data["selection"]["chosen"]),
            target=str(data["target"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
