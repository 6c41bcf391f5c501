"""What a run refuses before it builds anything, in one line each: settings that cannot give one process's numbers
under FSDP2, and what the float64 verification precision cannot run."""

from __future__ import annotations

from optbench.config.schema import Config
from optbench.errors import UserError


def check_parallel(cfg: Config, world_size: int) -> None:
    """FSDP2 hands each rank shards of every tensor: optimizers run on those or on owner ranks, or are refused (also
    checked by a bench before its trials run on several ranks, bench/multirank.py)."""
    if not (world_size > 1 and cfg.train.parallel == "fsdp"):
        return
    from optbench.training import fsdp_optimizer  # FSDP2 and DTensor (~1 s to import): for FSDP runs only

    fsdp_optimizer.check(cfg)
    if cfg.train.weight_avg != "none":
        raise UserError(f"train.weight_avg={cfg.train.weight_avg} keeps a full copy of the model, which "
                        "train.parallel=fsdp avoids; valid with fsdp: none (or train.parallel=ddp)")
    if cfg.diag.every > 0:
        raise UserError(f"diag.every={cfg.diag.every} measures whole tensors, which train.parallel=fsdp "
                        "shards over ranks; valid with fsdp: diag.every=0 (or train.parallel=ddp)")


def check_precision(cfg: Config) -> None:
    """What cannot run in train.dtype=float64 (a verification precision) is refused before anything is built."""
    if cfg.train.dtype == "float64" and getattr(cfg.model, "kernel", None) == "fla":
        raise UserError("model.kernel=fla: flash-linear-attention's kernels have no float64 (train.dtype=float64); "
                        "valid with float64: model.kernel=auto, torch")
