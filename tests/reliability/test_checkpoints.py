"""Checkpoint files verify themselves; a damaged latest one falls back to the previous good one; a run
directory is only resumed under its own config; loading never runs pickled code."""

import hashlib
import io
import subprocess

import pytest
import torch

import optbench
from optbench.errors import UserError
from optbench.training import checkpoint
from optbench.training.checkpoint import CheckpointStore, CorruptCheckpoint
from tests.train.resume import assert_interrupted_run_resumes_exactly, strip_timing


def payload(step: int) -> dict:
    return {"step": step, "weights": torch.arange(1000, dtype=torch.float32) * step}


def test_a_checkpoint_round_trips_and_detects_damage(tmp_path):
    store = CheckpointStore(tmp_path)
    path = store.save(7, payload(7))
    assert torch.equal(checkpoint.load(path)["weights"], payload(7)["weights"])
    data = path.read_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    for damaged in (data[: len(data) // 2], bytes(flipped)):
        path.write_bytes(damaged)
        with pytest.raises(CorruptCheckpoint, match="checksum mismatch"):
            checkpoint.load(path)
    path.write_bytes(data)
    checkpoint.digest_path(path).unlink()
    with pytest.raises(CorruptCheckpoint, match="no checksum file step-00000007.pt.sha256"):
        checkpoint.load(path)


def test_a_checkpoint_is_a_plain_torch_file_with_a_sha256sum_beside_it(tmp_path):
    path = CheckpointStore(tmp_path).save(7, payload(7))
    assert torch.equal(torch.load(path, weights_only=True)["weights"], payload(7)["weights"])
    assert checkpoint.digest_path(path).read_text() == f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n"
    verified = subprocess.run(["sha256sum", "-c", checkpoint.digest_path(path).name], cwd=tmp_path,
                              capture_output=True, text=True, check=False)
    assert verified.returncode == 0 and verified.stdout == f"{path.name}: OK\n"


def test_a_checkpoint_of_the_first_format_still_loads(tmp_path):
    """optbench's first format: a header line with the payload's digest in front of the torch.save payload."""
    buffer = io.BytesIO()
    torch.save(payload(3), buffer)
    body = buffer.getvalue()
    path = tmp_path / "step-00000003.pt"
    path.write_bytes(b"optbench-checkpoint v1 sha256=" + hashlib.sha256(body).hexdigest().encode() + b"\n" + body)
    assert torch.equal(checkpoint.load(path)["weights"], payload(3)["weights"])
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CorruptCheckpoint, match="checksum mismatch"):
        checkpoint.load(path)


def test_a_save_killed_before_its_checksum_file_falls_back_to_the_previous_one(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path)
    store.save(10, payload(10))

    def killed(path, data):
        raise KeyboardInterrupt  # the payload was renamed into place, the checksum file never written

    monkeypatch.setattr(checkpoint, "write_atomic", killed)
    with pytest.raises(KeyboardInterrupt):
        store.save(20, payload(20))
    monkeypatch.undo()
    assert store.path(20).exists() and not checkpoint.digest_path(store.path(20)).exists()
    with pytest.warns(UserWarning, match="step-00000020.pt is unusable"):
        path, state = store.latest()
    assert path == store.path(10) and state["step"] == 10


def test_retention_keeps_the_last_k_and_every_nth(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=2, keep_every=10)
    for step in range(5, 35, 5):
        store.save(step, payload(step))
    assert store.steps() == [10, 20, 25, 30]
    assert sorted(p.name for p in tmp_path.glob("*.sha256")) == [f"step-{s:08d}.pt.sha256" for s in (10, 20, 25, 30)]
    (tmp_path / ".step-00000035.pt.abc.tmp").write_bytes(b"a write killed half-way")
    assert store.steps() == [10, 20, 25, 30]


@pytest.mark.parametrize("damage", ["truncated", "bit-flipped"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(damage, tmp_path):
    store = CheckpointStore(tmp_path)
    store.save(10, payload(10))
    latest = store.save(20, payload(20))
    data = latest.read_bytes()
    latest.write_bytes(data[:-100] if damage == "truncated" else data[:-50] + bytes([data[-50] ^ 1]) + data[-49:])
    with pytest.warns(UserWarning, match="step-00000020.pt is unusable"):
        path, state = store.latest()
    assert path == store.path(10) and state["step"] == 10


def test_a_pickled_object_is_never_loaded(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save(10, payload(10))
    store.save(20, {"step": 20, "evil": torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)})
    with pytest.warns(UserWarning, match="step-00000020.pt is unusable"):
        assert store.latest()[1]["step"] == 10


@pytest.mark.parametrize("damage", ["truncated", "bit-flipped"])
def test_a_run_resumes_exactly_from_the_checkpoint_before_a_damaged_one(damage, tmp_path, tiny_overrides,
                                                                         monkeypatch):
    overrides = [*tiny_overrides, "run.ckpt_every=5"]
    real_latest = CheckpointStore.latest

    def damage_newest_then_read(self, map_location="cpu", whole=True):
        if not self.steps():
            return real_latest(self, map_location, whole)
        newest = self.path(self.steps()[-1])
        data = newest.read_bytes()
        newest.write_bytes(data[: len(data) // 3] if damage == "truncated" else data[:-9] + b"\x00" + data[-8:])
        return real_latest(self, map_location, whole)

    # The run is stopped at step 21 (checkpoints 20 and 21 kept); on resume, 21 is damaged first.
    with monkeypatch.context() as patch:
        patch.setattr(CheckpointStore, "latest", damage_newest_then_read)
        with pytest.warns(UserWarning, match="step-00000021.pt is unusable"):
            assert_interrupted_run_resumes_exactly(tmp_path, overrides, monkeypatch)


def test_resuming_under_a_different_config_is_refused(tmp_path, tiny_overrides, monkeypatch):
    overrides = [*tiny_overrides, "run.ckpt_every=5"]
    assert_interrupted_run_resumes_exactly(tmp_path, overrides, monkeypatch)  # leaves tmp_path/run completed
    run = tmp_path / "run"
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match=r"different config \(optim.lr: 0.001 in the run, 0.002 now\)"):
        optbench.train([*overrides, "optim.lr=2e-3"])
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before, "a refused resume changed the run"
    # Run-control keys may change: a completed run is simply reported again.
    again = optbench.train([*overrides, "run.log_every=3", "train.threads=1"])
    assert again["status"] == "completed"
    assert strip_timing(run) == strip_timing(tmp_path / "straight")
