"""train.parallel=fsdp with the optimizers that need whole tensors (Muon, SOAP, Shampoo, PSGD-Kron, GaLore, ...): each
such tensor is stepped whole on one owner rank (optbench/training/fsdp_optimizer.py), so 2 ranks compute what one
process computes, sharded checkpoints hold one process's state, and each tensor's optimizer state lives on its owner
only.

Two torchrun launches of 2 CPU ranks (gloo):
- the trainer: adamw, muon, soap, shampoo, psgd-kron and galore on llama-debug and moe-debug for 20 steps, against one
  process with the same global batch; then muon again, resumed from its step-10 checkpoint;
- tests/reliability/fsdp_steps.py: every optimizer FSDP does not refuse, stepped under FSDP2 and in one process from
  the same gradients: weights, the sharded checkpoint read whole against one process's state dicts, and a step after
  reloading from one process's state dict and from the sharded checkpoint, bit for bit; where each whole tensor's
  state lives.

The trainer's runs leave gradients unclipped. Under FSDP2 the clipping norm is summed shard by shard, in another order
than one process's, which moves every clipped gradient by an ulp; SOAP's eigenbases of its first, nearly degenerate
factors turn that into 1e-3 in the loss within 20 steps (DDP at 4 ranks does the same: its all-reduce sums 4
micro-batches in another order). Unclipped, 2 ranks x 1 micro-batch give one process's 2 micro-batch gradients bit
for bit, and the losses agree to the rounding of the logged mean (~6e-8). 4 ranks sum 4 micro-batches in another
order than one process, so they are checked in float64 (test_fsdp_four_ranks.py).
"""

import json
from pathlib import Path

import pytest
import torch

import optbench
from optbench import optim
from optbench.training.checkpoint import CheckpointStore
from tests.conftest import tiny_run, write_corpus
from tests.reliability.rank_agreement import CASES, MODELS, losses
from tests.reliability.test_distributed import launch_all, torchrun

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("torchrun")]

COMMON = ["train.steps=20", "train.grad_accum=2", "train.grad_clip=0", "run.log_every=1", "run.ckpt_every=10",
          "eval.every=0", "eval.sample_tokens=0", "train.parallel=fsdp"]
FSDP_RUNS = [n for n in optim.names() if optim.get(n).capabilities.fsdp != "refused"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict[str, list[str]]]:
    folder = tmp_path_factory.mktemp("fsdp-owners")
    base = [*tiny_run(folder, write_corpus(folder)), *COMMON]
    runs = {f"{model}-{name}": [*base, f"model={model}", f"optim={name}", *extra]
            for model in MODELS for name, extra in CASES.items()}
    step_10 = CheckpointStore(folder / "llama-debug-muon" / "checkpoints").sharded_path(10)
    runs["llama-debug-muon-resumed"] = [*runs["llama-debug-muon"], f"run.resume={step_10}"]
    launch_all(folder, runs)
    return folder, runs


@pytest.fixture(scope="module")
def stepped(tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("fsdp-steps") / "results.json"
    done = torchrun(["-m", "tests.reliability.fsdp_steps", str(out)])
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("name", CASES)
def test_two_ranks_give_one_process_losses(name, model, trained):
    folder, runs = trained
    run = f"{model}-{name}"
    one = optbench.train([*runs[run], "train.threads=1", f"run.dir={folder / run}-single"])  # parallel: no-op here
    single, ranks = losses(folder / f"{run}-single"), losses(folder / run)
    assert one["status"] == "completed" and [s for s, _ in single] == [s for s, _ in ranks] == list(range(1, 21))
    for (step, a), (_, b) in zip(single, ranks):
        assert b == pytest.approx(a, rel=1e-5), f"{run}: step {step}: one process {a}, 2 ranks {b}"


def test_resume_from_a_sharded_checkpoint_is_exact_and_it_reads_whole_as_one_process(trained):
    folder, _ = trained
    after = lambda run: [x for x in losses(folder / run) if x[0] > 10]  # noqa: E731
    assert after("llama-debug-muon-resumed") == after("llama-debug-muon") and after("llama-debug-muon")
    saved = CheckpointStore(folder / "llama-debug-muon" / "checkpoints").latest()[1]
    matrices = saved["optimizer"]["parts"]["matrix"]
    momentum = matrices["state"][0]["momentum_buffer"]  # numbered as one process numbers them, and whole
    assert type(momentum) is torch.Tensor and momentum.shape == saved["model"]["layers.0.attn.q_proj.weight"].shape
    assert sorted(matrices["state"]) == [i for g in matrices["param_groups"] for i in g["params"]]


@pytest.mark.parametrize("name", FSDP_RUNS)
def test_every_optimizer_steps_under_fsdp_as_in_one_process(name, stepped):
    result = stepped[name]
    assert "error" not in result, result.get("error")
    assert result["max_weight_diff"] == 0.0 and result["model_equal"] and result["state_equal"]
    assert result["resumed_diff"] == 0.0 and result["sharded_resumed_diff"] == 0.0
    assert result["forward_diff"] == 0.0  # after an evaluation (Schedule-Free moves the weights there and back)


@pytest.mark.parametrize("name", [n for n in FSDP_RUNS if optim.get(n).capabilities.fsdp == "owner"])
def test_each_whole_tensors_state_lives_on_its_owner_only(name, stepped):
    held, (all_ranks, one_process) = stepped[name]["ranks_holding_each_whole_state"], stepped[name]["whole_state_bytes"]
    assert held == [1] and all_ranks == one_process > 0
