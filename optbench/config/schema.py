"""The typed configuration: dataclasses are the single source of truth for every key and default.

YAML files under `optbench/configs/` only pick choices and presets; Hydra composes them and
OmegaConf checks every value against these classes. Model families and optimizers subclass
`ModelConfig` / `OptimConfig` next to their code and are registered as group options by name.
`__post_init__` checks run when the composed config is turned into these objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from optbench.errors import check, check_choice

SCHEDULES = ("cosine", "linear", "wsd", "cos_inf", "constant")
DECAY_SHAPES = ("linear", "cosine", "sqrt", "exp", "mirror_cosine", "square")
DTYPES = ("auto", "float32", "bfloat16", "float16", "float64")
SAMPLING = ("random", "shuffled")
WEIGHT_AVG = ("none", "ema", "uniform")
PARALLEL = ("ddp", "fsdp")


@dataclass
class ModelConfig:
    """Architecture shared by all model families; each family subclasses it with its own keys."""

    name: str = MISSING
    """Model family in the model registry (gpt2, llama, ...)."""
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    vocab_size: int | None = None
    """None: the prepared dataset's vocabulary, rounded up to `pad_vocab_multiple`."""
    pad_vocab_multiple: int = 64
    """Pad the embedding table to a multiple of this for faster matmuls (50257 -> 50304)."""
    dropout: float = 0.0
    init_std: float = 0.02
    parallel_block: bool = False
    """x + mixer(norm(x)) + mlp(norm(x)) with one norm (GPT-J, PaLM) instead of two residual steps in turn."""
    mup: bool = False
    """muP (Yang et al. 2022; optbench/models/mup.py): hidden init and Adam lr scale with width, logits by 1/width,
    attention by 1/head_dim, so hyperparameters tuned at `mup_base_width` transfer to wider models."""
    mup_base_width: int = 256
    """The n_embd at which muP equals the standard parametrisation; the width multiplier is n_embd / this."""
    mup_base_head_dim: int | None = None
    """The head dim at which muP's 1/d attention equals SP's 1/sqrt(d); None: the head dim at the base width with
    this model's head count (heads fixed as width grows). Set it to the head dim when heads grow with width."""

    def __post_init__(self) -> None:
        check(self.n_layer > 0 and self.n_head > 0, "model.n_layer and model.n_head must be positive")
        check(self.n_embd % self.n_head == 0,
              f"model.n_embd={self.n_embd} must be divisible by model.n_head={self.n_head}")
        check(0.0 <= self.dropout < 1.0, f"model.dropout={self.dropout} must be in [0, 1)")
        check(self.mup_base_width > 0, f"model.mup_base_width={self.mup_base_width} must be positive")
        check(self.mup_base_head_dim is None or self.mup_base_head_dim > 0,
              f"model.mup_base_head_dim={self.mup_base_head_dim} must be positive (or null: from the base width)")


@dataclass
class DataConfig:
    """Which corpus, where it comes from, how it is tokenized and sampled."""

    name: str = "shakespeare-char"
    """Recipe name (see `optbench data list`)."""
    source: str | None = None
    """A local file, folder or glob of .txt/.jsonl/.parquet replacing the recipe's remote source."""
    tokenizer: str | None = None
    """None: the recipe's tokenizer. Else gpt2 (tiktoken), char, or any HF tokenizer name or path."""
    root: str = "${oc.env:OPTBENCH_DATA_DIR,'~/.cache/optbench/data'}"
    """Where prepared token files live."""
    mirror: str | None = "${oc.env:OPTBENCH_MIRROR,'../shared/data'}"
    """An offline folder laid out like ../shared/data, tried before the network."""
    max_tokens: int | None = None
    """Stop tokenizing a split after this many tokens (for huge remote corpora)."""
    val_fraction: float = 0.1
    """Share held out for validation when the source has no validation split."""
    sampling: str = "random"
    """random: windows at random offsets (nanoGPT); shuffled: non-overlapping windows, each once per epoch."""
    num_proc: int | None = None
    """Tokenizer worker processes; None: all cores."""

    def __post_init__(self) -> None:
        check_choice("data.sampling", self.sampling, SAMPLING)
        check(0.0 < self.val_fraction < 1.0, f"data.val_fraction={self.val_fraction} must be in (0, 1)")
        check(self.max_tokens is None or self.max_tokens > 0, "data.max_tokens must be positive")


