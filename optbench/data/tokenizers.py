"""Tokenizers behind one small interface, rebuilt exactly from the dict kept in a dataset's meta.json.

Specs (`data.tokenizer`, or a recipe's default):
  gpt2       GPT-2 BPE via tiktoken, read offline from <mirror>/tokenizers/gpt2.tiktoken when present
  char       one id per distinct character of the corpus, sorted (nanoGPT's shakespeare_char)
  hf:NAME    a tokenizer from the Hugging Face hub, e.g. hf:gpt2 or hf:t5-base; read offline from
             <mirror>/tokenizers/NAME/tokenizer.json when present, else needs network or the HF cache
  hf:PATH    a tokenizer.json file, or a folder holding one, for the `tokenizers` library
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from optbench.errors import UserError, check, closest

SPECS = ("gpt2", "char", "hf:NAME", "hf:PATH")
GPT2_FILE = "tokenizers/gpt2.tiktoken"
# End-of-text tokens of common HF tokenizers, the first one present is the document separator.
HF_EOT_TOKENS = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>")


class Tokenizer(Protocol):
    """What the data pipeline and the trainer's sampler need from a tokenizer."""

    name: str
    vocab_size: int
    eot: int | None
    """The end-of-text id put between documents; None: documents are simply concatenated."""

    def encode(self, text: str) -> list[int]: ...
    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...
    def decode(self, ids: list[int]) -> str: ...
    def to_meta(self) -> dict[str, Any]: ...


class Gpt2Tokenizer:
    """GPT-2's byte-level BPE through tiktoken; special tokens in the text are encoded as plain text."""

    name = "gpt2"

    def __init__(self, bpe_file: str | None = None):
        self.bpe_file = bpe_file
        self.enc = _gpt2_from_file(bpe_file) if bpe_file else _gpt2_from_tiktoken()
        self.vocab_size = self.enc.n_vocab
        self.eot = self.enc.eot_token

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(texts)

    def decode(self, ids: list[int]) -> str:
        return self.enc.decode(list(ids))

    def to_meta(self) -> dict[str, Any]:
        return {"kind": "gpt2", "bpe_file": self.bpe_file}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Gpt2Tokenizer:
        # The ranks are the same wherever they come from, so a moved mirror falls back to tiktoken.
        bpe_file = meta.get("bpe_file")
        return cls(bpe_file if bpe_file and Path(bpe_file).is_file() else None)


def _gpt2_from_file(path: str):
    """tiktoken's GPT-2 encoding from a local merge-ranks file (no network)."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    from tiktoken_ext.openai_public import r50k_pat_str  # GPT-2's pre-tokenisation regex

    ranks = load_tiktoken_bpe(path)
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257)


def _gpt2_from_tiktoken():
    """tiktoken's own GPT-2 encoding (downloaded once, then cached by tiktoken)."""
    import tiktoken

    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as error:  # network failures surface as many different types
        raise UserError(f"tokenizer 'gpt2' needs network or <data.mirror>/{GPT2_FILE} "
                        f"({type(error).__name__})") from error


class CharTokenizer:
    """One id per character; the vocabulary is the sorted distinct characters of the corpus."""

    name = "char"
    eot = None

    def __init__(self, chars: str):
        self.chars = chars
        self.vocab_size = len(chars)
        self.stoi = {c: i for i, c in enumerate(chars)}

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as error:
            raise UserError(f"character {error.args[0]!r} is not in the {self.vocab_size}-character "
                            "vocabulary of this dataset") from None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def to_meta(self) -> dict[str, Any]:
        return {"kind": "char", "chars": self.chars}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> CharTokenizer:
        return cls(meta["chars"])


class HFTokenizer:
    """Any tokenizer of the `tokenizers` library; meta keeps its whole JSON so it rebuilds offline."""

    def __init__(self, tok, name: str):
        self.tok = tok
        self.name = name
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        ids = (tok.token_to_id(token) for token in HF_EOT_TOKENS)
        self.eot = next((i for i in ids if i is not None), None)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def to_meta(self) -> dict[str, Any]:
        return {"kind": "hf", "name": self.name, "json": self.tok.to_str()}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> HFTokenizer:
        from tokenizers import Tokenizer as RustTokenizer

        return cls(RustTokenizer.from_str(meta["json"]), meta["name"])


