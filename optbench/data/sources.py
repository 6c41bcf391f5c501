"""The documents of each split of a recipe: from `data.source`, the offline mirror, the package, or the hub.

Lookup order: `data.source=PATH` when given (a file, folder or glob of .txt/.json/.jsonl/.parquet,
optionally .gz), else the recipe's files under `data.mirror` when they hold a train split, else the
copy shipped in the package (Tiny Shakespeare, see `embedded.py`), else the hub, streamed. The shipped
copy comes before the hub: it is the same text, checksummed, and needs no network (an offline machine
that drops packets would otherwise wait on the connection). Files are read through HF `datasets` (text
files at URLs through fsspec, see `RemoteTextFiles`): .txt files are one document each.

Local files go to the split their path names (`train`, `val`/`valid`/`validation`, `test` as a word
of the path below the source folder); files naming no split are train. A source without val gets
`data.val_fraction` carved off train: the last documents (at least one), or for the char recipe
(or a single document) the last characters, exactly as nanoGPT's shakespeare_char prepare.py cuts.
A hub stream's length is unknown until it is read, so there every round(1/val_fraction)-th document
goes to val instead, which lets one pass over the network fill both splits.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import groupby, islice
from pathlib import Path

from optbench.config.schema import DataConfig
from optbench.data.embedded import read_text
from optbench.data.recipes import Recipe
from optbench.errors import UserError, check

SPLITS = ("train", "val", "test")
SPLIT_WORDS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
OC_ENV = re.compile(r"\$\{oc\.env:([^,}]+)(?:,([^}]*))?\}")

Docs = Callable[[], Iterator[str]]
"""A re-readable sequence of documents: each call starts a fresh pass."""


@dataclass
class Stream:
    """(split, text) pairs read in one pass; prepare stops reading it once its first split is full."""

    splits: tuple[str, ...]
    read: Callable[[], Iterator[tuple[str, str]]]
    separate: bool = True
    """Texts are documents (an end-of-text token between them), else pieces of one running text."""


@dataclass
class Source:
    """Where a dataset's text comes from, as streams in split order."""

    description: str
    streams: list[Stream]

    @property
    def splits(self) -> list[str]:
        return [s for s in SPLITS if any(s in stream.splits for stream in self.streams)]

    def texts(self) -> Iterator[str]:
        """Every text of every split (a char tokenizer's vocabulary is read from these)."""
        for stream in self.streams:
            yield from (text for _, text in stream.read() if text)


def open_source(recipe: Recipe, cfg: DataConfig) -> Source:
    """The documents `cfg` asks for: its source, else the offline mirror, else the embedded copy, else the hub."""
    if cfg.source is not None:
        return local_source(recipe, cfg.source, cfg.val_fraction)
    mirror = mirror_files(recipe, cfg.mirror)
    if mirror and "train" in mirror:
        return files_source(recipe, mirror, f"mirror {expand_path(cfg.mirror)}", cfg.val_fraction)
    if recipe.embedded is not None and recipe.embedded.installed():
        return embedded_source(recipe, cfg.val_fraction)
    lacks_train = f"; the mirror {expand_path(cfg.mirror)} has no train split" if mirror else ""
    return hub_source(recipe, cfg.val_fraction, lacks_train)


def expand_path(path: str) -> str:
    """`path` with ${oc.env:VAR,default} (the config's defaults, when not resolved by OmegaConf),
    $VARS and ~ expanded."""
    path = OC_ENV.sub(lambda m: os.environ.get(m[1].strip(), (m[2] or "").strip().strip("'\"")), path)
    return os.path.expanduser(os.path.expandvars(path))


# ---- local files -------------------------------------------------------------------------------

def local_source(recipe: Recipe, source: str, val_fraction: float) -> Source:
    """`data.source`: files assigned to splits by their names."""
    base, files = find_files(source)
    by_split: dict[str, list[Path]] = {}
    for path in files:
        by_split.setdefault(split_of(path.relative_to(base)) or "train", []).append(path)
    check("train" in by_split, f"data.source '{source}' has no train split: its files name only "
          f"{', '.join(sorted(by_split))}; add a file named *train* or one naming no split")
    return files_source(recipe, by_split, f"local {Path(expand_path(source)).resolve()}", val_fraction)


