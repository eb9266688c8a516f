"""The measuring process ``python -m forwardpass.optimize.worker SPEC.json`` (see :mod:`.measure`).

A module of its own, not imported by the package, so ``-m`` runs it without a second import.
"""

from __future__ import annotations

import sys

from forwardpass.optimize.measure import run_spec

if __name__ == "__main__":
    run_spec(sys.argv[1])
