"""Tokenize a recipe once into flat token files that training reads through a memory map.

<dir>/<split>.bin  every token of the split in order, documents separated by the tokenizer's
                   end-of-text id, as uint16 (vocabularies up to 65,536) or uint32
<dir>/meta.json    what was asked for, where the text came from, the tokenizer (enough to rebuild
                   it exactly), token counts and sha256 checksums

<dir> is <data.root>/<name> for a recipe's own source and tokenizer, no max_tokens and the default
val_fraction, else <data.root>/<name>-<first 8 hex of sha256 of (source, tokenizer, max_tokens,
val_fraction)>. A prepare writes into a hidden temporary folder beside <dir> and renames it at the
end, so an interrupted one leaves nothing half-written behind.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import chain, islice
from pathlib import Path
from typing import Any

import numpy as np

from optbench import __version__
from optbench.config.schema import DataConfig
from optbench.data.recipes import Recipe, get_recipe
from optbench.data.sources import Source, Stream, expand_path, open_source
from optbench.data.tokenizers import Tokenizer, from_meta, make_tokenizer
from optbench.errors import check

FORMAT = 1
"""Bumped when the files' layout changes, so older prepared folders are made again."""
BATCH_DOCS = 512
BATCH_CHARS = 1 << 22
"""A batch sent to a tokenizer worker: this many documents or characters, whichever comes first."""


@dataclass
class Prepared:
    """A prepared dataset: its folder and meta.json, with the token files opened on demand."""

    dir: Path
    meta: dict[str, Any]
    _tokenizer: Tokenizer | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def vocab_size(self) -> int:
        return self.meta["vocab_size"]

    @property
    def splits(self) -> list[str]:
        return list(self.meta["tokens"])

    def tokens(self, split: str) -> np.memmap:
        """The split's tokens, memory-mapped read-only."""
        check(split in self.meta["tokens"],
              f"no '{split}' split in {self.dir}; available: {', '.join(self.splits)}")
        return np.memmap(self.dir / f"{split}.bin", dtype=self.meta["dtype"], mode="r")

    def tokenizer(self) -> Tokenizer:
        """The tokenizer the files were made with, rebuilt from meta.json once (GPT-2's merge ranks take a tenth of
        a second to read; a bench worker keeps its Prepared across trials). Tokenizers hold no state that encoding
        or decoding changes, so every caller may share one."""
        if self._tokenizer is None:
            self._tokenizer = from_meta(self.meta["tokenizer"])
        return self._tokenizer


def load(cfg: DataConfig, *, progress: bool = True) -> Prepared:
    """The prepared dataset `cfg` names, preparing it first when missing or made differently."""
    recipe = get_recipe(cfg.name)
    return _open_valid(data_dir(cfg), request(cfg, recipe)) or prepare(cfg, progress=progress)


