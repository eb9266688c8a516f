"""What changed in a repository since the last look: Triton's poll mode, minus the loading.

:class:`Poller` keeps a fingerprint of every model folder (each file's relative path, size and
modification time, hidden entries skipped) and :meth:`Poller.scan` answers which models were
added, changed (a version folder added or removed, the config or a label file edited) or
removed since the previous scan. The engine loads and unloads accordingly. As in Triton, a
change half-written when the scan runs is seen half-written: write versions atomically (as
``forwardpass optimize`` and the importers do, into a hidden folder renamed into place).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from forwardpass.errors import ForwardpassError
from forwardpass.repository.repository import ModelRepository

__all__ = ["Changes", "Poller"]

log = logging.getLogger("forwardpass.repository")

Fingerprint = frozenset[tuple[str, int, int]]


@dataclass(frozen=True, slots=True)
class Changes:
    """Model names, sorted, by what happened to them since the previous scan."""

    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)


@dataclass(slots=True)
class Poller:
    repository: ModelRepository
    _seen: dict[str, Fingerprint] = field(default_factory=dict)

    def scan(self) -> Changes:
        """Compare the repository with the previous scan (the first scan reports every model
        as added) and remember what it holds now."""
        try:
            names = self.repository.list_models()
        except ForwardpassError as exc:
            # A repository that vanished for a moment (a remount) must not unload everything.
            log.warning("repository poll skipped: %s", exc.message)
            return Changes()
        now = {name: fingerprint(self.repository.root / name) for name in names}
        added = sorted(n for n in now if n not in self._seen)
        changed = sorted(n for n in now if n in self._seen and now[n] != self._seen[n])
        removed = sorted(n for n in self._seen if n not in now)
        self._seen = now
        return Changes(tuple(added), tuple(changed), tuple(removed))


def fingerprint(folder: Path) -> Fingerprint:
    """Each visible file under ``folder``: (relative path, size, mtime in ns)."""
    entries: set[tuple[str, int, int]] = set()
    for top, dirs, files in os.walk(folder, onerror=lambda _exc: None):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith("."):
                continue
            path = Path(top) / name
            try:
                stat = path.stat()
            except OSError:
                continue
            entries.add((str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns))
        # An empty version folder still counts: its number may matter to the version policy.
        if not files and top != str(folder):
            entries.add((str(Path(top).relative_to(folder)) + "/", 0, 0))
    return frozenset(entries)
