"""Sharded checkpoints in one process (optbench/training/sharded_checkpoint.py, sharded_state.py): what a folder holds,
its manifest, damage and half-written saves, retention, and the conversion to one file. DCP writes and reads them
without a process group, and FSDP2 runs on a world of one gloo process; the runs with real ranks are in
tests/reliability/test_sharded_resume.py."""

from __future__ import annotations

import datetime
import hashlib
import json
import subprocess

import pytest
import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from optbench import models, optim
from optbench.config.compose import compose
from optbench.training import checkpoint, distributed, fsdp_optimizer, sharded_checkpoint, sharded_state
from optbench.training.checkpoint import CheckpointStore
from tests.reliability.fsdp_steps import distribute_like, same

VOCAB, SEQ = 40, 8


def llama() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build(compose(["model=llama-debug", "model.n_embd=16"]).model, VOCAB, SEQ)


def stepped(model: torch.nn.Module, opt: torch.optim.Optimizer) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """Two steps on random gradients (sharded where the parameters are)."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        for p in model.parameters():
            p.grad = distribute_like(torch.randn(p.shape, generator=generator), p)
        opt.step()
    return model, opt


def trained() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A tiny Llama and Muon (a hybrid with AdamW) after two steps."""
    model = llama()
    return stepped(model, optim.build(optim.make_config("muon"), model))


@pytest.fixture(scope="module")
def run() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """One trained model and optimizer for the module's checkpoints, which only read them."""
    return trained()


def payload(step: int) -> dict:
    return {"step": step, "tokens": step * 64, "rng": [{"torch": torch.get_rng_state()}],
            "extra": {"time_s": 1.5, "telemetry": {"spikes": [0.25, 1.0]}}}


def save(store: CheckpointStore, step: int, run: tuple[torch.nn.Module, torch.optim.Optimizer]):
    return store.save_sharded(step, *sharded_state.contents(*run, payload(step)))


@pytest.fixture
def store(tmp_path) -> CheckpointStore:
    return CheckpointStore(tmp_path / "checkpoints")


def test_read_whole_it_is_what_one_process_saves_in_one_file(store, run):
    model, opt = run
    evaluated = {k: v + 1 for k, v in model.state_dict().items()}  # Schedule-Free's weights at its eval point
    saved = {**payload(10), "extra": {**payload(10)["extra"], "eval_model": evaluated}}
    path = store.save_sharded(10, *sharded_state.contents(model, opt, saved))
    found, whole = store.latest()
    assert found == path == store.sharded_path(10)
    assert same(whole["model"], model.state_dict()) and same(whole["optimizer"], opt.state_dict())
    assert same({k: whole[k] for k in ("step", "tokens", "rng", "extra")}, saved)
    assert sorted(whole) == ["extra", "model", "optimizer", "rng", "step", "tokens"]
    assert "eval_model" not in torch.load(path / "run.pt", weights_only=True)["extra"]  # in the shards


def test_its_manifest_holds_the_sha256_of_every_file(store, run):
    path = save(store, 10, run)
    manifest = json.loads((path / "manifest.json").read_text())
    files = sorted(p.name for p in path.iterdir() if p.name != "manifest.json")
    assert files == [".metadata", "__0_0.distcp", "run.pt"]
    assert manifest == {"format": "optbench-dcp", "version": 1, "step": 10, "world_size": 1,
                        "files": {name: hashlib.sha256((path / name).read_bytes()).hexdigest() for name in files}}
    run_state = torch.load(path / "run.pt", weights_only=True)
    assert run_state["step"] == 10 and sorted(run_state["param_names"]) == ["backup", "matrix"]


@pytest.mark.parametrize(("name", "damage"), [("__0_0.distcp", "bit-flipped"), ("__0_0.distcp", "deleted"),
                                              (".metadata", "truncated"), ("run.pt", "bit-flipped"),
                                              ("manifest.json", "truncated")])