def find_files(source: str) -> tuple[Path, list[Path]]:
    """The folder split names are read below, and the readable files of a file, folder or glob."""
    path = Path(expand_path(source))
    if path.is_file():
        check(builder_of(path) is not None,
              f"data.source '{source}' is not one of {', '.join(BUILDERS)} (optionally .gz)")
        return path.parent, [path]
    if path.is_dir():
        base, found = path, path.rglob("*")
    elif glob.has_magic(str(path)):
        base = next(p for p in path.parents if not glob.has_magic(str(p)))
        found = (Path(p) for p in glob.glob(str(path), recursive=True))
    else:
        raise UserError(f"data.source '{source}' does not exist")
    files = sorted(p for p in found if p.is_file() and not p.name.startswith(".") and builder_of(p))
    check(bool(files), f"data.source '{source}' holds no {', '.join(BUILDERS)} file")
    return base, files


def builder_of(path: Path) -> str | None:
    """The `datasets` builder that reads `path` (by its suffix, .gz ignored), or None."""
    name = path.name.lower().removesuffix(".gz")
    return BUILDERS.get(os.path.splitext(name)[1])


def split_of(relative: Path) -> str | None:
    """The split a path names as one of its words (train, val/valid/validation, test), if any."""
    words = set(re.split(r"[^a-z0-9]+", str(relative).lower()))
    return next((split for split in SPLITS if words & set(SPLIT_WORDS[split])), None)


def mirror_files(recipe: Recipe, mirror: str | None) -> dict[str, list[Path]] | None:
    """The recipe's files in the mirror folder, by split; None unless all of them are there."""
    if not mirror or not recipe.mirror:
        return None
    root = Path(expand_path(mirror))
    files = {split: [root / relative] for split, relative in recipe.mirror.items()}
    return files if all(paths[0].is_file() for paths in files.values()) else None


def files_source(recipe: Recipe, by_split: dict[str, list[Path]], description: str,
                 val_fraction: float) -> Source:
    """Streams over local files, val carved off train when no file is a val split."""
    docs = {split: file_docs(files, recipe.text_field) for split, files in by_split.items()}
    return docs_source(recipe, docs, description, val_fraction)


def embedded_source(recipe: Recipe, val_fraction: float) -> Source:
    """The recipe's copy shipped in the package: one document, its checksum verified at every read."""
    copy = recipe.embedded
    docs = {"train": lambda: iter([read_text(copy)])}
    return docs_source(recipe, docs, f"embedded {copy.path} (sha256 {copy.sha256[:12]})", val_fraction)


def docs_source(recipe: Recipe, docs: dict[str, Docs], description: str, val_fraction: float) -> Source:
    """Streams over each split's documents, val carved off train when there is no val split."""
    if "val" not in docs:
        docs["train"], docs["val"] = carve(docs["train"], val_fraction, recipe.carve)
    return Source(description, [Stream((s,), tagged(s, docs[s])) for s in SPLITS if s in docs])


def file_docs(files: list[Path], field: str) -> Docs:
    """The documents of `files` in order: whole .txt files, or the `field` of each json/parquet row."""
    def read() -> Iterator[str]:
        for builder, group in groupby(files, key=builder_of):
            group = [str(path) for path in group]
            options = {"sample_by": "document"} if builder == "text" else {}
            dataset = _load_dataset(builder, data_files=group, split="train", streaming=True, **options)
            yield from rows_text(dataset, "text" if builder == "text" else field, group[0])
    return read


def _load_dataset(*args, **kwargs):
    import datasets  # slow to import: only when a source is read

    return datasets.load_dataset(*args, **kwargs)


def rows_text(dataset, field: str, where: str) -> Iterator[str]:
    """The `field` of every row, with a UserError naming the columns when it is missing."""
    for row in dataset:
        if field not in row:
            raise UserError(f"{where} has no '{field}' column; columns: {', '.join(row)}")
        yield row[field] or ""


# ---- carving val off train ----------------------------------------------------------------------

def carve(docs: Docs, fraction: float, by: str) -> tuple[Docs, Docs]:
    """Train and val: the last `fraction` of the documents (at least one), else of the characters."""
    if by == "documents":
        n = sum(1 for _ in docs())
        if n >= 2:
            cut = n - max(1, round(n * fraction))
            return (lambda: islice(docs(), cut)), (lambda: islice(docs(), cut, None))
    return carve_chars(docs, fraction)


