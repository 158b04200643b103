"""Files a job reads (tables, datasets), pinned by content at submit.

A job spec names files by path, checked on the submitter's machine; a driver or worker
elsewhere (another folder, another node) may read another file under that name. At submit
the spec stores each path absolute and, under `checksums`, the SHA-256 of every file read
(`{absolute path: hex digest}`); whoever builds the evaluator or strategy from the stored
arguments (`verify_checksums`) then refuses a missing or different file with one line.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: `checksums` argument name in `evaluator_args` / `strategy_args`.
CHECKSUMS = "checksums"
_DIGESTS: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256 hex


def absolute(path: str) -> str:
    """`path` made absolute against this process's folder (`~` expanded)."""
    return str(Path(path).expanduser().resolve())


def file_digest(path: str) -> str:
    """SHA-256 of a file's content (cached per path, size and modification time)."""
    stat = os.stat(path)
    key = (path, stat.st_size, stat.st_mtime_ns)
    digest = _DIGESTS.get(key)
    if digest is None:
        sha = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
        digest = _DIGESTS[key] = sha.hexdigest()
    return digest


def with_checksums(args: dict[str, Any], files: Iterable[str], field: str) -> dict[str, Any]:
    """`args` with `checksums` holding the digest of each of `files` (absolute paths); a
    digest already there is kept, so checking a stored spec again compares against it."""
    given = checked_mapping(args.get(CHECKSUMS), field)
    found = dict(given)
    for path in files:
        found.setdefault(path, file_digest(path))
    out = dict(args)
    if found:
        out[CHECKSUMS] = dict(sorted(found.items()))
    return out


def checked_mapping(value: Any, field: str) -> dict[str, str]:
    """The `checksums` argument as {absolute path: 64-hex digest}; ValueError otherwise."""
    if value is None:
        return {}
    ok = isinstance(value, dict) and all(
        isinstance(k, str) and os.path.isabs(k) and isinstance(v, str) and len(v) == 64
        for k, v in value.items())
    if not ok:
        raise ValueError(f"{field}.{CHECKSUMS} must map absolute file paths to SHA-256 hex "
                         f"digests (filled in at submit), got {value!r}")
    return dict(value)


def verify_checksums(value: Any, field: str) -> None:
    """Raise ValueError naming the first file that is missing or differs from submit."""
    for path, digest in checked_mapping(value, field).items():
        if not os.path.isfile(path):
            raise ValueError(f"{field}.{CHECKSUMS}: {path} does not exist on this machine")
        now = file_digest(path)
        if now != digest:
            raise ValueError(f"{field}.{CHECKSUMS}: {path} changed since the job was submitted "
                             f"(sha256 {now[:12]}..., submitted {digest[:12]}...)")
