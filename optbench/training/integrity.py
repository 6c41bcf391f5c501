"""What every checkpoint format shares: SHA-256 digests of its files, and the error for one that does not verify."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 20


class CorruptCheckpoint(Exception):
    """The file or folder is truncated, altered, incomplete or not an optbench checkpoint."""


def file_sha256(path: Path) -> str:
    """The file's SHA-256, read in chunks (a checkpoint can be larger than the memory to spare)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