def carve_chars(docs: Docs, fraction: float) -> tuple[Docs, Docs]:
    """nanoGPT's cut: the first int(n * (1 - fraction)) characters are train, the rest val."""
    n = sum(len(text) for text in docs())
    cut = int(n * (1 - fraction))

    def between(lo: int, hi: int) -> Iterator[str]:
        offset = 0
        for text in docs():
            if lo - offset < len(text) and hi > offset:
                yield text[max(lo - offset, 0):hi - offset]
            offset += len(text)
            if offset >= hi:
                return
    return (lambda: between(0, cut)), (lambda: between(cut, n))


def tagged(split: str, docs: Docs) -> Callable[[], Iterator[tuple[str, str]]]:
    """A stream reader yielding (split, text) for each document of `docs`."""
    return lambda: ((split, text) for text in docs())


def routed(docs: Docs, fraction: float) -> Callable[[], Iterator[tuple[str, str]]]:
    """A stream reader sending every round(1/fraction)-th document to val and the others to train."""
    period = max(2, round(1 / fraction))
    return lambda: (("val" if i % period == period - 1 else "train", text)
                    for i, text in enumerate(docs()))


# ---- the hub ------------------------------------------------------------------------------------

def hub_source(recipe: Recipe, val_fraction: float, why_not_mirror: str = "") -> Source:
    """The recipe's hub dataset, streamed; a UserError when it cannot be opened (no network)."""
    docs = {split: _hub_docs(recipe, remote, why_not_mirror) for split, remote in recipe.hub_splits.items()}
    separate = not recipe.running_text
    streams = []
    if "val" not in docs and recipe.carve == "documents":
        streams.append(Stream(("train", "val"), routed(docs.pop("train"), val_fraction), separate))
    elif "val" not in docs:
        docs["train"], docs["val"] = carve(docs["train"], val_fraction, recipe.carve)
    streams += [Stream((s,), tagged(s, docs[s]), separate) for s in SPLITS if s in docs]
    return Source(f"hub {hub_name(recipe)}", streams)


def hub_name(recipe: Recipe) -> str:
    """The hub dataset as it is asked for: path, config and data files."""
    return " ".join(filter(None, (recipe.hub_path, recipe.hub_config, recipe.hub_data_files)))


def _hub_docs(recipe: Recipe, remote_split: str, why_not_mirror: str) -> Docs:
    try:
        dataset = load_hub(recipe, remote_split)
    except Exception as error:  # no network surfaces as many different types
        raise _no_network(recipe, "cannot open", error, why_not_mirror) from error

    def read() -> Iterator[str]:
        try:
            yield from rows_text(dataset, recipe.text_field, hub_name(recipe))
        except UserError:
            raise
        except Exception as error:  # a stream is read lazily: the connection can drop part-way through
            raise _no_network(recipe, "lost the connection reading", error, "") from error
    return read


def _no_network(recipe: Recipe, what: str, error: Exception, why_not_mirror: str) -> UserError:
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return UserError(f"recipe '{recipe.name}' needs network or data.source=PATH: {what} {hub_name(recipe)} "
                     f"({reason}){why_not_mirror}")


def load_hub(recipe: Recipe, remote_split: str):
    """One split of the recipe's hub dataset as a streaming `datasets.IterableDataset` (or, for text files at
    URLs, `RemoteTextFiles`)."""
    urls = [recipe.hub_data_files] if isinstance(recipe.hub_data_files, str) else list(recipe.hub_data_files or ())
    if recipe.hub_path == "text" and urls and all("://" in url for url in urls):
        return RemoteTextFiles(urls)
    options = {"sample_by": "document"} if recipe.hub_path == "text" else {}
    return _load_dataset(recipe.hub_path, recipe.hub_config, data_files=recipe.hub_data_files,
                         revision=recipe.hub_revision, split=remote_split, streaming=True, **options)


class RemoteTextFiles:
    """Rows {"text": a whole file} of text files at URLs, as datasets' text builder with sample_by="document"
    gives, read through fsspec directly: datasets' streaming text reader passes its `encoding` on to fsspec's
    HTTP filesystem as a request option, which aiohttp rejects, so a text recipe never downloaded."""

    def __init__(self, urls: list[str]):
        import fsspec

        self.urls = urls
        for url in urls:  # unreachable fails here, when the source is opened, as datasets' loaders do
            fs, path = fsspec.core.url_to_fs(url)
            fs.info(path)

    def __iter__(self) -> Iterator[dict[str, str]]:
        import fsspec

        for url in self.urls:
            with fsspec.open(url, "rt", encoding="utf-8", compression="infer") as f:
                yield {"text": f.read()}
