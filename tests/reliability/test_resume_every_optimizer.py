"""Every registered optimizer, through the real trainer: a run that crashes mid-way and is started again
ends bit-identical to one that never stopped (the SIGKILL tests do this with real processes for five)."""

import pytest
import torch

import optbench
from optbench import optim
from optbench.optim.algorithms import mulo, velo
from optbench.training.checkpoint import CheckpointStore
from optbench.training.trainer import Trainer
from tests.train.resume import strip_timing

LEARNED = {"velo": velo.write_random_weights, "mulo": mulo.write_random_weights}
EXTRA = {"sophiag": ["optim.hessian_every=2"], "psgd-kron": ["optim.lr=1e-3"]}


class Crash(Exception):
    pass


@pytest.mark.parametrize("name", optim.names())
def test_crash_then_rerun_matches_an_uninterrupted_run(name, tmp_path, tiny_overrides, monkeypatch):
    overrides = [*tiny_overrides, f"optim={name}", *EXTRA.get(name, []), "train.steps=9", "run.ckpt_every=2",
                 "run.log_every=1", "eval.every=0", "eval.sample_tokens=0", "model.n_layer=1"]
    if name in LEARNED:
        overrides.append(f"optim.weights={LEARNED[name](tmp_path / 'weights')}")
    optbench.train([*overrides, f"run.dir={tmp_path / 'straight'}"])

    real_update = Trainer._apply_update

    def crash_in_step_7(self):
        if self.step == 6:
            raise Crash
        real_update(self)

    monkeypatch.setattr(Trainer, "_apply_update", crash_in_step_7)
    with pytest.raises(Crash):
        optbench.train([*overrides, f"run.dir={tmp_path / 'run'}"])
    monkeypatch.setattr(Trainer, "_apply_update", real_update)
    assert optbench.train([*overrides, f"run.dir={tmp_path / 'run'}"])["status"] == "completed"

    assert strip_timing(tmp_path / "run") == strip_timing(tmp_path / "straight")
    final = [CheckpointStore(d / "checkpoints").latest()[1]["model"] for d in (tmp_path / "run", tmp_path / "straight")]
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[1]), f"{name}: parameters differ"
