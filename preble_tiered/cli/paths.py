"""Output paths checked before the work that fills them: a sweep or a simulation must not run
for minutes and then fail on a path it could never write."""

from __future__ import annotations

import os
from pathlib import Path


def check_output(path: str, flag: str, *, make_parents: bool = False) -> None:
    """Raise ValueError (naming `flag` and the fix) unless `path` can be written as a file.

    Args:
        make_parents: the writer creates missing parent directories; then only the nearest
            existing one must be writable.
    """
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{flag} {path} is a directory: give a file path, e.g. {p / 'out.json'}")
    parent = p.absolute().parent
    while make_parents and not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ValueError(f"cannot write {flag} {path}: {parent} is not a writable directory")
