"""Pathology telemetry: attention logits and entropy on the probe window against a direct softmax of the model's
own queries and keys, the loss-spike detector, grad_max before clipping, the sinks' handling of dynamics
records, and the config's refusals."""

from __future__ import annotations

import io
import math
import sys
import types
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console

import optbench
from optbench import models
from optbench.config.compose import compose
from optbench.errors import UserError
from optbench.training.attention_probe import attention_stats
from optbench.training.diagnostics import SpikeDetector
from optbench.training.rundir import read_metrics
from optbench.training.sinks import ConsoleSink
from optbench.training.refusals import check_parallel
from optbench.training.trainer import Trainer

VOCAB, SEQ = 48, 12


def _model(overrides: list[str]) -> torch.nn.Module:
    """A debug model whose query and key projections are scaled up, so its attention is far from uniform."""
    torch.manual_seed(0)
    model = models.build(compose(overrides).model, VOCAB, SEQ)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("c_attn.weight", "q_proj.weight", "k_proj.weight")):
                p.mul_(6)
    return model


def _inputs_of_attention(model, window) -> list[torch.Tensor]:
    """Each block's input to its attention module, seen by a forward hook of the test's own."""
    seen = []
    handles = [block.attn.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
               for block in model.blocks()]
    with torch.no_grad():
        model(window)
    for h in handles:
        h.remove()
    return seen