@dataclass
class OptimConfig:
    """Hyperparameters shared by all optimizers; each optimizer subclasses it with its own keys."""

    name: str = MISSING
    """Optimizer in the optimizer registry (see `optbench optim list`)."""
    lr: float = 1e-3
    weight_decay: float = 0.0
    """Decoupled or L2, as the optimizer defines it; never applied to norm gains and biases."""
    decay_embeddings: bool = True
    """Apply weight decay to embedding tables too (GPT-2/nanoGPT do; many recent recipes don't)."""

    def __post_init__(self) -> None:
        check(self.lr >= 0.0, f"optim.lr={self.lr} must be non-negative")
        check(self.weight_decay >= 0.0, f"optim.weight_decay={self.weight_decay} must be non-negative")


@dataclass
class ScheduleConfig:
    """Learning-rate multiplier over steps: linear warmup, then the named shape (optbench/training/schedules.py)."""

    name: str = "cosine"
    """cosine | linear | wsd (warmup-stable-decay; `schedule=trapezoid` is wsd with a linear decay) | cos_inf
    (the EPFL benchmark's: cosine, then final_lr_frac held for cos_inf_steps) | constant."""
    warmup_steps: int = 100
    """Linear warmup's length in steps."""
    warmup_frac: float = 0.0
    """Warmup as this share of train.steps instead (PyLO's warmup_ratio, Scaling-for-Scaling's "10% of steps"),
    floored to whole steps; needs warmup_steps=0."""
    final_lr_frac: float = 0.1
    """The last step's lr as a fraction of optim.lr (cosine, linear, wsd; cos_inf's held lr)."""
    decay_frac: float = 0.2
    """wsd: the share of all steps spent decaying at the end."""
    decay_shape: str = "linear"
    """wsd: linear | cosine | sqrt (1 - sqrt) | exp (final_lr_frac ** progress) | mirror_cosine (2 x linear -
    cosine) | square (1 - progress^2) cooldown (optbench/training/decay_shapes.py)."""
    cos_inf_steps: int = 0
    """cos_inf: the last steps held at final_lr_frac after the cosine (the EPFL benchmark's --cos_inf_steps)."""

    def __post_init__(self) -> None:
        check_choice("schedule.name", self.name, SCHEDULES)
        check_choice("schedule.decay_shape", self.decay_shape, DECAY_SHAPES)
        check(self.warmup_steps >= 0, f"schedule.warmup_steps={self.warmup_steps} must be >= 0")
        check(0.0 <= self.warmup_frac <= 1.0, f"schedule.warmup_frac={self.warmup_frac} must be in [0, 1]")
        check(not (self.warmup_frac and self.warmup_steps),
              f"schedule.warmup_frac={self.warmup_frac} and schedule.warmup_steps={self.warmup_steps} both set the "
              "warmup: pass schedule.warmup_steps=0 with warmup_frac (warmup_steps defaults to 100)")
        check(0.0 <= self.final_lr_frac <= 1.0, f"schedule.final_lr_frac={self.final_lr_frac} must be in [0, 1]")
        check(0.0 <= self.decay_frac <= 1.0, f"schedule.decay_frac={self.decay_frac} must be in [0, 1]")
        # 0 ** progress drops the lr to 0 on the cooldown's second step: a plain mistake, not a cooldown.
        check(not (self.name == "wsd" and self.decay_shape == "exp" and self.final_lr_frac == 0.0),
              "schedule.decay_shape=exp needs schedule.final_lr_frac > 0 (it decays as final_lr_frac ** progress); "
              f"valid with 0: {', '.join(shape for shape in DECAY_SHAPES if shape != 'exp')}")
        check(self.cos_inf_steps >= 0, f"schedule.cos_inf_steps={self.cos_inf_steps} must be >= 0")


