"""What the learned optimizers see: accumulators per parameter and the features built from them.

Follows PyLO's pure-PyTorch optimizers (Belilovsky-Lab/pylo), which port google/learned_optimization
(`learned_optimizers/common.py`, `adafac_mlp_lopt.py`, `research/general_lopt/hyper_v2.py`):
    pylo/optim/Velo_naive.py      commit b221435eed626e73d9bf69b87d49ac7cb2fa8202 (VeLO)
    pylo/optim/AdafacLO_naive.py  commit 1f959f00a3fe609385979a6761139a021d693213 (small_fc_lopt, muLO's rule)

Per parameter p (shape S) with gradient g, both optimizers keep
    mom  S+(3,)  EMAs of g at 3 decays              mom <- b_m mom + (1 - b_m) g
    rms  S+(1,)  EMA of g^2                         rms <- b_r rms + (1 - b_r) g^2
    Adafactor-style EMAs of g^2 + 1e-30 at 3 decays b_f: over the two largest dimensions (d1, d0) of S,
    v_row (S without d0)+(3,) and v_col (S without d1)+(3,); for vectors the full v S+(3,)
and feed a per-parameter MLP the features of `velo_mlp_features` (30) / `mulo_mlp_features` (28 + 11),
each normalised by its second moment over the parameter's entries. VeLO's LSTM sees per-tensor summaries
(`lstm_tensor_features`, 30) and the loss history (`LossBuffer`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

INITIAL_MOMENTUM_DECAYS = (0.9, 0.99, 0.999)
INITIAL_RMS_DECAYS = (0.999,)
INITIAL_ADAFACTOR_DECAYS = (0.9, 0.99, 0.999)
STEP_TIMESCALES = (1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000)
"""small_fc_lopt's training-step embedding: tanh(t / s - 1) for these s."""
FRACTION_TIMESCALES = (0.03, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1)
"""VeLO's fraction-of-training embedding: tanh(10 (f - s)) for these s."""
VELO_MLP_FEATURES = 30
MULO_MLP_FEATURES = 28
LSTM_FEATURES = 30
LOSS_TIMESCALES = 10


def decays(initial: tuple[float, ...], offsets: tuple[float, ...]) -> Tensor:
    """Meta-learned decays: the initial ones moved by `offsets` in the log(1 - decay) / 10 parametrisation,
    clipped to [0, 1] (zero offsets give the initial decays back)."""
    as_param = torch.log(1 - torch.tensor(initial, dtype=torch.float32)) / 10.0
    return torch.clip(1 - torch.exp((as_param + torch.tensor(offsets, dtype=torch.float32)) * 10.0), 0.0, 1.0)


def factored_dims(shape: tuple[int, ...], transposed_ties: bool = False) -> tuple[int, int] | None:
    """(d1, d0): the second largest and the largest dimension (stable order among equal sizes, as numpy's
    argsort on a short shape); None below 2 dimensions. `transposed_ties` (PyLO's VeLO since it fixed square
    matrices): two equally large dimensions are swapped, as they are in the JAX (in x out) layout the weights
    were meta-trained on, except for 4-D tensors whose dimensions 0 and 1 tie."""
    if len(shape) < 2:
        return None
    order = sorted(range(len(shape)), key=lambda i: shape[i])
    second, largest = order[-2], order[-1]
    if transposed_ties and shape[second] == shape[largest] and not (len(shape) == 4 and (second, largest) == (0, 1)):
        return largest, second
    return second, largest


def safe_rsqrt(x: Tensor) -> Tensor:
    return torch.rsqrt(torch.clamp(x, min=1e-9))


def second_moment_normalize(x: Tensor, axes: list[int], eps: float = 1e-5) -> Tensor:
    """x / sqrt(eps + mean(x^2)) with the mean over the parameter's entries: each feature column to RMS ~1."""
    return x * torch.rsqrt(eps + torch.mean(torch.square(x), dim=axes, keepdim=True))


