"""Shared fixtures: the offline data folder (../shared/data), data configs in tmp_path, a tiny training run."""

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.required import missing

# Tests never reach a dataset hub; these make `datasets` and `huggingface_hub` fail fast instead of retrying.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_configure(config):
    """Under pytest-xdist each worker gets its share of the cores for torch, so two workers on two cores do not
    run four threads. This is the worker process's own setting, made once before any test."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@pytest.fixture(scope="session", autouse=True)
def optbench_cache(tmp_path_factory) -> Path:
    """optbench's cache folder (lm-eval's task names) inside this session's temp folder, which pytest-xdist's
    workers share: tests neither read nor write the user's ~/.cache/optbench, and the first to need lm-eval's
    task index builds it for all. Subprocesses inherit the setting; it is restored at the end."""
    session = tmp_path_factory.getbasetemp()
    folder = (session.parent if os.environ.get("PYTEST_XDIST_WORKER") else session) / "optbench-cache"
    before = os.environ.get("OPTBENCH_CACHE_DIR")
    os.environ["OPTBENCH_CACHE_DIR"] = str(folder)
    yield folder
    if before is None:
        del os.environ["OPTBENCH_CACHE_DIR"]
    else:
        os.environ["OPTBENCH_CACHE_DIR"] = before


@pytest.fixture
def shared_data() -> Path:
    """../shared/data relative to the repository root, holding the offline corpora."""
    if not SHARED_DATA.is_dir():
        missing(f"no offline data folder at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def gpt2_mirror(shared_data) -> Path:
    """A mirror folder holding tokenizers/gpt2.tiktoken, so the GPT-2 tokenizer loads offline."""
    if not (shared_data / "tokenizers" / "gpt2.tiktoken").is_file():
        missing(f"no {shared_data / 'tokenizers' / 'gpt2.tiktoken'} for the offline GPT-2 tokenizer")
    return shared_data


@pytest.fixture
def data_cfg(tmp_path):
    """A DataConfig factory writing under tmp_path, with an empty mirror unless one is given."""
    from optbench.config.schema import DataConfig

    def make(**overrides) -> DataConfig:
        options = {"root": str(tmp_path / "prepared"), "mirror": str(tmp_path / "empty-mirror"),
                   "num_proc": 1, **overrides}
        return DataConfig(**options)
    return make


@pytest.fixture
def hf_tokenizer_json():
    """Writes a word-level tokenizer.json: <unk>=0, </s>=1 (its end of text), hello world the cat, w6.."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    def write(path, vocab_size=8):
        vocab = {"<unk>": 0, "</s>": 1, "hello": 2, "world": 3, "the": 4, "cat": 5}
        vocab.update({f"w{i}": i for i in range(len(vocab), vocab_size)})
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.save(str(path))
        return path
    return write


TEXT = "".join(f"{i} the quick brown fox jumps over the lazy dog; pack my box with five dozen jugs.\n"
               for i in range(300))


def write_corpus(folder: Path) -> Path:
    path = folder / "corpus.txt"
    path.write_text(TEXT)
    return path


def tiny_run(folder: Path, corpus: Path) -> list[str]:
    """A 2-layer GPT on the corpus, evaluated and checkpointed along the way, written under `folder`."""
    return [f"data.source={corpus}", f"data.root={folder / 'prepared'}", "data.num_proc=1",
            "model.n_layer=2", "model.n_head=2", "model.n_embd=32",
            "train.steps=30", "train.batch_size=4", "train.seq_len=32", "train.device=cpu",
            "schedule.warmup_steps=5", "eval.every=10", "eval.batches=2", "eval.sample_tokens=16",
            "run.log_every=5", "run.progress=false", f"run.dir={folder / 'run'}"]


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path)


@pytest.fixture
def tiny_overrides(tmp_path, corpus):
    """A 2-layer GPT on the corpus, evaluated and checkpointed along the way."""
    return tiny_run(tmp_path, corpus)


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path):
    """Runs `optbench ARGS...` in this process (from tmp_path), as the console script would: the exit code
    (argparse's SystemExit included) and what it printed. Only a smoke test or two start a real process."""
    from optbench.cli import main

    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        out, err = capsys.readouterr()
        return CliResult(code, out, err)
    return run