@dataclass
class TrainConfig:
    """The optimisation loop."""

    steps: int = 2000
    batch_size: int = 12
    """Sequences per micro-batch on one device."""
    grad_accum: int = 1
    """Micro-batches per optimizer step, summed over all ranks (divided among them under DDP)."""
    seq_len: int = 64
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 disables clipping."""
    dtype: str = "auto"
    """auto: bfloat16 autocast on CUDA, float32 on CPU. float64: a verification precision, not for speed (parameters,
    gradients, optimizer state and the model's computations in float64): checks that a parallel or resumed run
    computes what one process computes, with rounding far below what can grow to 1e-5 (training/device.py)."""
    compile: bool = False
    device: str = "auto"
    """auto | cpu | cuda | cuda:N | mps."""
    seed: int = 1337
    """Seeds model init (and dropout)."""
    data_seed: int = 1337
    """Seeds the batch order: batch k is a pure function of (data_seed, k)."""
    threads: int | None = None
    """CPU threads for torch; None: torch's default."""
    diverge_loss: float = 1e4
    """Stop with status diverged when the training loss is non-finite or above this."""
    weight_avg: str = "none"
    """none | ema | uniform: also evaluate an average of the weights (metrics with an _avg suffix)."""
    weight_avg_decay: float = 0.999
    """ema: the average's decay per step."""
    weight_avg_start: int = 0
    """Start averaging after this many steps."""
    parallel: str = "ddp"
    """Under torchrun: ddp (a full replica per rank) | fsdp (FSDP2: parameters, gradients and optimizer state
    sharded over ranks, for models that do not fit one device; an optimizer that needs whole matrices steps each on
    an owner rank, and checkpoints are sharded folders: training/fsdp_optimizer.py, sharded_checkpoint.py)."""

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "grad_accum", "seq_len"):
            check(getattr(self, key) > 0, f"train.{key}={getattr(self, key)} must be positive")
        check(self.grad_clip >= 0.0, f"train.grad_clip={self.grad_clip} must be >= 0")
        check_choice("train.dtype", self.dtype, DTYPES)
        check_choice("train.weight_avg", self.weight_avg, WEIGHT_AVG)
        check_choice("train.parallel", self.parallel, PARALLEL)
        check(0.0 < self.weight_avg_decay < 1.0, f"train.weight_avg_decay={self.weight_avg_decay} must be in (0, 1)")


@dataclass
class EvalConfig:
    """Validation and samples."""

    every: int = 250
    """Evaluate every this many steps (and always at the end); 0: only at the end."""
    batches: int = 20
    """Validation batches per evaluation (fixed windows, the same at every evaluation)."""
    batch_size: int | None = None
    """None: train.batch_size."""
    at_steps: list[int] = field(default_factory=list)
    """Extra steps with a full evaluation."""
    prompt: str = "\n"
    """Prompt of the sample generated at each evaluation."""
    sample_tokens: int = 100
    """Length of that sample; 0 disables sampling."""
    temperature: float = 0.8
    top_k: int | None = 200
    downstream: list[str] = field(default_factory=list)
    """lm-evaluation-harness tasks (e.g. [hellaswag,arc_easy]) run on the final checkpoint when training completes
    (rank 0), written to <run.dir>/downstream.json as `optbench eval` writes it; needs the `eval` extra. The names
    are checked before the run starts."""
    downstream_limit: int | None = None
    """At most this many examples per downstream task; None: all of them."""
    downstream_tasks_dir: str | None = None
    """A folder of lm-eval task YAMLs (your own tasks, or standard ones pointed at local data) searched before
    lm-eval's own; None: lm-eval's tasks only."""

    def __post_init__(self) -> None:
        check(self.every >= 0, f"eval.every={self.every} must be >= 0")
        check(self.batches > 0, f"eval.batches={self.batches} must be positive")
        check(self.temperature > 0.0, f"eval.temperature={self.temperature} must be positive")
        check(self.downstream_limit is None or self.downstream_limit > 0,
              f"eval.downstream_limit={self.downstream_limit} must be positive (or null: every example)")


