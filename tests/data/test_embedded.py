"""The Tiny Shakespeare shipped inside the package: the default recipe prepares from it with no network and no
mirror, exactly as nanoGPT cuts it, and a copy that does not match its checksum is refused in one line."""

from __future__ import annotations

import fnmatch
import lzma
from pathlib import Path

import pytest

from optbench.config.compose import compose
from optbench.data import embedded, load, prepare, recipes, sources
from optbench.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def no_network(recipe, split):
    raise AssertionError("the embedded copy must be read before any network access")


def offline(recipe, split):
    raise OSError("no network")


def test_the_default_run_prepares_from_the_embedded_copy_offline(tmp_path, monkeypatch):
    """The default config as `optbench train` composes it, with the mirror pointed at an empty folder (no
    ../shared) and the hub unreachable: nanoGPT's shakespeare_char, 65 characters, 90/10 cut."""
    monkeypatch.setattr(sources, "load_hub", no_network)
    monkeypatch.setenv("OPTBENCH_MIRROR", str(tmp_path / "no-mirror"))
    monkeypatch.setenv("OPTBENCH_DATA_DIR", str(tmp_path / "prepared"))
    cfg = compose([]).data
    prepared = load(cfg, progress=False)
    assert prepared.dir == tmp_path / "prepared" / "shakespeare-char"
    assert prepared.meta["source"].startswith("embedded ")
    tok = prepared.tokenizer()
    assert prepared.vocab_size == 65 and tok.chars == "".join(sorted(set(tok.chars)))
    assert tok.chars == "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    assert prepared.meta["tokens"] == {"train": 1_003_854, "val": 111_540}
    assert tok.decode(prepared.tokens("train")[:14].tolist()) == "First Citizen:"


def test_data_source_and_the_mirror_still_come_first(tmp_path, data_cfg):
    (tmp_path / "mirror" / "tinyshakespeare").mkdir(parents=True)
    (tmp_path / "mirror" / "tinyshakespeare" / "input.txt").write_text("to be or not to be\n" * 20)
    prepared = prepare(data_cfg(name="shakespeare-char", mirror=str(tmp_path / "mirror")), progress=False)
    assert prepared.meta["source"].startswith("mirror ") and prepared.vocab_size == len(set("to be or not\n"))


def damaged_copy(folder: Path) -> Path:
    """The shipped file with one character of the text changed, compressed again: a valid xz stream whose text
    is not the one the checksum names."""
    copy = recipes.get_recipe("shakespeare-char").embedded
    text = lzma.decompress(copy.path.read_bytes()).replace(b"First Citizen", b"First Citizan", 1)
    folder.mkdir()
    (folder / copy.file).write_bytes(lzma.compress(text, preset=0))
    return folder


def test_a_copy_that_does_not_match_its_checksum_is_one_clear_error(tmp_path, data_cfg, monkeypatch):
    monkeypatch.setattr(sources, "load_hub", no_network)
    monkeypatch.setattr(embedded, "ASSETS", damaged_copy(tmp_path / "assets"))
    with pytest.raises(UserError) as error:
        prepare(data_cfg(name="shakespeare-char"), progress=False)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"the embedded corpus {tmp_path / 'assets' / 'tinyshakespeare.txt.xz'} is damaged: ")
    assert f"expected {recipes.SHAKESPEARE_SHA256}" in message and "data.source=PATH" in message
    prepared = tmp_path / "prepared"
    assert not prepared.exists() or not any(prepared.iterdir())


def test_an_install_without_the_copy_falls_back_to_the_hub(tmp_path, data_cfg, monkeypatch):
    monkeypatch.setattr(embedded, "ASSETS", tmp_path / "nothing")
    monkeypatch.setattr(sources, "load_hub", offline)
    with pytest.raises(UserError, match="^recipe 'shakespeare-char' needs network or data.source=PATH"):
        prepare(data_cfg(name="shakespeare-char"), progress=False)


def test_the_copy_is_package_data():
    """A non-editable install carries only the files pyproject's package-data names."""
    tomllib = pytest.importorskip("tomllib")
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["optbench"]
    for path in (embedded.ASSETS / "tinyshakespeare.txt.xz", embedded.ASSETS / "README.md"):
        relative = path.relative_to(ROOT / "optbench").as_posix()
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), relative
