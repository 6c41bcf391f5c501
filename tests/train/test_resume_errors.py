"""Every refusal of `resume.find`: a missing, damaged or wrong `run.resume=PATH`, and a run folder with no
usable checkpoint. Each is one line and exit code 2 from `optbench train`, before anything is written."""

from __future__ import annotations

import hashlib
import warnings

import pytest
import torch

from optbench.cli import main
from optbench.training import checkpoint, sharded_checkpoint
from optbench.training.checkpoint import CheckpointStore


def snapshot(root) -> dict:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def refused(capsys, tmp_path, overrides: list[str]) -> str:
    """Run `optbench train`; assert exit 2, one stderr line, no traceback, and tmp_path unchanged."""
    before = snapshot(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a damaged checkpoint in a run folder is warned about
        assert main(["train", *overrides]) == 2
    err = capsys.readouterr().err
    assert err.startswith("optbench: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert snapshot(tmp_path) == before, "a refused run wrote files"
    assert not (tmp_path / "prepared").exists()  # refused before the data was even prepared
    return err


def test_a_missing_checkpoint_file(tmp_path, tiny_overrides, capsys):
    err = refused(capsys, tmp_path, [*tiny_overrides, f"run.resume={tmp_path / 'nope.pt'}"])
    assert f"run.resume={tmp_path / 'nope.pt'}: no such checkpoint; valid: auto, never, PATH" in err
    assert not (tmp_path / "run").exists()


def test_a_folder_instead_of_a_checkpoint_file(tmp_path, tiny_overrides, capsys):
    CheckpointStore(tmp_path / "old" / "checkpoints").save(10, {"step": 10})
    err = refused(capsys, tmp_path, [*tiny_overrides, f"run.resume={tmp_path / 'old'}"])
    assert f"run.resume={tmp_path / 'old'} is a folder" in err
    assert f"run.dir={tmp_path / 'old'} run.resume=auto" in err


def test_a_damaged_sharded_checkpoint(tmp_path, tiny_overrides, capsys):
    folder = CheckpointStore(tmp_path / "old").sharded_path(10)
    sharded_checkpoint.save(folder, 10, {"model": {"w": torch.arange(100.0)}}, {"step": 10})
    shard = folder / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:-1])
    err = refused(capsys, tmp_path, [*tiny_overrides, f"run.resume={folder}"])
    assert f"run.resume={folder} is not a usable checkpoint: checksum mismatch in __0_0.distcp" in err


def test_another_number_of_ranks_with_dropout(tmp_path, tiny_overrides, capsys):
    """Each rank draws its dropout masks from its own random stream: a 2-rank checkpoint resumes on 2 ranks only."""
    saved = CheckpointStore(tmp_path / "old").save(10, {"step": 10, "rng": [{}, {}]})
    err = refused(capsys, tmp_path, [*tiny_overrides, "model.dropout=0.1", f"run.resume={saved}"])
    assert (f"model.dropout=0.1 draws each rank's masks from its own random stream, so {saved} (saved at world size "
            "2) resumes at world size 2 only, not 1; run it with torchrun --nproc_per_node=2") in err


def with_checksum(path, body: bytes) -> bytes:
    """`body` with a matching checksum file beside `path`: it passes the digest, so only reading it can fail."""
    checkpoint.digest_path(path).write_text(f"{hashlib.sha256(body).hexdigest()}  {path.name}\n")
    return body


def pickled_object(path) -> bytes:
    checkpoint.save(path, {"step": 1, "evil": torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)})
    return path.read_bytes()


DAMAGE = {
    "truncated": (lambda path, good: good[: len(good) // 2], "checksum mismatch (truncated or altered)"),
    "bit-flipped": (lambda path, good: good[:-20] + bytes([good[-20] ^ 1]) + good[-19:], "checksum mismatch"),
    "no-checksum-file": (lambda path, good: checkpoint.digest_path(path).unlink() or good,
                         f"no checksum file step-00000010.pt.sha256 beside it"),
    "pickled-object": (lambda path, good: pickled_object(path), "holds objects other than tensors"),
    "not-a-zip": (lambda path, good: with_checksum(path, b"PK\x03\x04 no archive here"), "PytorchStreamReader failed"),
    "empty-body": (lambda path, good: with_checksum(path, b""), "not a usable checkpoint: EOFError"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_checkpoint_file(tmp_path, tiny_overrides, capsys, damage):
    damage_fn, reason = DAMAGE[damage]
    path = CheckpointStore(tmp_path / "old").save(10, {"step": 10, "w": torch.arange(100.0)})
    path.write_bytes(damage_fn(path, path.read_bytes()))
    err = refused(capsys, tmp_path, [*tiny_overrides, f"run.resume={path}"])
    assert f"run.resume={path} is not a usable checkpoint: " in err and reason in err
    assert not (tmp_path / "run").exists()


def fake_run(run) -> CheckpointStore:
    """A run folder as a killed run leaves it: config, metrics, summary and two checkpoints."""
    run.mkdir()
    (run / "config.yaml").write_text("model:\n  name: gpt2\n")
    (run / "metrics.jsonl").write_text('{"step": 10, "loss": 3.0}\n')
    (run / "summary.json").write_text('{"status": "running"}')
    store = CheckpointStore(run / "checkpoints")
    for step in (10, 20):
        store.save(step, {"step": step, "w": torch.arange(100.0)})
    return store


def test_a_run_folder_whose_checkpoints_are_all_damaged(tmp_path, tiny_overrides, capsys):
    store = fake_run(tmp_path / "run")
    for step in store.steps():
        store.path(step).write_bytes(store.path(step).read_bytes()[:-10])
    with pytest.warns(UserWarning) as warned:
        assert main(["train", *tiny_overrides]) == 2
    assert [str(w.message).split(" is unusable")[0] for w in warned] == [
        f"checkpoint {store.path(20)}", f"checkpoint {store.path(10)}"]  # newest first, each tried
    capsys.readouterr()
    err = refused(capsys, tmp_path, tiny_overrides)  # and again, checking nothing was written
    assert (f"run.dir={tmp_path / 'run'} already holds a run without a usable checkpoint to resume; "
            "choose another run.dir") in err


def test_a_run_folder_without_checkpoints(tmp_path, tiny_overrides, capsys):
    store = fake_run(tmp_path / "run")
    for step in store.steps():
        store.path(step).unlink()
    err = refused(capsys, tmp_path, tiny_overrides)
    assert "already holds a run without a usable checkpoint to resume" in err


def test_resume_never_into_a_run_folder(tmp_path, tiny_overrides, capsys):
    fake_run(tmp_path / "run")  # its checkpoints are fine: never means do not use them
    err = refused(capsys, tmp_path, [*tiny_overrides, "run.resume=never"])
    assert (f"run.dir={tmp_path / 'run'} already holds a run, and run.resume=never starts one only in an empty "
            "folder; choose another run.dir, or run.resume=auto to continue it") in err
