"""Unlabelled English sentences from what is installed: nothing is downloaded.

A sentence encoder is distilled on text; this machine already holds plenty of it. The
documents (:func:`documents`) are the docstrings of the Python standard library's and the
installed packages' source files (read with :mod:`ast`, never imported) and the package
descriptions, READMEs and licence texts in ``*.dist-info`` folders. :func:`sentences` splits
them into sentences, keeps the ones that read as prose (4–64 words, mostly letters, no code),
removes duplicates, and splits them into a training and a held-out set **by document**, so no
held-out sentence shares a docstring or a README with a training one.
"""

from __future__ import annotations

import ast
import hashlib
import re
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Corpus", "documents", "sentences"]

_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_SPACE = re.compile(r"\s+")
_CODE = re.compile(r"[{}\[\]<>=|`\\$@#^~_*]|::|\.\.|\w\(|\bdef\b|\bimport\b|https?:|www\.")
_MAX_FILE = 256 * 1024
_TEXT_FILES = ("METADATA", "LICENSE", "LICENSE.txt", "LICENSE.md", "COPYING", "README.md")


@dataclass(frozen=True, slots=True)
class Corpus:
    """Sentences to train on and held-out sentences from other documents."""

    train: tuple[str, ...]
    test: tuple[str, ...]
    documents: int
    source: str


def _roots() -> list[Path]:
    paths = sysconfig.get_paths()
    roots = [Path(paths["stdlib"]), Path(paths["purelib"])]
    return list(dict.fromkeys(r for r in roots if r.is_dir()))


def _docstrings(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError, OSError, RecursionError):
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            text = ast.get_docstring(node, clean=True)
            if text:
                yield text


def _document(root: Path, path: Path) -> tuple[str, str] | None:
    try:
        if not path.is_file() or path.stat().st_size > _MAX_FILE:
            return None
    except OSError:
        return None
    if "test" in path.parent.name.lower():
        return None
    if path.suffix == ".py":
        text = "\n\n".join(_docstrings(path))
    elif path.name in _TEXT_FILES and path.parent.name.endswith(".dist-info"):
        text = path.read_text(encoding="utf-8", errors="replace")
    else:
        return None
    return (str(path.relative_to(root)), text) if text.strip() else None


def documents(
    roots: Sequence[Path] | None = None, per_package: int = 40
) -> Iterator[tuple[str, str]]:
    """``(name, text)`` per document: a source file's docstrings joined, or a dist-info text
    file. Packages (a root's top-level entries) come in a fixed order mixed by a hash of the
    name, at most ``per_package`` documents each, so a few big packages do not make up the
    whole corpus and the walk stops as soon as the caller has enough."""
    for root in roots if roots is not None else _roots():
        for top in sorted(root.iterdir(), key=lambda p: _digest(p.name)):
            files = sorted(top.rglob("*"), key=lambda p: _digest(str(p))) if top.is_dir() else [top]
            taken = 0
            for path in files:
                found = _document(root, path)
                if found is not None:
                    yield found
                    taken += 1
                    if taken >= per_package:
                        break


def _prose(text: str) -> Iterator[str]:
    for paragraph in re.split(r"\n\s*\n", text):
        flat = _SPACE.sub(" ", paragraph).strip()
        if not flat or flat[0] in "-*+>|:#." or flat.endswith(":"):
            continue
        for sentence in _SPLIT.split(flat):
            words = sentence.split()
            if not 4 <= len(words) <= 64 or _CODE.search(sentence):
                continue
            letters = sum(c.isalpha() or c == " " for c in sentence)
            if letters < 0.85 * len(sentence) or not sentence[0].isupper():
                continue
            yield sentence


def _digest(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")


def _held_out(name: str, fraction: float) -> bool:
    return _digest("held-out:" + name) < fraction * 2**32


def sentences(
    limit: int = 20000,
    test_fraction: float = 0.1,
    roots: Sequence[Path] | None = None,
) -> Corpus:
    """Up to ``limit`` distinct sentences, ``test_fraction`` of the documents held out."""
    seen: set[str] = set()
    train: list[str] = []
    test: list[str] = []
    count = 0
    for name, text in documents(roots):
        found = [s for s in _prose(text) if s.lower() not in seen]
        if not found:
            continue
        count += 1
        (test if _held_out(name, test_fraction) else train).extend(found)
        seen.update(s.lower() for s in found)
        if len(train) + len(test) >= limit:
            break
    where = ", ".join(str(r) for r in (roots if roots is not None else _roots()))
    return Corpus(
        tuple(train),
        tuple(test),
        count,
        f"{len(train) + len(test)} sentences from the docstrings and package texts of "
        f"{count} installed documents ({where}); held out by document",
    )
