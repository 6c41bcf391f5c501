"""Newton–Schulz orthogonalisation (optbench/optim/functional/newton_schulz.py): the quintic's singular-value
band, batching, precision, degenerate inputs, and agreement with muon-optimizer's iteration."""

import muon
import pytest
import torch

from optbench.optim.functional.newton_schulz import newton_schulz, orthogonalize, resolve_dtype

# After 5 steps of the quintic (3.4445, -4.7750, 2.0315) every singular value that is not tiny relative to
# the Frobenius norm lands in a band around 1: about [0.68, 1.13] (Jordan et al. 2024: "S' ~ Uniform(0.5,
# 1.5)"). These seeded Gaussian inputs are well enough conditioned to land inside it.
BAND = (0.6, 1.2)
SHAPES = {"square": (32, 32), "tall": (96, 32), "wide": (32, 128), "experts": (4, 24, 16), "batch2": (2, 3, 8, 5)}


def _gaussian(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _polar(G: torch.Tensor) -> torch.Tensor:
    """The exact U V^T by SVD, in float64."""
    U, _, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    return U @ Vh


def reference_iteration_fp32(G: torch.Tensor, steps: int) -> torch.Tensor:
    """muon-optimizer==0.1.0's zeropower_via_newtonschulz5 transcribed op for op, but in float32."""
    a, b, c = (3.4445, -4.7750, 2.0315)
    X = G.float()
    if G.size(-2) > G.size(-1):
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * A @ A
        X = a * X + B @ X
    if G.size(-2) > G.size(-1):
        X = X.mT
    return X


@pytest.mark.parametrize("kind", SHAPES)
def test_singular_values_land_in_the_quintic_band(kind):
    G = _gaussian(SHAPES[kind])
    out = newton_schulz(G)
    assert out.shape == G.shape and out.dtype == torch.float32
    s = torch.linalg.svdvals(out)
    assert s.min() > BAND[0] and s.max() < BAND[1], f"{kind}: singular values in [{s.min():.3f}, {s.max():.3f}]"
    # The singular vectors are G's: the output is U S' V^T, within the band's distance of the polar factor.
    assert torch.linalg.matrix_norm(out.double() - _polar(G), ord=2).max() < 0.4


@pytest.mark.parametrize("kind", SHAPES)
def test_matches_muon_optimizer_iteration_in_fp32(kind):
    G = _gaussian(SHAPES[kind], seed=1)
    torch.testing.assert_close(newton_schulz(G, steps=5), reference_iteration_fp32(G, 5), rtol=1e-5, atol=1e-5)


def test_matches_muon_optimizer_in_bfloat16_loosely():
    """The reference itself (bfloat16, separate matmuls) against ours in bfloat16 (fused baddbmm): both round
    at bfloat16's ~3 significant digits, in different places, and 5 steps amplify it to ~4% (Frobenius)."""
    G = _gaussian((48, 24), seed=2)
    ours = newton_schulz(G, dtype=torch.bfloat16)
    assert ours.dtype == torch.bfloat16
    theirs = muon.zeropower_via_newtonschulz5(G, steps=5)
    assert (ours.float() - theirs.float()).norm() / theirs.float().norm() < 0.06


def test_each_expert_of_a_3d_tensor_is_its_own_matrix():
    G = _gaussian((3, 16, 8), seed=3)
    G[1] *= 1000.0  # a batch-wide norm would shrink the other experts' singular values out of the band
    batched = newton_schulz(G)
    for e in range(3):
        torch.testing.assert_close(batched[e], newton_schulz(G[e]), rtol=1e-4, atol=1e-5)


def test_float32_and_bfloat16_agree_loosely():
    for shape in SHAPES.values():
        G = _gaussian(shape, seed=4)
        fp32, bf16 = newton_schulz(G, dtype=torch.float32), newton_schulz(G, dtype=torch.bfloat16).float()
        assert (fp32 - bf16).norm() / fp32.norm() < 0.03, shape


def test_zero_matrix_stays_zero_without_nans():
    assert torch.equal(newton_schulz(torch.zeros(5, 3)), torch.zeros(5, 3))
    G = _gaussian((3, 6, 4), seed=5)
    G[2] = 0.0
    out = newton_schulz(G, dtype=torch.bfloat16)
    assert torch.isfinite(out).all() and torch.equal(out[2].float(), torch.zeros(6, 4))


def test_invariant_to_the_input_scale():
    G = _gaussian((20, 12), seed=6)
    torch.testing.assert_close(newton_schulz(1e-3 * G), newton_schulz(G), rtol=1e-4, atol=1e-4)


def test_orthogonalize_batches_by_shape_and_keeps_shapes_and_dtypes():
    tensors = [_gaussian((8, 4), 7), _gaussian((4, 8), 8), _gaussian((8, 4), 9), _gaussian((2, 8, 4), 10).double()]
    out = orthogonalize(tensors, steps=5, ns_dtype="float32")
    assert [t.shape for t in out] == [t.shape for t in tensors]
    assert [t.dtype for t in out] == [t.dtype for t in tensors]
    for t, o in zip(tensors, out):
        torch.testing.assert_close(o, newton_schulz(t, 5, torch.float32).to(t.dtype), rtol=1e-4, atol=1e-5)


def test_auto_dtype_is_bfloat16_on_cuda_and_float32_elsewhere():
    assert resolve_dtype("auto", torch.device("cuda", 0)) == torch.bfloat16
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert resolve_dtype("float32", torch.device("cuda", 0)) == torch.float32


def test_rejects_vectors():
    with pytest.raises(ValueError, match="matrix"):
        newton_schulz(torch.ones(3))
