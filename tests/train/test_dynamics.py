"""diag.every: the dynamics record of a diag step, its formulas against a hand computation, and that measuring
changes nothing about training (bit for bit) and survives a resume line for line."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import optbench
from optbench import data as datalib
from optbench import models
from optbench.config.compose import compose
from optbench.training.attention_probe import attention_stats
from optbench.training.checkpoint import CheckpointStore
from optbench.training.dynamics import KEYS, DynamicsTracker, group_rows, table
from optbench.training.rundir import read_json, read_metrics
from optbench.training.telemetry import Telemetry
from optbench.training.trainer import Trainer
from tests.train.resume import assert_interrupted_run_resumes_exactly

LR = 0.5


# ----------------------------------------------------------------------------- the formulas, by hand


def _flat(t: torch.Tensor) -> list[float]:
    return t.reshape(-1).tolist()


def _norm(xs: list[float]) -> float:
    return math.sqrt(sum(x * x for x in xs))


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b)) / (_norm(a) * _norm(b))


def _rows(update: torch.Tensor) -> list[float]:
    """Each row's RMS (a vector's entries are rows of one), in plain Python."""
    rows = update.tolist() if update.dim() > 1 else [[x] for x in update.tolist()]
    return [math.sqrt(sum(x * x for x in row) / len(row)) for row in rows]


def _expected(members: list[int], t: int, k: int, weights: dict, grads: dict) -> list[float]:
    """Every value of KEYS for the concatenation of tensors `members` at step t of plain SGD, where the update
    is -LR * g_t exactly: none of it reads the tracker's differences of weights."""
    def cat(source, step):
        return [x for i in members for x in _flat(source[step][i])]

    update, grad = [-LR * g for g in cat(grads, t)], cat(grads, t)
    rows = sorted(r for i in members for r in _rows(-LR * grads[t][i]))
    numel = len(grad)
    return [_norm(update) / math.sqrt(numel), _norm(update) / _norm(cat(weights, t - 1)),
            _cos(grad, cat(grads, t - 1)) if t - 1 in grads else math.nan,
            _cos(cat(weights, t), cat(weights, t - k)) if t - k in weights else math.nan,
            _norm(cat(weights, t)), _norm(grad), rows[0], rows[(len(rows) - 1) // 2], rows[-1]]


def _sgd_run(every: int, k: int, steps: int, start: int = 0):
    """Plain SGD (no momentum) on a float64 two-layer net, tracked from step `start` on: the tracker's
    measurements and the test's own record of every step's weights and gradients."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    params = list(model.parameters())  # 4x5 weight, 4 bias, 3x4 weight, 3 bias
    opt = torch.optim.SGD(params, lr=LR)
    tracker = DynamicsTracker(params, every, k)
    weights = {0: [p.detach().clone() for p in params]}
    grads, measured = {}, {}
    for t in range(1, steps + 1):
        x, y = torch.randn(8, 5, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        grads[t] = [p.grad.detach().clone() for p in params]
        if t > start:
            tracker.before_update(t)
        opt.step()
        weights[t] = [p.detach().clone() for p in params]
        if t > start and (m := tracker.after_update(t)) is not None:
            measured[t] = m
    return measured, weights, grads


# float64 weights: the tracker's W_t - W_{t-1} differs from -LR * g_t only by the rounding of W_{t-1} - LR * g_t,
# about 1e-16 of |W|; 1e-9 relative leaves room for |W| / |update| up to 1e6.
TOLERANCE = {"rel": 1e-9, "abs": 1e-12, "nan_ok": True}


@pytest.mark.parametrize(("every", "k"), [(3, 2), (3, 3), (1, 1)])
def test_each_value_matches_a_hand_computation_for_sgd(every, k):
    measured, weights, grads = _sgd_run(every, k, steps=6)
    assert sorted(measured) == list(range(every, 7, every))
    for t, m in measured.items():
        got = table(m.sums, m.rows).tolist()
        for i in range(4):
            assert got[i] == pytest.approx(_expected([i], t, k, weights, grads), **TOLERANCE), (t, i)
        # a role is its tensors as one vector: matrices (0, 2) and vectors (1, 3)
        members = [[0, 2], [1, 3]]
        roles = table(m.sums.grouped(torch.tensor([0, 1, 0, 1]), 2), group_rows(m.rows, members)).tolist()
        for g, group in enumerate(members):
            assert roles[g] == pytest.approx(_expected(group, t, k, weights, grads), **TOLERANCE), (t, group)
    first = table(measured[every].sums, measured[every].rows)[:, KEYS.index("update_cos")]
    assert first.isnan().all() == (every == 1)  # step 1 has no previous update


def test_a_tracker_started_inside_a_diag_window_leaves_its_angles_undefined():
    """As after a resume at step 5: step 6 needs W_4 (drift_k=2) and the update of step 5, neither seen."""
    measured, weights, grads = _sgd_run(every=3, k=2, steps=6, start=5)
    (m,) = measured.values()
    values = table(m.sums, m.rows)
    assert values[:, KEYS.index("update_cos")].isnan().all() and values[:, KEYS.index("drift_cos")].isnan().all()
    defined = [KEYS.index(key) for key in KEYS if key not in ("update_cos", "drift_cos")]
    for i in range(4):
        expected = _expected([i], 6, 2, weights, grads)
        assert values[i, defined].tolist() == pytest.approx([expected[j] for j in defined], **TOLERANCE)


# ----------------------------------------------------------------------------- a run's dynamics records

DIAG = ["diag.every=5", "diag.drift_k=2"]


def _dynamics(run_dir) -> list[dict]:
    return [r for r in read_metrics(run_dir) if r.get("kind") == "dynamics"]


def test_a_20_step_run_logs_per_tensor_role_and_layer_dynamics(tmp_path, tiny_overrides):
    overrides = [*tiny_overrides, "model=llama", "model.n_kv_head=1", "train.steps=20", "run.log_every=1", *DIAG]
    summary = optbench.train(overrides)
    run = tmp_path / "run"
    routing = json.loads((run / "routing.json").read_text())
    records = _dynamics(run)
    assert [r["step"] for r in records] == [5, 10, 15, 20]
    train = {r["step"]: r for r in read_metrics(run) if "loss" in r}
    for r in records:
        assert set(r["params"]) == {row["name"] for row in routing}
        assert set(r["roles"]) == {row["role"] for row in routing}
        values = [v for group in ("params", "roles") for entry in r[group].values() for v in entry.values()]
        assert all(set(entry) == set(KEYS) for entry in [*r["params"].values(), *r["roles"].values()])
        assert all(isinstance(v, float) and math.isfinite(v) for v in values), "a fresh run has every value"
        # roles combine their tensors' norms: sum of squares over the members
        for role, entry in r["roles"].items():
            members = [row for row in routing if row["role"] == role]
            numel = sum(math.prod(row["shape"]) for row in members)
            assert entry["update_rms"] ** 2 * numel == pytest.approx(
                sum(r["params"][m["name"]]["update_rms"] ** 2 * math.prod(m["shape"]) for m in members), rel=1e-9)
            assert entry["weight_norm"] == pytest.approx(
                _norm([r["params"][m["name"]]["weight_norm"] for m in members]), rel=1e-9)
        # every gradient norm is the one before clipping: together they make the train record's grad_norm
        total = _norm([entry["grad_norm"] for entry in r["roles"].values()])
        assert total == pytest.approx(train[r["step"]]["grad_norm"], rel=1e-5)  # float32 sums in another order
        assert [layer["layer"] for layer in r["layers"]] == [0, 1]
        for layer in r["layers"]:
            inside = [v["grad_norm"] for name, v in r["params"].items() if name.startswith(f"layers.{layer['layer']}.")]
            assert layer["grad_norm"] == pytest.approx(_norm(inside), rel=1e-9)
        assert [a["layer"] for a in r["attention"]] == [0, 1]
        assert all(math.isfinite(a["max_logit"]) and 0 < a["entropy"] < math.log(32) for a in r["attention"])
    assert summary["max_attn_logit"] == max(a["max_logit"] for r in records for a in r["attention"])
    # the probe is the first validation window, at the weights of the step
    cfg = compose(overrides)
    prepared = datalib.load(cfg.data, progress=False)
    model = models.build(cfg.model, prepared.vocab_size, cfg.train.seq_len)
    model.load_state_dict(CheckpointStore(run / "checkpoints").latest()[1]["model"])
    window = datalib.eval_batches(prepared.tokens("val"), cfg.train.seq_len, cfg.train.batch_size, 1)[0][0][:1]
    _, stats = attention_stats(model, window, torch.device("cpu"), torch.float32)
    assert [[a["max_logit"], a["entropy"]] for a in records[-1]["attention"]] == stats.tolist()
    assert read_json(run / "summary.json")["max_attn_logit"] == summary["max_attn_logit"]


def test_a_diag_step_moves_its_values_to_the_host_once(tmp_path, tiny_overrides, monkeypatch):
    """One .tolist() of everything per diag step: no .item() or float() per tensor (each a device sync)."""
    calls: dict[int, list[str]] = {}
    current: list[int] = []  # the step whose after_update is running, if any
    for method in ("item", "tolist", "__float__", "cpu"):
        def counted(self, *args, _real=getattr(torch.Tensor, method), _name=method, **kwargs):
            if current:
                calls[current[0]].append(_name)
            return _real(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, method, counted)
    real_after = Telemetry.after_update

    def after_update(self, step):
        calls[step] = []
        current.append(step)
        try:
            return real_after(self, step)
        finally:
            current.clear()
    monkeypatch.setattr(Telemetry, "after_update", after_update)
    optbench.train([*tiny_overrides, "train.steps=10", *DIAG])
    assert calls == {step: ["tolist"] if step in (5, 10) else [] for step in range(1, 11)}


def test_diag_steps_change_nothing_about_training(tmp_path, tiny_overrides):
    """With dropout the probe's forward would shift the random streams if it drew from them or ran in train
    mode; the snapshots must not touch the weights. Losses and final weights equal bit for bit."""
    common = [*tiny_overrides, "model.dropout=0.1", "train.steps=20", "run.log_every=1"]
    optbench.train([*common, "diag.every=0", f"run.dir={tmp_path / 'off'}"])
    optbench.train([*common, "diag.every=1", "diag.drift_k=1", f"run.dir={tmp_path / 'on'}"])
    losses = lambda d: [(r["step"], r.get("loss", r.get("val_loss"))) for r in read_metrics(d)  # noqa: E731
                        if "loss" in r or "val_loss" in r]
    assert losses(tmp_path / "off") == losses(tmp_path / "on") and len(losses(tmp_path / "on")) > 20
    assert len(_dynamics(tmp_path / "on")) == 20
    final = lambda d: CheckpointStore(d / "checkpoints").latest()[1]["model"]  # noqa: E731
    off, on = final(tmp_path / "off"), final(tmp_path / "on")
    assert all(torch.equal(off[k], on[k]) for k in off)


def _with_spikes(monkeypatch) -> None:
    """Step 13's loss reported 3x (a loss spike) and step 15's gradient norm 100x (a grad spike, clipped)."""
    real = Trainer.train_step

    def step(self, index):
        loss, norm = real(self, index)
        return loss * (3 if index == 12 else 1), norm * (100 if index == 14 else 1)
    monkeypatch.setattr(Trainer, "train_step", step)


def test_spike_counts_and_dynamics_survive_a_resume(tmp_path, tiny_overrides, monkeypatch):
    """Stopped at step 21 and resumed: the spikes counted before the stop stay counted, the detectors' medians
    carry on, and the dynamics of steps 25 and 30 (W_23, W_28 and the updates before them all after the resume)
    are the uninterrupted run's, line for line."""
    _with_spikes(monkeypatch)
    overrides = [*tiny_overrides, *DIAG, "eval.sample_tokens=0"]
    assert_interrupted_run_resumes_exactly(tmp_path, overrides, monkeypatch, stop_at=20)
    straight, resumed = read_json(tmp_path / "straight" / "summary.json"), read_json(tmp_path / "run" / "summary.json")
    for key in ("loss_spikes", "grad_spikes", "max_attn_logit"):
        assert resumed[key] == straight[key], key
    assert (resumed["loss_spikes"], resumed["grad_spikes"]) == (1, 1)
    assert resumed["max_attn_logit"] == max(a["max_logit"] for r in _dynamics(tmp_path / "run") for a in r["attention"])
    train = {r["step"]: r for r in read_metrics(tmp_path / "run") if "loss" in r}
    assert train[13]["loss_spike"] and not train[13]["grad_spike"]  # logged although run.log_every=5
    assert train[15]["grad_spike"] and not train[15]["loss_spike"]
    assert [r["step"] for r in _dynamics(tmp_path / "run")] == [5, 10, 15, 20, 25, 30]