def clip_log_abs(v: Tensor, scale: float = 1.0) -> Tensor:
    return torch.clamp(torch.log(1e-8 + torch.abs(v * scale)), -5, 5) * 0.5


def tanh_embedding(iteration: int) -> Tensor:
    """small_fc_lopt's step feature (11): tanh(t / s - 1) for the timescales s."""
    t = torch.tensor(iteration, dtype=torch.float32)
    return torch.tanh(t / torch.tensor(STEP_TIMESCALES, dtype=torch.float32) - 1.0)


def fractional_tanh_embed(fraction: float) -> Tensor:
    """VeLO's horizon feature (9): tanh(10 (fraction trained - s))."""
    f = torch.tensor(fraction, dtype=torch.float32)
    return torch.tanh((f - torch.tensor(FRACTION_TIMESCALES, dtype=torch.float32)) * 10)


def as_features(x: Tensor) -> Tensor:
    """Scalars are treated as 1-element vectors (as learned_optimization does)."""
    return x.reshape(1) if x.dim() == 0 else x


def init_accumulators(p: Tensor, dims: tuple[int, int] | None) -> dict[str, Tensor]:
    """Zero accumulators in float32 (PyLO's state keys); the unused factored ones are empty tensors."""
    shape = tuple(as_features(p).shape)
    zeros = lambda s: torch.zeros(s, dtype=torch.float32, device=p.device)  # noqa: E731
    empty = lambda: torch.zeros(0, dtype=torch.float32, device=p.device)  # noqa: E731
    state = {"mom": zeros(shape + (len(INITIAL_MOMENTUM_DECAYS),)), "rms": zeros(shape + (len(INITIAL_RMS_DECAYS),))}
    full = shape + (len(INITIAL_ADAFACTOR_DECAYS),)
    if dims is None:
        state.update(fac_vec_row=empty(), fac_vec_col=empty(), fac_vec_v=zeros(full))
    else:
        d1, d0 = dims
        state.update(fac_vec_row=zeros(tuple(s for i, s in enumerate(full) if i != d0)),
                     fac_vec_col=zeros(tuple(s for i, s in enumerate(full) if i != d1)), fac_vec_v=empty())
    return state


def update_accumulators_(state: dict[str, Tensor], g: Tensor, dims: tuple[int, int] | None, mom_decay: Tensor,
                         rms_decay: Tensor, fac_decay: Tensor) -> Tensor:
    """Advance mom, rms and the factored EMAs by one gradient (in place); returns fac_g S+(3,), the gradient
    preconditioned by each factored EMA (Adafactor's g / sqrt(V_hat), V_hat = row col^T / mean(row))."""
    batch_g = g.unsqueeze(-1)
    state["mom"].mul_(mom_decay).add_((1 - mom_decay) * batch_g)
    state["rms"].mul_(rms_decay).add_((1 - rms_decay) * batch_g ** 2)
    g3 = batch_g.expand(batch_g.shape[:-1] + fac_decay.shape)
    grad_sqr = g3 * g3 + 1e-30
    mixing = 1.0 - fac_decay
    if dims is None:
        state["fac_vec_v"].copy_(fac_decay * state["fac_vec_v"] + mixing * grad_sqr)
        return g3 * safe_rsqrt(state["fac_vec_v"] + 1e-9)
    d1, d0 = dims
    row = fac_decay * state["fac_vec_row"] + mixing * torch.mean(grad_sqr, dim=d0)
    col = fac_decay * state["fac_vec_col"] + mixing * torch.mean(grad_sqr, dim=d1)
    state["fac_vec_row"].copy_(row)
    state["fac_vec_col"].copy_(col)
    row_factor, col_factor = factor_rsqrts(row, col, dims)
    return g3 * row_factor.unsqueeze(d0) * col_factor.unsqueeze(d1)


