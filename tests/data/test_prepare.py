"""Preparing datasets: every recipe from local files, the offline mirror, a faked hub, and the errors."""

import gzip
import hashlib
import importlib
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from optbench.data import RECIPES, list_prepared, load, make_tokenizer, prepare
from optbench.data import sources
from optbench.data.tokenizers import CharTokenizer
from optbench.errors import UserError
from tests.required import missing

# The package re-exports the function `prepare`, which hides the module of the same name.
prepare_module = importlib.import_module("optbench.data.prepare")

DOCS = [f"Document {i}: the {word} sat on the mat, and it was {i * 7} days old.\n"
        for i, word in enumerate(["cat", "dog", "émigré", "bird", "fox", "owl", "eel", "ant", "bee", "yak",
                                  "elk", "gnu"])]


def write_txt(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def write_jsonl(path, docs, field="text"):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps({field: doc, "id": i}) + "\n" for i, doc in enumerate(docs))
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(lines)
    else:
        path.write_text(lines, encoding="utf-8")


def write_parquet(path, docs, field="text"):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({field: docs, "url": [f"https://example.com/{i}" for i in range(len(docs))]}), path)


def shakespeare_char(root):
    text = "".join(DOCS)
    write_txt(root / "input.txt", text)
    cut = int(len(text) * 0.9)
    return root / "input.txt", {"train": [text[:cut]], "val": [text[cut:]]}, {}


def wikitext_2(root):  # .txt, split by file name, a folder as the source
    for name, part in (("wiki.train.txt", DOCS[:6]), ("wiki.valid.txt", DOCS[6:9]), ("wiki.test.txt", DOCS[9:])):
        write_txt(root / name, "".join(part))
    return root, {"train": ["".join(DOCS[:6])], "val": ["".join(DOCS[6:9])], "test": ["".join(DOCS[9:])]}, {}


def wikitext_103(root):  # .txt, no split names, a glob: two documents, the last one carved off as val
    write_txt(root / "part1.txt", "".join(DOCS[:8]))
    write_txt(root / "part2.txt", "".join(DOCS[8:]))
    write_txt(root / "notes.md", "not matched by the glob")
    return root / "*.txt", {"train": ["".join(DOCS[:8])], "val": ["".join(DOCS[8:])]}, {}


def tinystories(root):  # .jsonl, split by file name
    write_jsonl(root / "TinyStories-train.jsonl", DOCS[:9])
    write_jsonl(root / "TinyStories-valid.jsonl", DOCS[9:])
    return root, {"train": DOCS[:9], "val": DOCS[9:]}, {}


def openwebtext(root):  # .jsonl, no split name: the last 10% of documents (at least one) is val
    write_jsonl(root / "owt.jsonl", DOCS)
    return root / "owt.jsonl", {"train": DOCS[:11], "val": DOCS[11:]}, {}


def slimpajama_6b(root):  # .parquet, split named by the folder
    write_parquet(root / "train" / "chunk1.parquet", DOCS[:6])
    write_parquet(root / "validation" / "chunk1.parquet", DOCS[6:9])
    write_parquet(root / "test" / "chunk1.parquet", DOCS[9:])
    return root, {"train": DOCS[:6], "val": DOCS[6:9], "test": DOCS[9:]}, {}


def fineweb(root):  # .parquet, two files without split names, a quarter carved off
    write_parquet(root / "sample" / "000_00000.parquet", DOCS[:7])
    write_parquet(root / "sample" / "001_00000.parquet", DOCS[7:])
    return root, {"train": DOCS[:9], "val": DOCS[9:]}, {"val_fraction": 0.25}


def fineweb_edu(root):  # one .parquet file as the source
    write_parquet(root / "edu.parquet", DOCS)
    return root / "edu.parquet", {"train": DOCS[:10], "val": DOCS[10:]}, {"val_fraction": 0.2}


def c4(root):  # JSON lines named .json, one of them gzipped, as C4 ships
    write_jsonl(root / "c4-train.00000-of-01024.json", DOCS[:10])
    write_jsonl(root / "c4-validation.00000-of-00008.json.gz", DOCS[10:])
    return root, {"train": DOCS[:10], "val": DOCS[10:]}, {}


LAYOUTS = {"shakespeare-char": shakespeare_char, "wikitext-2": wikitext_2, "wikitext-103": wikitext_103,
           "tinystories": tinystories, "openwebtext": openwebtext, "slimpajama-6b": slimpajama_6b,
           "fineweb": fineweb, "fineweb-edu": fineweb_edu, "fineweb-edu-100bt": fineweb_edu, "c4": c4}


def joined_ids(tok, docs):
    """The tokens prepare should write: each document's, with the end-of-text id between them."""
    ids = []
    for doc in docs:
        if ids and tok.eot is not None:
            ids.append(tok.eot)
        ids += tok.encode(doc)
    return ids


