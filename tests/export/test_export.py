"""`optbench export`: trained GPT-2 and Llama runs load in transformers and give optbench's logits to 1e-5 (float32),
the GPT-2 tokenizer files encode as the run's tokenizer does, and what cannot be exported exactly is refused
with one line and exit 2, leaving nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import optbench
from optbench import data as datalib
from optbench import models
from optbench.config.compose import compose, load_yaml, to_yaml
from optbench.data.tokenizers import make_tokenizer
from optbench.export import gpt2, llama
from optbench.export.run import export_run, write_folder
from optbench.export.tokenizer import tokenizer_files
from optbench.training import checkpoint
from optbench.training.averaging import WeightAverage
from tests.conftest import SHARED_DATA, TEXT, tiny_run, write_corpus
from tests.required import missing

# One xdist worker takes the whole file, so the two trained runs (module fixtures) are made once, not per worker.
pytestmark = pytest.mark.xdist_group("export")

ATOL = 1e-5
TEXTS = [TEXT[:500], "Héllo wörld — ✓ 日本語, naïve café!\n\n\tTabs  and   spaces   ", "it's 12345 they're 3.14 <b>x</b>"]


def transformers():
    try:
        import transformers as library
    except ImportError:
        missing("transformers is not installed (it is in the test extras: pip install -e '.[test]')")
    return library


def train_tiny(folder: Path, *extra: str) -> Path:
    """tests/conftest.py's tiny run, cut to 4 steps with one evaluation, with `extra` overrides replacing its own."""
    extra = ("train.steps=4", "eval.every=0", "eval.batches=1", "eval.sample_tokens=0", "train.threads=1", *extra)
    keys = {item.partition("=")[0] for item in extra}
    base = [item for item in tiny_run(folder, write_corpus(folder)) if item.partition("=")[0] not in keys]
    optbench.train([*base, *extra])
    return folder / "run"


@pytest.fixture(scope="module")
def gpt2_run(tmp_path_factory) -> Path:
    """A GPT-2 (biases, tied head) on GPT-2 BPE, the ranks read from the mirror."""
    if not (SHARED_DATA / "tokenizers" / "gpt2.tiktoken").is_file():
        missing(f"no {SHARED_DATA / 'tokenizers' / 'gpt2.tiktoken'} for the offline GPT-2 tokenizer")
    return train_tiny(tmp_path_factory.mktemp("gpt2"), "data.tokenizer=gpt2", f"data.mirror={SHARED_DATA}")


@pytest.fixture(scope="module")
def gpt2_export(gpt2_run) -> Path:
    out = gpt2_run.parent / "hf"
    export_run([f"run.dir={gpt2_run}", f"out={out}"])
    return out


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory) -> Path:
    """A Llama with grouped key/value heads, an untied head, its own rope theta and norm eps, and an EMA, on
    characters."""
    return train_tiny(tmp_path_factory.mktemp("llama"), "model=llama", "model.n_head=4", "model.n_kv_head=2",
                      "model.tie_embeddings=false", "model.rope_theta=5000", "model.norm_eps=1e-6",
                      "train.weight_avg=ema", "train.weight_avg_decay=0.5")


def optbench_model(run_dir: Path, averaged: bool = False) -> torch.nn.Module:
    """The run's model from its newest checkpoint (or its weight average), in eval mode."""
    cfg = load_yaml(run_dir / "config.yaml")
    model = models.build(cfg.model, datalib.load(cfg.data, progress=False).vocab_size, cfg.train.seq_len)
    state = checkpoint.CheckpointStore(run_dir / "checkpoints").latest()[1]
    model.load_state_dict(state["model"])
    if averaged:
        average = WeightAverage(model, cfg.train)
        average.load_state_dict(state["extra"]["averaged_model"])
        model = average.module
    return model.eval()


def hf_model(out: Path) -> torch.nn.Module:
    """The exported folder through AutoModelForCausalLM, which must find every weight it needs and no others."""
    model, info = transformers().AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info.get(key) for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert next(model.parameters()).dtype == torch.float32
    return model.eval()


@torch.no_grad()
def max_logit_diff(ours: torch.nn.Module, theirs: torch.nn.Module, vocab: int, seq_len: int) -> float:
    """max |logit difference| on a batch of random ids over the whole context (every position's rotation)."""
    batch = torch.randint(0, vocab, (3, seq_len), generator=torch.Generator().manual_seed(0))
    return (ours(batch) - theirs(batch).logits).abs().max().item()


def test_gpt2_export_gives_optbench_logits(gpt2_run, gpt2_export):
    ours, theirs = optbench_model(gpt2_run), hf_model(gpt2_export)
    assert type(theirs).__name__ == "GPT2LMHeadModel"
    assert theirs.lm_head.weight.data_ptr() == theirs.transformer.wte.weight.data_ptr()  # still tied
    assert max_logit_diff(ours, theirs, 50257, ours.seq_len) < ATOL


def test_gpt2_tokenizer_files_encode_like_the_runs_tokenizer(gpt2_run, gpt2_export):
    ours = datalib.load(load_yaml(gpt2_run / "config.yaml").data, progress=False).tokenizer()
    theirs = transformers().AutoTokenizer.from_pretrained(gpt2_export)
    assert len((gpt2_export / "merges.txt").read_text().splitlines()) == 1 + 50000  # GPT-2's merges
    assert len(theirs) == ours.vocab_size and theirs.eos_token_id == ours.eot
    for text in TEXTS:
        ids = ours.encode(text)
        assert theirs.encode(text, add_special_tokens=False) == ids
        assert theirs.decode(ids) == text