def prepare(cfg: DataConfig, *, progress: bool = True) -> Prepared:
    """Tokenize every split of `cfg`'s dataset into <dir>/<split>.bin and write meta.json."""
    recipe = get_recipe(cfg.name)
    target = data_dir(cfg)
    source = open_source(recipe, cfg)
    tok = _make_tokenizer(cfg, recipe, source)
    dtype = np.dtype(np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32)
    with _atomic_dir(target) as tmp:
        counts, checksums = _write_splits(source, tok, tmp, dtype, cfg, progress)
        meta = {
            "format": FORMAT,
            "request": request(cfg, recipe),
            "recipe": recipe.name,
            "source": source.description,
            "tokenizer": tok.to_meta(),
            "vocab_size": tok.vocab_size,
            "eot": tok.eot,
            "dtype": dtype.name,
            "tokens": counts,
            "sha256": checksums,
            "optbench_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return Prepared(target, meta)


def request(cfg: DataConfig, recipe: Recipe) -> dict[str, Any]:
    """What identifies a prepared dataset: a folder whose meta.json differs is made again."""
    source = str(Path(expand_path(cfg.source)).resolve()) if cfg.source is not None else None
    return {"recipe": recipe.name, "source": source, "tokenizer": cfg.tokenizer or recipe.tokenizer,
            "max_tokens": cfg.max_tokens, "val_fraction": cfg.val_fraction}


def data_dir(cfg: DataConfig) -> Path:
    """<root>/<name> for the recipe's defaults, else <root>/<name>-<hash of what differs>."""
    recipe = get_recipe(cfg.name)
    asked = request(cfg, recipe)
    defaults = dict(asked, source=None, tokenizer=recipe.tokenizer, max_tokens=None,
                    val_fraction=DataConfig.val_fraction)
    root = Path(expand_path(cfg.root))
    if asked == defaults:
        return root / recipe.name
    key = json.dumps([asked["source"], asked["tokenizer"], asked["max_tokens"], asked["val_fraction"]])
    return root / f"{recipe.name}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def list_prepared(root: str) -> list[dict[str, Any]]:
    """One summary per prepared dataset under `root` (for `optbench data list`)."""
    folders = sorted(Path(expand_path(root)).glob("[!.]*"))  # hidden ones are prepares in progress
    return [{"name": folder.name, "dir": str(folder), "recipe": meta["recipe"],
             "tokenizer": meta["request"]["tokenizer"], "vocab_size": meta["vocab_size"],
             "tokens": meta["tokens"], "source": meta["source"], "created": meta["created"]}
            for folder in folders if (meta := _read_meta(folder))]


def _read_meta(folder: Path) -> dict[str, Any] | None:
    """The meta.json of `folder` if it holds a dataset in this FORMAT, else None."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def _open_valid(folder: Path, asked: dict[str, Any]) -> Prepared | None:
    """The dataset in `folder` if its meta.json matches `asked` and its files are whole, else None."""
    meta = _read_meta(folder)
    if meta is None or meta["request"] != asked:
        return None
    itemsize = np.dtype(meta["dtype"]).itemsize
    for split, count in meta["tokens"].items():
        path = folder / f"{split}.bin"
        if not path.is_file() or path.stat().st_size != count * itemsize:
            return None
    return Prepared(folder, meta)


def _make_tokenizer(cfg: DataConfig, recipe: Recipe, source: Source) -> Tokenizer:
    """The tokenizer cfg asks for; a char vocabulary needs one pass over all the text first."""
    spec = cfg.tokenizer or recipe.tokenizer
    chars = None
    if spec == "char":
        distinct: set[str] = set()
        for text in source.texts():
            distinct.update(text)
        chars = "".join(distinct)
    return make_tokenizer(spec, expand_path(cfg.mirror) if cfg.mirror else None, corpus_chars=chars)


@contextmanager
def _atomic_dir(target: Path) -> Iterator[Path]:
    """A temporary folder beside `target` that replaces it on success and vanishes on failure."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        if target.exists():  # a stale or different preparation: move it aside, then drop it
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when it was renamed


class _SplitFile:
    """One split's token file, appended batch by batch, with its token count and sha256."""

    def __init__(self, file, dtype: np.dtype, cap: int | None):
        self.file, self.dtype, self.cap = file, dtype, cap
        self.count = 0
        self.sha256 = hashlib.sha256()

    @property
    def full(self) -> bool:
        return self.cap is not None and self.count >= self.cap

    def write(self, ids: np.ndarray, eot: int | None) -> None:
        """Append `ids`, after `eot` when the split already has tokens, up to the cap."""
        if self.count and eot is not None and len(ids):
            ids = np.concatenate((np.array([eot], dtype=self.dtype), ids))
        if self.cap is not None:
            ids = ids[: max(self.cap - self.count, 0)]
        data = ids.tobytes()
        self.file.write(data)
        self.sha256.update(data)
        self.count += len(ids)


def _write_splits(source: Source, tok: Tokenizer, folder: Path, dtype: np.dtype, cfg: DataConfig,
                  progress: bool) -> tuple[dict[str, int], dict[str, str]]:
    """Tokenize every stream of `source` into <folder>/<split>.bin; token counts and checksums."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("tokens"),
               TimeElapsedColumn())
    with ExitStack() as stack:
        files = {split: _SplitFile(stack.enter_context(open(folder / f"{split}.bin", "wb")), dtype, cfg.max_tokens)
                 for split in source.splits}
        bar = stack.enter_context(Progress(*columns, console=Console(stderr=True), disable=not progress))
        encoder = stack.enter_context(_Encoder(tok, dtype, cfg.num_proc or os.cpu_count() or 1))
        tasks = {split: bar.add_task(f"{cfg.name} {split}", total=cfg.max_tokens) for split in files}
        for stream in source.streams:
            eot = tok.eot if stream.separate else None
            for split, ids in encoder.map(_batches(stream, files), eot):
                files[split].write(ids, eot)
                bar.update(tasks[split], completed=files[split].count)
                if files[stream.splits[0]].full:
                    break
    for split, file in files.items():
        check(file.count > 0, f"split '{split}' of {source.description} holds no text")
    return ({split: f.count for split, f in files.items()},
            {split: f.sha256.hexdigest() for split, f in files.items()})


def _batches(stream: Stream, files: dict[str, _SplitFile]) -> Iterator[tuple[str, list[str]]]:
    """(split, texts) batches of a stream in order, skipping empty texts and splits already full."""
    pending: dict[str, list[str]] = {}
    sizes: dict[str, int] = {}
    for split, text in stream.read():
        if files[stream.splits[0]].full:
            return
        if not text or files[split].full:
            continue
        batch = pending.setdefault(split, [])
        batch.append(text)
        sizes[split] = sizes.get(split, 0) + len(text)
        if len(batch) >= BATCH_DOCS or sizes[split] >= BATCH_CHARS:
            yield split, pending.pop(split)
            sizes[split] = 0
    yield from ((split, batch) for split, batch in pending.items() if batch)


def encode_docs(tok: Tokenizer, texts: list[str], eot: int | None, dtype: np.dtype) -> np.ndarray:
    """The texts' tokens as one flat array, with `eot` between documents unless it is None."""
    parts = tok.encode_batch(texts)
    if eot is not None:
        parts = [piece for ids in parts for piece in ([eot], ids)][1:]
    return np.fromiter(chain.from_iterable(parts), dtype=dtype)


class _Encoder:
    """Runs `encode_docs` over batches in order, in a process pool started only for a second batch.

    At most two batches per worker are in flight, so a huge stream is never read far ahead.
    """

    def __init__(self, tok: Tokenizer, dtype: np.dtype, num_proc: int):
        self.tok, self.dtype, self.num_proc = tok, dtype, num_proc
        self.pool = None

    def map(self, batches: Iterable[tuple[str, list[str]]], eot: int | None) -> Iterator[tuple[str, np.ndarray]]:
        batches = iter(batches)
        head = list(islice(batches, 2))
        if self.num_proc <= 1 or (len(head) < 2 and self.pool is None):
            for split, texts in chain(head, batches):
                yield split, encode_docs(self.tok, texts, eot, self.dtype)
            return
        if self.pool is None:
            # fork where there is one: it needs no `if __name__ == "__main__"` guard in the user's
            # script and starts in milliseconds; the workers only ever run the tokenizer.
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            self.pool = context.Pool(self.num_proc, _init_worker, (self.tok,))
        in_flight: deque = deque()
        for split, texts in chain(head, batches):
            in_flight.append((split, self.pool.apply_async(_encode_in_worker, (texts, eot, self.dtype))))
            if len(in_flight) >= 2 * self.num_proc:
                split, result = in_flight.popleft()
                yield split, result.get()
        while in_flight:
            split, result = in_flight.popleft()
            yield split, result.get()

    def __enter__(self) -> _Encoder:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


_worker_tok: Tokenizer | None = None


def _init_worker(tok: Tokenizer) -> None:
    global _worker_tok
    # The tokenizers library's own threads would multiply with the processes.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_tok = tok


def _encode_in_worker(texts: list[str], eot: int | None, dtype: np.dtype) -> np.ndarray:
    return encode_docs(_worker_tok, texts, eot, dtype)
