"""Corpora shipped inside the package, so the default run needs neither network nor a mirror.

`optbench/data/assets/` holds them xz-compressed, with their source and licence in its README. A recipe names
its copy with an `Embedded` (the file and the SHA-256 of the uncompressed text), and the text is checked against
that checksum each time it is read: a damaged install is an error, never a silently different corpus.
"""

from __future__ import annotations

import hashlib
import lzma
from dataclasses import dataclass
from pathlib import Path

from optbench.errors import check

ASSETS = Path(__file__).resolve().parent / "assets"


@dataclass(frozen=True)
class Embedded:
    """A corpus shipped as `optbench/data/assets/<file>` (xz), with the SHA-256 of its uncompressed text."""

    file: str
    sha256: str

    @property
    def path(self) -> Path:
        return ASSETS / self.file

    def installed(self) -> bool:
        """Whether the file is there (an install that left out the package data has none)."""
        return self.path.is_file()


def read_text(copy: Embedded) -> str:
    """The copy's text, after its checksum is verified; a UserError naming the way out when it differs."""
    data = lzma.decompress(copy.path.read_bytes())
    digest = hashlib.sha256(data).hexdigest()
    check(digest == copy.sha256, f"the embedded corpus {copy.path} is damaged: sha256 {digest}, expected "
          f"{copy.sha256}; reinstall optbench, or give data.source=PATH or data.mirror=DIR")
    return data.decode("utf-8")