def test_llama_export_through_the_cli(llama_run, cli, tmp_path):
    out = tmp_path / "hf"
    result = cli("export", f"run.dir={llama_run}", f"out={out}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1 and "step 4 as LlamaForCausalLM" in result.stdout
    assert "no transformers tokenizer for a char vocabulary" in result.stdout
    ours, theirs = optbench_model(llama_run), hf_model(out)
    assert theirs.config.num_key_value_heads == 2 and not theirs.config.tie_word_embeddings
    assert max_logit_diff(ours, theirs, ours.tok_embeddings.num_embeddings, ours.seq_len) < ATOL
    vocab = json.loads((out / "optbench_tokenizer.json").read_text())["vocab"]
    chars = datalib.load(load_yaml(llama_run / "config.yaml").data, progress=False).tokenizer().chars
    assert "".join(vocab) == chars


def test_weights_averaged_exports_the_runs_weight_average(llama_run, tmp_path):
    out = tmp_path / "hf"
    export_run([f"run.dir={llama_run}", f"out={out}", "weights=averaged"])
    averaged, theirs = optbench_model(llama_run, averaged=True), hf_model(out)
    vocab, seq_len = averaged.tok_embeddings.num_embeddings, averaged.seq_len
    assert max_logit_diff(averaged, theirs, vocab, seq_len) < ATOL
    assert max_logit_diff(optbench_model(llama_run), theirs, vocab, seq_len) > 1e-3  # the flag chose other weights


@pytest.mark.parametrize("family, overrides", [
    (gpt2, ["model=gpt2", "model.bias=false"]),
    (llama, ["model=llama", "model.n_kv_head=1", "model.tie_embeddings=true"]),
], ids=["gpt2-no-bias", "llama-mqa-tied"])
def test_the_other_layouts_map_exactly(family, overrides, tmp_path):
    """No biases (zeros in HF's GPT-2), multi-query attention and a tied Llama head, from a fresh init."""
    # init_std 0.3: attention far from uniform, so a wrong q/k layout shows in the logits as it would after training
    cfg = compose([*overrides, "model.n_layer=2", "model.n_head=4", "model.n_embd=32", "model.init_std=0.3"]).model
    torch.manual_seed(0)
    ours = models.build(cfg, 61, 16).eval()
    state = ours.state_dict()
    embedding = state[family.EMBEDDING]
    write_folder(tmp_path / "hf", family.hf_config(cfg, embedding.shape[0], 16, None, "float32"),
                 family.hf_weights(cfg, state), {})
    assert max_logit_diff(ours, hf_model(tmp_path / "hf"), 61, 16) < ATOL


def test_an_hf_tokenizer_is_exported_as_its_tokenizer_json(tmp_path, hf_tokenizer_json):
    ours = make_tokenizer(f"hf:{hf_tokenizer_json(tmp_path / 'tokenizer.json')}")
    files, note = tokenizer_files(ours, 16)
    (tmp_path / "hf").mkdir()
    for name, text in files.items():
        (tmp_path / "hf" / name).write_text(text)
    theirs = transformers().AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert note == "the run's tokenizer.json" and theirs.eos_token_id == ours.eot == 1
    assert theirs.encode("hello the cat world", add_special_tokens=False) == ours.encode("hello the cat world")


def write_run_config(folder: Path, *overrides: str) -> Path:
    """A run directory holding only config.yaml: every refusal below comes before a checkpoint is read."""
    (folder / "run").mkdir()
    (folder / "run" / "config.yaml").write_text(to_yaml(compose(list(overrides))))
    return folder / "run"


def assert_refused(result, needle: str, tmp_path: Path, out: Path) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert needle in result.stderr
    assert not out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("overrides, needle", [
    (["model=moe-debug"], "no exact transformers class for moe;"),
    (["model=gla-debug"], "no exact transformers class for gla;"),
    (["model=gated-deltanet-debug"], "no exact transformers class for gated-deltanet;"),
    (["model=gpt2-pom-debug"], "no exact transformers class for gpt2 with model.mixer=pom"),
    (["model=llama", "model.qk_norm=true"], "no exact transformers class for llama with model.qk_norm=true"),
])
def test_a_family_without_an_exact_transformers_class_is_refused(tmp_path, cli, overrides, needle):
    run_dir = write_run_config(tmp_path, *overrides)
    out = tmp_path / "hf"
    assert_refused(cli("export", f"run.dir={run_dir}", f"out={out}"), needle, tmp_path, out)


@pytest.mark.parametrize("args, needle", [
    (["run.dir=/no/such/run", "out=OUT"], "run.dir=/no/such/run has no config.yaml"),
    (["run.dir=RUN"], "optbench export needs out=DIR"),
    (["run.dir=RUN", "out=OUT", "weights=ema"], "unknown weights 'ema'; valid: averaged, model"),
    (["run.dir=RUN", "out=OUT", "outt=x"], "valid keys: run.dir, out, weights"),
    (["run.dir=RUN", "out=OUT"], "has no usable checkpoint"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, cli, args, needle):
    run_dir, out = write_run_config(tmp_path, "model=llama"), tmp_path / "hf"
    args = [arg.replace("RUN", str(run_dir)).replace("OUT", str(out)) for arg in args]
    assert_refused(cli("export", *args), needle, tmp_path, out)


def test_an_out_folder_with_files_is_refused(tmp_path, cli):
    run_dir, out = write_run_config(tmp_path, "model=llama"), tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = cli("export", f"run.dir={run_dir}", f"out={out}")
    assert result.returncode == 2 and "already exists and is not an empty folder" in result.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_weights_averaged_needs_a_run_with_an_average(gpt2_run, cli, tmp_path):
    out = tmp_path / "hf"
    result = cli("export", f"run.dir={gpt2_run}", f"out={out}", "weights=averaged")
    assert_refused(result, "kept no weight average", tmp_path, out)