def test_a_damaged_file_falls_back_to_the_previous_checkpoint(store, run, name, damage):
    save(store, 10, run)
    file = save(store, 20, run) / name
    data = file.read_bytes()
    if damage == "deleted":
        file.unlink()
    else:
        flipped = data[:-7] + bytes([data[-7] ^ 4]) + data[-6:]
        file.write_bytes(data[: len(data) // 2] if damage == "truncated" else flipped)
    with pytest.warns(UserWarning, match=r"checkpoint .*step-00000020 is unusable \(") as warned:
        path, whole = store.latest()
    assert path == store.sharded_path(10) and whole["step"] == 10
    reason = str(warned[0].message)
    if name == "manifest.json":
        assert "manifest.json" in reason
    else:
        assert (f"{name}, listed in manifest.json, is missing" if damage == "deleted"
                else f"checksum mismatch in {name} (truncated or altered)") in reason


def test_a_save_killed_half_way_is_never_used_and_cleared_by_the_next(store, run, monkeypatch):
    save(store, 10, run)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # every rank has written its shards; the manifest and the rename never came

    monkeypatch.setattr(sharded_checkpoint, "_move_into_place", killed)
    with pytest.raises(KeyboardInterrupt):
        save(store, 20, run)
    monkeypatch.undo()
    assert (store.folder / ".step-00000020.partial" / "manifest.json").is_file()
    assert store.steps() == [10] and store.latest()[0] == store.sharded_path(10)
    save(store, 30, run)
    assert sorted(p.name for p in store.folder.iterdir()) == ["step-00000010", "step-00000030"]


def test_a_folder_without_a_manifest_or_of_another_format_is_skipped(tmp_path, run):
    store = CheckpointStore(tmp_path, keep_last=3)
    save(store, 10, run)
    (save(store, 20, run) / "manifest.json").unlink()
    manifest_30 = save(store, 30, run) / "manifest.json"
    manifest_30.write_text(json.dumps({**json.loads(manifest_30.read_text()), "version": 2}))
    with pytest.warns(UserWarning) as warned:
        assert store.latest()[0] == store.sharded_path(10)
    assert [str(w.message).split(" is unusable ")[1] for w in warned] == [
        "(manifest.json names format ('optbench-dcp', 2); this optbench reads ('optbench-dcp', 1)); trying the "
        "previous one",
        "(no manifest.json in it (a save that never finished, or not an optbench checkpoint)); trying the previous one"]


def test_a_pickled_object_among_the_values_is_never_loaded(store, run):
    save(store, 10, run)
    tensors, run_state = sharded_state.contents(*run, payload(20))
    tensors["extra_value"] = datetime.timedelta(seconds=1)  # DCP pickles it; weights_only allows no such class
    store.save_sharded(20, tensors, run_state)
    with pytest.warns(UserWarning, match="step-00000020 is unusable .holds objects other than tensors and plain"):
        assert store.latest()[1]["step"] == 10


def test_retention_keeps_the_last_k_and_every_nth_folders_and_files(tmp_path, run):
    store = CheckpointStore(tmp_path, keep_last=2, keep_every=10)
    for step in range(5, 35, 5):
        if step == 15:
            store.save(step, {"step": step})  # a run continued in one process writes files among the folders
        else:
            save(store, step, run)
    assert store.steps() == [10, 20, 25, 30]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"step-{s:08d}" for s in (10, 20, 25, 30)]


def test_a_step_saved_again_replaces_its_folder(store):
    model, opt = trained()
    save(store, 10, (model, opt))
    with torch.no_grad():
        model.norm.weight.add_(1.0)
    save(store, 10, (model, opt))
    assert torch.equal(store.latest()[1]["model"]["norm.weight"], model.norm.weight)
    assert sorted(p.name for p in store.folder.iterdir()) == ["step-00000010"]


@pytest.fixture
def world_of_one(tmp_path):
    """A gloo process group of this process alone, so FSDP2 and DTensors run here; left after the test."""
    if dist.is_initialized():
        pytest.skip("a process group is already joined")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    yield distributed.World(rank=0, size=1)
    dist.destroy_process_group()


def fsdp(name: str) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The tiny Llama under FSDP2 (as distributed.replicate shards it, here over one rank) and its optimizer."""
    model = llama()
    for block in model.blocks():
        fully_shard(block)
    fully_shard(model)
    cfg = optim.make_config(name)
    return model, fsdp_optimizer.build(cfg, model, optim.plan(cfg, model))


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_fsdp2_state_saves_and_loads_in_place(name, store, world_of_one):
    model, opt = stepped(*fsdp(name))
    saved = save(store, 10, (model, opt))
    assert (saved / ".metadata").is_file()
    fresh, fresh_opt = fsdp(name)
    sharded_state.load_in_place(sharded_checkpoint.open_checkpoint(saved), fresh, fresh_opt)
    assert all(torch.equal(p.full_tensor(), q.full_tensor()) for p, q in zip(model.parameters(), fresh.parameters()))
    assert same(opt.state_dict(), fresh_opt.state_dict())


def test_a_sharded_parameters_state_that_is_not_elementwise_is_refused(store, world_of_one):
    model, opt = fsdp("adamw")
    param = model.layers[0].attn.q_proj.weight
    opt.inner.state[param] = {"row_norms": torch.ones(param.shape[0])}  # a rank's rows would be a view of a whole
    with pytest.raises(RuntimeError, match="state 'row_norms' of layers.0.attn.q_proj.weight is neither sharded"):
        sharded_state.contents(model, opt, payload(10))


def test_convert_writes_the_single_file_checkpoint_beside_it(tmp_path, cli, run):
    store = CheckpointStore(tmp_path / "run" / "checkpoints")
    save(store, 10, run)
    save(store, 20, run)
    done = cli("checkpoint", "convert", str(tmp_path / "run"))
    out = store.path(20)
    assert done.returncode == 0 and done.stdout == (f"converted step 20 (world size 1) from "
                                                    f"{store.sharded_path(20)} to {out} and {out.name}.sha256\n")
    assert same(torch.load(out, weights_only=True), sharded_state.whole_payload(
        sharded_checkpoint.open_checkpoint(store.sharded_path(20))))
    verified = subprocess.run(["sha256sum", "-c", checkpoint.digest_path(out).name], cwd=out.parent,
                              capture_output=True, text=True, check=False)
    assert verified.stdout == f"{out.name}: OK\n"
    again = cli("checkpoint", "convert", str(store.sharded_path(10)), "--out", str(tmp_path / "elsewhere" / "a.pt"))
    assert again.returncode == 0 and checkpoint.load(tmp_path / "elsewhere" / "a.pt")["step"] == 10


@pytest.mark.parametrize("case", ["not a checkpoint", "files only", "all damaged", "out is a folder"])
def test_convert_refuses_in_one_line_and_writes_nothing(tmp_path, cli, run, case):
    store = CheckpointStore(tmp_path / "run" / "checkpoints")
    source, extra = tmp_path / "run", []
    if case == "not a checkpoint":
        source.mkdir()
        expected = f"{source} is neither a sharded checkpoint (a folder checkpoints/step-N/) nor a run directory"
    elif case == "files only":
        store.save(10, {"step": 10})
        expected = f"{source} holds no usable sharded checkpoint (its checkpoints are single files)"
    elif case == "all damaged":
        (save(store, 10, run) / "run.pt").write_bytes(b"")
        expected = f"{source} holds no usable sharded checkpoint (step-00000010: checksum mismatch in run.pt"
    else:
        save(store, 10, run)
        (tmp_path / "out").mkdir()
        extra = ["--out", str(tmp_path / "out")]
        expected = f"--out {tmp_path / 'out'} is a folder; give the file to write"
    before = sorted(p for p in tmp_path.rglob("*"))
    done = cli("checkpoint", "convert", str(source), *extra)
    assert done.returncode == 2 and done.stderr.startswith(f"optbench: error: {expected}")
    assert done.stderr.count("\n") == 1 and sorted(p for p in tmp_path.rglob("*")) == before