def _gpt2_qk(block, x):
    attn = block.attn
    batch, seq, width = x.shape
    q, k, _ = attn.c_attn(x).split(width, dim=2)
    heads = lambda t: t.view(batch, seq, attn.n_head, width // attn.n_head).transpose(1, 2)  # noqa: E731
    return heads(q), heads(k), attn.scale


def _llama_qk(block, x, rope):
    attn = block.attn
    batch, seq, _ = x.shape
    q = attn.q_norm(attn.q_proj(x).view(batch, seq, attn.n_head, attn.head_dim)).transpose(1, 2)
    k = attn.k_norm(attn.k_proj(x).view(batch, seq, attn.n_kv_head, attn.head_dim)).transpose(1, 2)
    return rope(q), rope(k).repeat_interleave(attn.n_head // attn.n_kv_head, dim=1), attn.scale


def _direct(q: torch.Tensor, k: torch.Tensor, scale: float | None) -> tuple[float, float]:
    """Max logit and mean entropy of causal softmax attention, all heads at once, in float64."""
    q, k = q.double(), k.double()
    scores = (q @ k.transpose(-1, -2)) * (scale if scale is not None else q.size(-1) ** -0.5)
    future = torch.ones(scores.shape[-2:], dtype=torch.bool).triu(1)
    max_logit = scores.masked_fill(future, -math.inf).max().item()
    p = scores.masked_fill(future, -math.inf).softmax(-1)
    entropy = -(p * p.clamp_min(1e-300).log()).sum(-1).mean().item()
    return max_logit, entropy


@pytest.mark.parametrize("overrides", [["model=gpt2-debug", "model.dropout=0.2"], ["model=gpt2-debug", "model.mup=true"],
                                       ["model=llama-debug", "model.n_head=4", "model.n_kv_head=2",
                                        "model.qk_norm=true"]],
                         ids=["gpt2", "gpt2-mup", "llama-gqa-qknorm"])
def test_attention_stats_equal_a_direct_softmax_of_the_models_own_queries_and_keys(overrides):
    model = _model(overrides)  # in train mode: with dropout, only the probe's own eval mode gives these numbers
    window = torch.randint(0, VOCAB, (1, SEQ), generator=torch.Generator().manual_seed(1))
    layers, stats = attention_stats(model, window, torch.device("cpu"), torch.float32)
    assert layers == list(range(len(model.blocks())))
    model.eval()
    for layer, (block, x) in enumerate(zip(model.blocks(), _inputs_of_attention(model, window))):
        with torch.no_grad():
            qk = _gpt2_qk(block, x) if "gpt2" in overrides[0] else _llama_qk(block, x, model.rope)
        max_logit, entropy = _direct(*qk)
        assert abs(max_logit) > 1.0 and 0.05 < entropy < math.log(SEQ)  # a test of something: far from uniform
        # float32 scores (the probe) against float64 (here): a few ulps of logits of order 10
        assert stats[layer].tolist() == pytest.approx([max_logit, entropy], rel=1e-5, abs=1e-5), layer


@pytest.mark.parametrize("overrides", [["model=gpt2-pom-debug"], ["model=gla-debug"]], ids=["pom", "gla"])
def test_families_without_softmax_attention_report_no_layers(overrides):
    model = _model(overrides)
    layers, stats = attention_stats(model, torch.zeros(1, SEQ, dtype=torch.long), torch.device("cpu"), torch.float32)
    assert layers == [] and stats.shape == (0, 2)


def test_the_probe_leaves_mode_and_random_streams_as_they_were():
    model = _model(["model=gpt2-debug", "model.dropout=0.5"])
    for mode in (True, False):
        model.train(mode)
        before = torch.get_rng_state()
        attention_stats(model, torch.zeros(1, SEQ, dtype=torch.long), torch.device("cpu"), torch.float32)
        assert model.training == mode and torch.equal(torch.get_rng_state(), before)


def test_the_moe_family_is_probed_through_its_llama_attention():
    model = _model(["model=moe-debug"])
    layers, stats = attention_stats(model, torch.zeros(1, SEQ, dtype=torch.long), torch.device("cpu"), torch.float32)
    assert layers == list(range(len(model.blocks()))) and stats.isfinite().all()


# ----------------------------------------------------------------------------- spikes and clipping


def test_loss_spike_detector_flags_values_over_factor_times_the_running_median_and_counts_them():
    detector = SpikeDetector(factor=1.5, window=100, min_history=10)
    assert not any(detector(v) for v in [2.0] * 9 + [100.0])  # fewer than 10 values before it: no verdict
    assert [detector(v) for v in (3.1, 2.9, 3.01, 2.0)] == [True, False, True, False]
    assert detector.count == 2
    resumed = SpikeDetector(factor=1.5)
    resumed.load_state_dict(detector.state_dict())
    assert [resumed(v) for v in (3.5, 2.0)] == [detector(v) for v in (3.5, 2.0)] == [True, False]
    assert resumed.count == detector.count == 3


def test_a_loss_spike_is_logged_and_counted_in_the_summary(tmp_path, tiny_overrides, monkeypatch):
    real = Trainer.train_step

    def step(self, index):  # the loss reported for step 18 is 3x the real one
        loss, norm = real(self, index)
        return loss * (3 if index == 17 else 1), norm
    monkeypatch.setattr(Trainer, "train_step", step)
    summary = optbench.train([*tiny_overrides, "train.steps=20"])
    train = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert [r["step"] for r in train] == [5, 10, 15, 18, 20]  # step 18 logged for its spike
    assert [r["loss_spike"] for r in train] == [False, False, False, True, False]
    assert (summary["loss_spikes"], summary["grad_spikes"], summary["max_attn_logit"]) == (1, 0, None)


def test_grad_max_and_grad_norms_are_measured_before_clipping(tmp_path, tiny_overrides):
    """Clipped to a total norm of 1e-6, no gradient entry could exceed 1e-6 afterwards."""
    clip = 1e-6
    optbench.train([*tiny_overrides, "train.steps=10", f"train.grad_clip={clip}", "run.log_every=1",
                    "diag.every=5", "diag.drift_k=1"])
    lines = read_metrics(tmp_path / "run")
    train = {r["step"]: r for r in lines if "loss" in r}
    assert all(r["grad_max"] > 1000 * clip and r["grad_norm"] > 1000 * clip for r in train.values())
    dynamics = [r for r in lines if r.get("kind") == "dynamics"]
    assert [r["step"] for r in dynamics] == [5, 10]
    for r in dynamics:
        assert max(v["grad_norm"] for v in r["params"].values()) > 1000 * clip
        assert math.sqrt(sum(v["grad_norm"] ** 2 for v in r["roles"].values())) == pytest.approx(
            train[r["step"]]["grad_norm"], rel=1e-5)


# ----------------------------------------------------------------------------- sinks


DYNAMICS = {"kind": "dynamics", "step": 5, "tokens": 640, "time_s": 1.0,
            "params": {"w": {"update_rms": 0.1, "update_cos": None}},
            "roles": {"matrix": {"update_rms": 0.1, "update_cos": None}},
            "layers": [{"layer": 0, "grad_norm": 0.5}], "attention": [{"layer": 0, "max_logit": 3.0, "entropy": 1.2}]}


def test_console_prints_loss_spikes_and_leaves_dynamics_records_to_the_files():
    out = io.StringIO()
    sink = ConsoleSink(10, 0, Console(file=out, width=200), live=False)
    sink.log(DYNAMICS)
    assert out.getvalue() == ""
    sink.log({"kind": "train", "step": 6, "loss": 9.0, "lr": 1e-3, "grad_norm": 1.0, "loss_spike": True})
    assert "warning: loss 9 at step 6" in out.getvalue()


def test_wandb_gets_dynamics_roles_layers_and_attention_as_flat_scalars(tmp_path, tiny_overrides, monkeypatch):
    logged = []
    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: SimpleNamespace(log=lambda metrics, step: logged.append((step, metrics)),
                                             finish=lambda: None)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    optbench.train([*tiny_overrides, "train.steps=10", "run.wandb=true", "run.wandb_mode=offline",
                    "diag.every=5", "diag.drift_k=1"])
    dynamics = [(step, m) for step, m in logged if any(k.startswith("dynamics/") for k in m)]
    assert [step for step, _ in dynamics] == [5, 10]
    for _, metrics in dynamics:
        assert all(isinstance(v, float) for v in metrics.values())
        assert {"dynamics/roles/matrix/update_rms", "dynamics/layers/1/grad_norm",
                "dynamics/attention/1/max_logit", "dynamics/attention/0/entropy"} <= set(metrics)
        assert not any(k.startswith("dynamics/params/") for k in metrics)


def test_tensorboard_gets_dynamics_scalars(tmp_path, tiny_overrides):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    optbench.train([*tiny_overrides, "train.steps=10", "run.tensorboard=true", "diag.every=5", "diag.drift_k=1"])
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    records = {r["step"]: r for r in read_metrics(tmp_path / "run") if r.get("kind") == "dynamics"}
    logged = [(e.step, e.value) for e in events.Scalars("dynamics/attention/0/max_logit")]
    assert logged == pytest.approx([(s, r["attention"][0]["max_logit"]) for s, r in records.items()], rel=1e-6)
    assert "dynamics/roles/vector/drift_cos" in events.Tags()["scalars"]


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(("override", "message"), [
    ("diag.every=-1", "diag.every=-1 must be >= 0"),
    ("diag.drift_k=20", "diag.drift_k=20 must be between 1 and diag.every=10"),
    ("diag.drift_k=0", "diag.drift_k=0 must be between 1 and diag.every=10"),
    ("diag.loss_spike_factor=1.0", "diag.loss_spike_factor=1.0 must be > 1"),
])
def test_bad_diag_values_are_one_line_errors(override, message):
    with pytest.raises(UserError, match=f"^{message}"):
        compose(["diag.every=10", override] if override != "diag.every=-1" else [override])


def test_drift_k_defaults_to_ten_steps_or_the_cadence_when_shorter():
    assert compose(["diag.every=5"]).diag.drift_steps == 5  # a cadence below the default's 10 needs no drift_k
    assert compose(["diag.every=100"]).diag.drift_steps == 10
    assert compose(["diag.every=100", "diag.drift_k=3"]).diag.drift_steps == 3


def test_fsdp_refuses_dynamics_naming_the_valid_choice():
    cfg = compose(["optim=adamw", "train.parallel=fsdp", "diag.every=100"])
    with pytest.raises(UserError, match=r"^diag.every=100 .* valid with fsdp: diag.every=0 \(or train.parallel=ddp\)$"):
        check_parallel(cfg, world_size=2)
    check_parallel(compose(["optim=adamw", "train.parallel=fsdp"]), world_size=2)
    check_parallel(cfg, world_size=1)  # one process: nothing is sharded