def test_every_recipe_has_a_local_layout():
    assert set(LAYOUTS) == set(RECIPES)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_recipe_prepares_from_local_files(name, tmp_path, data_cfg, request):
    recipe = RECIPES[name]
    mirror = request.getfixturevalue("gpt2_mirror") if recipe.tokenizer == "gpt2" else tmp_path
    source, expected, options = LAYOUTS[name](tmp_path / "corpus")
    prepared = prepare(data_cfg(name=name, source=str(source), mirror=str(mirror), **options), progress=False)

    meta = prepared.meta
    tok = prepared.tokenizer()
    assert re.fullmatch(rf"{name}-[0-9a-f]{{8}}", prepared.dir.name)
    assert sorted(meta["tokens"]) == sorted(expected)
    assert meta["recipe"] == name and meta["dtype"] == "uint16" and meta["format"] == prepare_module.FORMAT
    assert meta["source"].startswith("local ") and meta["created"] and meta["optbench_version"]
    assert meta["tokenizer"]["kind"] == recipe.tokenizer and meta["vocab_size"] == tok.vocab_size
    for split, docs in expected.items():
        tokens = prepared.tokens(split)
        data = (prepared.dir / f"{split}.bin").read_bytes()
        assert tokens.dtype == np.uint16 and len(tokens) == meta["tokens"][split]
        assert hashlib.sha256(data).hexdigest() == meta["sha256"][split]
        assert tokens.tolist() == joined_ids(tok, docs)
        separator = "<|endoftext|>" if tok.eot is not None else ""
        assert tok.decode(tokens.tolist()) == separator.join(docs)


def test_shakespeare_char_from_mirror_matches_nanogpt(shared_data, data_cfg):
    if not (shared_data / "tinyshakespeare" / "input.txt").is_file():
        missing("no tinyshakespeare/input.txt in the offline data folder")
    prepared = load(data_cfg(name="shakespeare-char", mirror=str(shared_data), num_proc=None), progress=False)
    assert prepared.dir.name == "shakespeare-char"
    assert prepared.vocab_size == 65 and prepared.meta["source"].startswith("mirror ")
    assert prepared.meta["tokens"] == {"train": 1_003_854, "val": 111_540}
    assert prepared.tokenizer().decode(prepared.tokens("train")[:14].tolist()) == "First Citizen:"


def test_process_pool_writes_the_same_files(tmp_path, data_cfg, monkeypatch):
    monkeypatch.setattr(prepare_module, "BATCH_DOCS", 7)  # many small batches, so the pool starts
    pools, close = [], prepare_module._Encoder.__exit__

    def record_pool(encoder, *exc):
        pools.append(encoder.pool)
        close(encoder, *exc)
    monkeypatch.setattr(prepare_module._Encoder, "__exit__", record_pool)
    write_jsonl(tmp_path / "docs.jsonl", DOCS * 10)
    runs = [prepare(data_cfg(name="openwebtext", source=str(tmp_path / "docs.jsonl"), tokenizer="char",
                             root=str(tmp_path / f"root{n}"), num_proc=n), progress=False) for n in (1, 2)]
    assert pools[0] is None and pools[1] is not None
    assert runs[0].meta["sha256"] == runs[1].meta["sha256"]
    docs = DOCS * 10
    assert runs[0].meta["tokens"] == {"train": len("".join(docs[:108])), "val": len("".join(docs[108:]))}


def test_max_tokens_caps_every_split(tmp_path, data_cfg):
    write_jsonl(tmp_path / "docs.jsonl", DOCS)
    full = prepare(data_cfg(name="openwebtext", source=str(tmp_path / "docs.jsonl"), tokenizer="char"),
                   progress=False)
    capped = prepare(data_cfg(name="openwebtext", source=str(tmp_path / "docs.jsonl"), tokenizer="char",
                              max_tokens=100), progress=False)
    assert capped.dir != full.dir and capped.meta["tokens"] == {"train": 100, "val": len(DOCS[-1])}
    assert capped.tokens("train").tolist() == full.tokens("train")[:100].tolist()


def test_uint32_for_vocabularies_over_65536(tmp_path, data_cfg, hf_tokenizer_json):
    path = hf_tokenizer_json(tmp_path / "big.json", vocab_size=70_000)
    write_txt(tmp_path / "train.txt", "hello world the cat w69999")
    write_txt(tmp_path / "val.txt", "the cat")
    prepared = prepare(data_cfg(name="wikitext-2", source=str(tmp_path / "*.txt"), tokenizer=f"hf:{path}"),
                       progress=False)
    assert prepared.meta["dtype"] == "uint32" and prepared.tokens("train").dtype == np.uint32
    assert prepared.tokens("train").tolist() == [2, 3, 4, 5, 69_999]
    assert prepared.tokenizer().decode(prepared.tokens("val").tolist()) == "the cat"