def factor_rsqrts(row: Tensor, col: Tensor, dims: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """rsqrt(row / mean(row over d1)) and rsqrt(col): the factors of 1 / sqrt(V_hat)."""
    d1, d0 = dims
    reduced_d1 = d1 - 1 if d1 > d0 else d1
    row_col_mean = torch.mean(row, dim=reduced_d1, keepdim=True)
    return safe_rsqrt(row / (row_col_mean + 1e-9)), safe_rsqrt(col)


def factored_features(state: dict[str, Tensor], dims: tuple[int, int] | None, shape: tuple[int, ...],
                      vector_mom_eps: float) -> list[Tensor]:
    """The 5 Adafactor-style feature groups (3 columns each): row EMA, column EMA (broadcast to S), their
    rsqrt(. + 1e-8), and the momenta times 1 / sqrt(V_hat). Vectors use the full EMA in place of both, and
    mom (v + vector_mom_eps)^-0.5 (VeLO: eps 0; small_fc_lopt: 1e-6)."""
    mom = state["mom"]
    if dims is None:
        v = state["fac_vec_v"]
        return [v, v, torch.rsqrt(v + 1e-8), torch.rsqrt(v + 1e-8), mom * torch.pow(v + vector_mom_eps, -0.5)]
    d1, d0 = dims
    full = shape + (state["fac_vec_row"].shape[-1],)
    row_feat = state["fac_vec_row"].unsqueeze(d0).expand(full)
    col_feat = state["fac_vec_col"].unsqueeze(d1).expand(full)
    row_factor, col_factor = factor_rsqrts(state["fac_vec_row"], state["fac_vec_col"], dims)
    return [row_feat, col_feat, torch.rsqrt(row_feat + 1e-8), torch.rsqrt(col_feat + 1e-8),
            mom * row_factor.unsqueeze(d0) * col_factor.unsqueeze(d1)]


def velo_mlp_features(p: Tensor, g: Tensor, state: dict[str, Tensor], fac_g: Tensor,
                      dims: tuple[int, int] | None) -> Tensor:
    """VeLO's 30 per-parameter inputs, S+(30,), each column normalised over the entries:
    g, clip(g, +-0.1), p, mom (3), rms, mom rsqrt(rms + 1e-6) (3), rsqrt(rms + 1e-6), fac_g (3),
    g rsqrt(rms + 1e-6), then the 15 factored columns."""
    batch_g = g.unsqueeze(-1)
    mom, rms = state["mom"], state["rms"]
    rsqrt = torch.rsqrt(rms + 1e-6)
    parts = [batch_g, torch.clip(batch_g, -0.1, 0.1), p.unsqueeze(-1), mom, rms, mom * rsqrt, rsqrt, fac_g,
             batch_g * rsqrt] + factored_features(state, dims, tuple(p.shape), 0.0)
    return second_moment_normalize(torch.cat(parts, dim=-1), list(range(p.dim())))


def mulo_mlp_features(p: Tensor, g: Tensor, state: dict[str, Tensor], fac_g: Tensor,
                      dims: tuple[int, int] | None, iteration: int) -> Tensor:
    """small_fc_lopt's 39 inputs, S+(39,): g, p, mom (3), rms, mom rsqrt(rms + 1e-6) (3), rsqrt(rms + 1e-6),
    fac_g (3), the 15 factored columns (all 28 normalised over the entries), then the 11 step features."""
    mom, rms = state["mom"], state["rms"]
    rsqrt = torch.rsqrt(rms + 1e-6)
    parts = [g.unsqueeze(-1), p.unsqueeze(-1), mom, rms, mom * rsqrt, rsqrt, fac_g]
    parts += factored_features(state, dims, tuple(p.shape), 1e-6)
    normalized = second_moment_normalize(torch.cat(parts, dim=-1), list(range(p.dim())))
    step = tanh_embedding(iteration).to(p.device)
    return torch.cat([normalized, step.expand(tuple(p.shape) + step.shape)], dim=-1)


def lstm_tensor_features(p: Tensor, mom: Tensor, rms: Tensor, fraction: Tensor, loss_features: Tensor,
                         rank: int) -> Tensor:
    """VeLO's 30 per-tensor LSTM inputs, in learned_optimization's (sorted-name) order: fraction_left (9),
    loss_features (9), mean_rms (1), rank one-hot (5), var_m (3), var_rms (3); the moments scaled by
    1 / RMS(p). var_rms centres rms on the momenta's mean, as the original (and PyLO) do."""
    norm_mult = torch.rsqrt(torch.clamp(torch.mean(p ** 2), min=1e-9))
    m, r = mom * norm_mult, rms * norm_mult
    axes = list(range(p.dim()))
    mean_m = torch.mean(m, dim=axes, keepdim=True)
    var_m = torch.mean((m - mean_m) ** 2, dim=axes)
    mean_rms = torch.mean(r, dim=axes, keepdim=True)
    var_rms = torch.mean((r - mean_m) ** 2, dim=axes)
    one_hot = F.one_hot(torch.tensor(rank, device=p.device), num_classes=5).float()
    logs = clip_log_abs(torch.cat([mean_rms.reshape(-1), var_m, var_rms]), scale=10.0)
    return torch.cat([fraction, loss_features, logs[:1], one_hot, logs[1:]])


def tensor_rank(shape: tuple[int, ...]) -> int:
    """Dimensions larger than 1 (VeLO's rank feature)."""
    return sum(1 for s in shape if s > 1)


class LossBuffer:
    """VeLO's loss history: EMAs of the (clipped) loss at 10 half-lives from 10 steps to the horizon, their
    running minima, and 9 features comparing each EMA with the next longer one (learned_optimization's
    BufferLossAccumulators). State: plain float32 / int64 tensors in a dict."""

    @staticmethod
    def init(num_steps: int, device: torch.device | str = "cpu") -> dict[str, Tensor]:
        end = torch.log10(torch.tensor(float(num_steps), dtype=torch.float32)).item()
        halflife = torch.logspace(1, end, LOSS_TIMESCALES, dtype=torch.float32)
        return {"loss_means": torch.zeros(LOSS_TIMESCALES, device=device),
                "loss_iteration": torch.zeros((), dtype=torch.int64, device=device),
                "loss_running_min": 999999999999.0 * torch.ones(LOSS_TIMESCALES, device=device),
                "loss_decays": torch.exp(-1.0 / halflife).to(device)}

    @staticmethod
    def update_(state: dict[str, Tensor], loss: Tensor) -> None:
        """Add one loss (clipped to twice the largest bias-corrected EMA, so a spike cannot swamp them)."""
        decays, it = state["loss_decays"], state["loss_iteration"]
        cor_mean = state["loss_means"] / (1 - decays ** (it + 1))
        approx_max = torch.where(it == 0, loss, torch.max(cor_mean))
        loss = torch.minimum(torch.abs(approx_max) * 2, loss)
        means = state["loss_means"] * decays + loss * (1.0 - decays)
        cor_mean = means / (1 - decays ** (it + 1))
        state["loss_means"] = means
        state["loss_running_min"] = torch.minimum(state["loss_running_min"], cor_mean)
        state["loss_iteration"] = it + 1

    @staticmethod
    def features(state: dict[str, Tensor]) -> Tensor:
        """9 values in [-1, 1]: where each EMA lies between its running minimum and the next longer EMA
        (zeros for the first 2 losses)."""
        decays, it = state["loss_decays"], state["loss_iteration"]
        cor_mean = state["loss_means"] / (1 - decays ** it)
        approx_max, cor_mean = cor_mean[1:], cor_mean[:-1]
        running_min = state["loss_running_min"][:-1]
        den = torch.clamp(approx_max - running_min, min=1e-8)
        feature = torch.clamp((cor_mean - running_min) / den - 1.0, -1, 1)
        return torch.where(it <= 2, feature * 0, feature)