KINDS = {"gpt2": Gpt2Tokenizer, "char": CharTokenizer, "hf": HFTokenizer}


def make_tokenizer(spec: str, mirror: str | os.PathLike | None = None,
                   corpus_chars: str | None = None) -> Tokenizer:
    """The tokenizer named by `spec` (see the module docstring).

    `mirror` is the offline folder searched for the GPT-2 ranks; `corpus_chars` the text (or
    the distinct characters) a `char` tokenizer takes its vocabulary from.
    """
    check_spec(spec)
    if spec == "gpt2":
        bpe_file = Path(mirror) / GPT2_FILE if mirror else None
        return Gpt2Tokenizer(str(bpe_file) if bpe_file and bpe_file.is_file() else None)
    if spec == "char":
        if corpus_chars is None:
            raise ValueError("a char tokenizer needs corpus_chars")
        return CharTokenizer("".join(sorted(set(corpus_chars))))
    return _hf_tokenizer(spec, mirror)


def check_spec(spec: str) -> None:
    """A UserError unless `spec` is one of SPECS, checked without building it (an hf:PATH file must exist)."""
    if spec in ("gpt2", "char"):
        return
    if not (spec.startswith("hf:") and len(spec) > 3):
        near = closest(spec, ("gpt2", "char", "hf:"), n=1)
        raise UserError(f"unknown data.tokenizer '{spec}' (closest: {near[0]}); valid: {', '.join(SPECS)}")
    target = spec[3:]
    looks_local = target.endswith(".json") or target.startswith((".", "/", "~"))
    check(not looks_local or _local_file(target).is_file(),
          f"data.tokenizer '{spec}': no tokenizer file at {_local_file(target)}")


def available_offline(spec: str, mirror: str | os.PathLike | None) -> bool:
    """Whether `make_tokenizer(spec, mirror)` builds without the network: char, hf:PATH, and gpt2 or hf:NAME from the
    mirror. tiktoken's and the hub's own caches are not looked into: reaching them can still go online."""
    if spec == "char":
        return True
    if spec == "gpt2":
        return bool(mirror) and (Path(mirror) / GPT2_FILE).is_file()
    copy = mirror_tokenizer_file(spec[3:], mirror)
    return _local_file(spec[3:]).is_file() or (copy is not None and copy.is_file())


def _local_file(target: str) -> Path:
    """Where `hf:target` is read from disk: the file itself, or the tokenizer.json of a folder."""
    path = Path(os.path.expanduser(target))
    return path / "tokenizer.json" if path.is_dir() else path


def mirror_tokenizer_file(name: str, mirror: str | os.PathLike | None) -> Path | None:
    """Where an `hf:NAME` tokenizer is read offline: <mirror>/tokenizers/NAME/tokenizer.json."""
    return Path(mirror) / "tokenizers" / name / "tokenizer.json" if mirror else None


def _hf_tokenizer(spec: str, mirror: str | os.PathLike | None = None) -> HFTokenizer:
    """`hf:PATH` (tokenizer.json or a folder holding one), or `hf:NAME`: the mirror's copy, else the hub."""
    from tokenizers import Tokenizer as RustTokenizer

    target = spec[3:]
    path = _local_file(target)
    if path.is_file():
        return HFTokenizer(RustTokenizer.from_file(str(path)), spec)
    copy = mirror_tokenizer_file(target, mirror)
    if copy is not None and copy.is_file():  # the name is kept, so meta.json and run names do not depend on it
        return HFTokenizer(RustTokenizer.from_file(str(copy)), spec)
    try:
        return HFTokenizer(RustTokenizer.from_pretrained(target), spec)
    except Exception as error:  # hub and network failures surface as many different types
        first = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
        where = copy if copy is not None else f"<data.mirror>/tokenizers/{target}/tokenizer.json"
        raise UserError(f"data.tokenizer '{spec}': cannot load '{target}' from the hub ({first}); offline, "
                        f"download https://huggingface.co/{target}/resolve/main/tokenizer.json to {where} "
                        "(or set data.tokenizer=hf:PATH/tokenizer.json)") from error


def from_meta(meta: dict[str, Any]) -> Tokenizer:
    """Rebuild the tokenizer described by `Tokenizer.to_meta()`."""
    return KINDS[meta["kind"]].from_meta(meta)