def test_data_dir_names(tmp_path, data_cfg, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OPTBENCH_TEST_ROOT", str(tmp_path / "env"))
    data_dir = prepare_module.data_dir
    assert data_dir(data_cfg(name="tinystories", root="~/data")) == tmp_path / "home" / "data" / "tinystories"
    assert data_dir(data_cfg(name="tinystories", root="$OPTBENCH_TEST_ROOT")) == tmp_path / "env" / "tinystories"
    the_default_root = "${oc.env:OPTBENCH_TEST_ROOT,~/.cache/optbench/data}"
    assert data_dir(data_cfg(name="tinystories", root=the_default_root)) == tmp_path / "env" / "tinystories"
    variants = [data_cfg(name="tinystories", tokenizer="char"), data_cfg(name="tinystories", max_tokens=10),
                data_cfg(name="tinystories", val_fraction=0.2), data_cfg(name="tinystories", source="x.txt")]
    names = {data_dir(cfg).name for cfg in variants}
    assert len(names) == 4 and all(re.fullmatch(r"tinystories-[0-9a-f]{8}", n) for n in names)
    assert data_dir(data_cfg(name="tinystories", tokenizer="gpt2")).name == "tinystories"


def test_failed_prepare_leaves_nothing_behind(tmp_path, data_cfg, monkeypatch):
    write_txt(tmp_path / "input.txt", "".join(DOCS))
    cfg = data_cfg(name="shakespeare-char", source=str(tmp_path / "input.txt"))
    good = prepare(cfg, progress=False)
    before = {p.name: p.read_bytes() for p in good.dir.iterdir()}

    def broken(self, texts):
        raise RuntimeError("tokenizer crashed")
    monkeypatch.setattr(CharTokenizer, "encode_batch", broken)
    with pytest.raises(RuntimeError, match="tokenizer crashed"):
        prepare(cfg, progress=False)  # over an existing preparation: that one survives untouched
    assert [p.name for p in good.dir.parent.iterdir()] == [good.dir.name]
    assert {p.name: p.read_bytes() for p in good.dir.iterdir()} == before

    with pytest.raises(RuntimeError, match="tokenizer crashed"):
        prepare(data_cfg(name="shakespeare-char", source=str(tmp_path / "input.txt"), max_tokens=50),
                progress=False)  # a fresh one: no folder at all
    assert [p.name for p in good.dir.parent.iterdir()] == [good.dir.name]


def test_load_is_idempotent_and_reprepares_on_mismatch(tmp_path, data_cfg, monkeypatch):
    write_txt(tmp_path / "input.txt", "".join(DOCS))
    cfg = data_cfg(name="shakespeare-char", source=str(tmp_path / "input.txt"))
    first = load(cfg, progress=False)
    train, val = first.tokens("train").tolist(), first.tokens("val").tolist()
    stamp = (first.dir / "train.bin").stat().st_mtime_ns

    with monkeypatch.context() as patch:
        patch.setattr(prepare_module, "prepare", lambda *args, **kwargs: pytest.fail("prepared again"))
        again = load(cfg, progress=False)
    assert again.meta == first.meta and (first.dir / "train.bin").stat().st_mtime_ns == stamp

    meta = json.loads((first.dir / "meta.json").read_text())
    meta["request"]["val_fraction"] = 0.5
    (first.dir / "meta.json").write_text(json.dumps(meta))
    remade = load(cfg, progress=False)
    assert remade.meta["request"] == first.meta["request"] and remade.meta["created"]
    assert remade.tokens("train").tolist() == train

    (remade.dir / "val.bin").write_bytes(b"\x00\x00")  # a damaged file is noticed by its size
    assert load(cfg, progress=False).tokens("val").tolist() == val


def test_list_prepared_and_missing_split(tmp_path, data_cfg):
    write_txt(tmp_path / "input.txt", "".join(DOCS))
    prepare(data_cfg(name="shakespeare-char", source=str(tmp_path / "input.txt")), progress=False)
    prepared = prepare(data_cfg(name="openwebtext", source=str(tmp_path / "input.txt"), tokenizer="char"),
                       progress=False)
    rows = list_prepared(str(tmp_path / "prepared"))
    assert sorted(row["recipe"] for row in rows) == ["openwebtext", "shakespeare-char"]
    assert all(row["tokenizer"] == "char" and set(row["tokens"]) == {"train", "val"} for row in rows)
    with pytest.raises(UserError, match=r"no 'test' split in .*; available: train, val$"):
        prepared.tokens("test")


def fake_hub(monkeypatch, splits):
    """Serve `splits` (hub split name -> rows) in place of the network."""
    monkeypatch.setattr(sources, "load_hub", lambda recipe, split: splits[split])


def test_hub_corpus_without_val_routes_every_kth_document(data_cfg, gpt2_mirror, monkeypatch):
    fake_hub(monkeypatch, {"train": [{"text": doc} for doc in DOCS]})
    prepared = prepare(data_cfg(name="fineweb", mirror=str(gpt2_mirror), val_fraction=0.25), progress=False)
    tok = prepared.tokenizer()
    assert prepared.meta["source"] == "hub HuggingFaceFW/fineweb sample-10BT"
    assert prepared.tokens("val").tolist() == joined_ids(tok, DOCS[3::4])
    assert prepared.tokens("train").tolist() == joined_ids(tok, [d for i, d in enumerate(DOCS) if i % 4 != 3])


def test_hub_running_text_has_no_separators(tmp_path, data_cfg, gpt2_mirror, monkeypatch):
    lines = {split: [{"text": line} for line in part] for split, part in
             (("train", DOCS[:6]), ("validation", DOCS[6:9]), ("test", DOCS[9:]))}
    fake_hub(monkeypatch, lines)
    mirror = tmp_path / "mirror"  # the GPT-2 ranks but no wikitext-2, so the (fake) hub is read
    (mirror / "tokenizers").mkdir(parents=True)
    (mirror / "tokenizers" / "gpt2.tiktoken").symlink_to(gpt2_mirror / "tokenizers" / "gpt2.tiktoken")
    prepared = load(data_cfg(name="wikitext-2", mirror=str(mirror)), progress=False)
    tok = make_tokenizer("gpt2", mirror)
    assert prepared.dir.name == "wikitext-2" and prepared.meta["tokens"]["test"] > 0
    assert prepared.tokens("val").tolist() == [t for doc in DOCS[6:9] for t in tok.encode(doc)]


def one_line_error(call) -> str:
    with pytest.raises(UserError) as error:
        call()
    assert "\n" not in str(error.value)
    return str(error.value)


def test_unknown_recipe_names_the_closest(data_cfg):
    message = one_line_error(lambda: load(data_cfg(name="wikitext2")))
    assert "'wikitext2'" in message and "wikitext-2" in message


def test_missing_or_unreadable_source(tmp_path, data_cfg):
    assert "does not exist" in one_line_error(lambda: load(data_cfg(source=str(tmp_path / "nope.txt"))))
    write_txt(tmp_path / "table.csv", "a,b")
    assert ".parquet" in one_line_error(lambda: load(data_cfg(source=str(tmp_path / "table.csv"))))
    assert "holds no" in one_line_error(lambda: load(data_cfg(source=str(tmp_path / "*.jsonl"))))


def test_source_without_train_split(tmp_path, data_cfg):
    write_txt(tmp_path / "valid.txt", "some text")
    write_txt(tmp_path / "test.txt", "more text")
    assert "no train split" in one_line_error(lambda: load(data_cfg(name="wikitext-2", source=str(tmp_path))))


def test_missing_text_column_names_the_columns(tmp_path, data_cfg):
    write_jsonl(tmp_path / "docs.jsonl", DOCS, field="content")
    message = one_line_error(lambda: load(data_cfg(name="openwebtext", source=str(tmp_path), tokenizer="char")))
    assert "no 'text' column; columns: content, id" in message


def test_bad_tokenizer_spec(tmp_path, data_cfg):
    write_txt(tmp_path / "input.txt", "text")
    message = one_line_error(lambda: load(data_cfg(source=str(tmp_path / "input.txt"), tokenizer="gtp2")))
    assert "'gtp2'" in message and "gpt2" in message


def offline_hub(recipe, split):
    raise ConnectionError("Couldn't reach the Hub\nsecond line")


@pytest.mark.parametrize("name", sorted(name for name, recipe in RECIPES.items() if recipe.embedded is None))
def test_no_network_and_no_mirror(name, data_cfg, monkeypatch):
    """Every recipe but the one shipped in the package (tests/data/test_embedded.py) needs the network then."""
    monkeypatch.setattr(sources, "load_hub", offline_hub)
    message = one_line_error(lambda: load(data_cfg(name=name)))
    assert f"recipe '{name}' needs network or data.source=PATH" in message and "Couldn't reach" in message


def test_mirror_without_train_split_falls_back_to_the_hub(shared_data, data_cfg, monkeypatch):
    if not (shared_data / "wikitext-2" / "valid.txt").is_file():
        missing("no wikitext-2 in the offline data folder")
    monkeypatch.setattr(sources, "load_hub", offline_hub)
    message = one_line_error(lambda: load(data_cfg(name="wikitext-2", mirror=str(shared_data))))
    assert "needs network" in message and "has no train split" in message