@dataclass
class RunConfig:
    """Where a run is written and how it logs."""

    dir: str | None = None
    """Run directory; None: runs/<date>-<time>-<model>-<optim>."""
    resume: str = "auto"
    """auto: continue from the run directory's checkpoint if there is one | never | PATH to a checkpoint."""
    ckpt_every: int = 0
    """Save a checkpoint every this many steps (always at the end, and on SIGTERM/SIGINT); 0: only then."""
    keep_last: int = 2
    """Checkpoints kept besides permanent ones: the newest few, so a damaged latest falls back to the one before."""
    keep_every: int = 0
    """Keep the checkpoint of every step divisible by this for good (for later analysis); 0: none."""
    log_every: int = 10
    progress: bool = True
    """Show a live progress bar (on a terminal)."""
    wandb: bool = False
    wandb_project: str = "optbench"
    wandb_entity: str | None = None
    wandb_name: str | None = None
    wandb_mode: str = "online"
    """online | offline."""
    tensorboard: bool = False

    def __post_init__(self) -> None:
        check(self.log_every > 0, f"run.log_every={self.log_every} must be positive")
        check(self.ckpt_every >= 0, f"run.ckpt_every={self.ckpt_every} must be >= 0")
        check(self.keep_last >= 1, f"run.keep_last={self.keep_last} must be >= 1")
        check(self.keep_every >= 0, f"run.keep_every={self.keep_every} must be >= 0")
        check_choice("run.wandb_mode", self.wandb_mode, ("online", "offline"))


@dataclass
class DiagConfig:
    """Training dynamics and pathology telemetry (optbench/training/telemetry.py), apart from run.log_every.

    At every `every`-th step a `dynamics` record goes to metrics.jsonl (and the other sinks): per parameter and
    per routing role the update RMS, the relative update ||W_t - W_{t-1}|| / ||W_{t-1}||, the cosine between
    this update and the previous step's, the cosine between W_t and W_{t - drift_k}, the weight norm, the
    gradient norm before clipping and the min / median / max over rows of the update's per-row RMS; per block
    the gradient norm; per softmax-attention layer the largest attention logit and the mean attention entropy
    on a fixed probe window (the first validation window). None of it runs inside the timed step or changes
    what the run computes. A process resumed inside the drift_k steps before a diag step has not seen W_{t-k}
    (nor, resumed at t-1, the update of t-1): that step's drift_cos (update_cos) is null."""

    every: int = 0
    """Steps between dynamics records; 0: none (the default: FSDP's shards refuse it, see README). Each costs
    copies of the weights at that step, the one before and drift_k before, and one forward of the probe window:
    under 1% of the nanoGPT recipe's wall time at 100 (benchmarks/diag_overhead.py)."""
    drift_k: int | None = None
    """drift_cos compares the weights at a diag step t with those at step t - drift_k (1 <= drift_k <= every);
    None: min(10, every)."""
    loss_spike_factor: float = 1.5
    """A training loss above this times the median of the previous 100 (once there are 10) is a loss spike:
    flagged in that step's train record (which is then logged) and counted in summary.json's loss_spikes."""

    @property
    def drift_steps(self) -> int:
        """drift_k as resolved: min(10, every) when not given."""
        return self.drift_k if self.drift_k is not None else min(10, max(self.every, 1))

    def __post_init__(self) -> None:
        check(self.every >= 0, f"diag.every={self.every} must be >= 0 (0: no dynamics records)")
        check(self.every == 0 or self.drift_k is None or 1 <= self.drift_k <= self.every,
              f"diag.drift_k={self.drift_k} must be between 1 and diag.every={self.every} (or null: min(10, every))")
        check(self.loss_spike_factor > 1.0, f"diag.loss_spike_factor={self.loss_spike_factor} must be > 1")


@dataclass
class Config:
    """One training run."""

    model: ModelConfig = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = MISSING
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    diag: DiagConfig = field(default_factory=DiagConfig)
