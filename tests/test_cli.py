"""The command line: bad input exits 2 with one line and leaves nothing behind; commands work.

In-process through the `cli` fixture, except one real `python -m optbench` smoke test of the entry point.
"""

import subprocess
import sys

import pytest


def optbench(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "optbench", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=240)


@pytest.mark.parametrize("args, needle", [
    (["train", "train.stpes=3"], "unknown key 'train.stpes'; valid: train.steps"),
    (["train", "model=lama"], "unknown model 'lama'; valid: llama"),
    (["train", "train.steps=abc"], "invalid value for train.steps"),
    (["train", "data=wikitext2"], "unknown data 'wikitext2'; valid: wikitext-2"),
    (["train", "data.source=/no/such/file.txt"], "/no/such/file.txt"),
    (["trian"], "invalid choice: 'trian'"),
    (["data", "prepare", "tinystory"], "unknown data 'tinystory'; valid: tinystories"),
    (["sample", "run.dir=/no/such/run"], "run.dir=/no/such/run"),
])
def test_bad_input_is_one_line_exit_2_and_leaves_no_run_directory(tmp_path, cli, args, needle):
    extra = [f"run.dir={tmp_path / 'run'}", f"data.root={tmp_path / 'data'}"] if args[0] == "train" else []
    result = cli(*args, *extra)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert needle in result.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


@pytest.mark.xdist_group("processes")
def test_train_then_sample_in_real_processes(tmp_path, tiny_overrides):
    result = optbench("train", *tiny_overrides, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "completed: final val loss" in result.stdout and str(tmp_path / "run") in result.stdout
    sampled = optbench("sample", f"run.dir={tmp_path / 'run'}", "prompt=the quick", "max_new_tokens=20",
                       cwd=tmp_path)
    assert sampled.returncode == 0, sampled.stderr
    assert sampled.stdout.startswith("the quick") and len(sampled.stdout.rstrip("\n")) == len("the quick") + 20


def test_print_config_shows_the_resolved_config(tmp_path, cli):
    result = cli("train", "model=llama", "optim.lr=0.003", "--print-config")
    assert result.returncode == 0, result.stderr
    assert "name: llama" in result.stdout and "lr: 0.003" in result.stdout
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args, needle", [
    (["optim", "list"], "adamw"),
    (["model", "list"], "gpt2-124m"),
    (["data", "list"], "fineweb-edu"),
])
def test_list_commands(cli, args, needle):
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    assert needle in result.stdout


@pytest.mark.parametrize("prompt", ["ROMEO:", "a: b, [c]", "{x}", "null", "3", ""])
def test_a_sample_prompt_is_taken_as_typed(prompt):
    """README's `optbench sample run.dir=DIR prompt="ROMEO:"`: a prompt is text, never parsed as YAML."""
    from optbench.training.sample import parse_request

    assert parse_request(["run.dir=runs/x", f"prompt={prompt}"]).prompt == prompt
