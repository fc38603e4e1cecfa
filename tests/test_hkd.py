"""Holistic KD (hkd_loss, HolisticMaps; Zhou et al., ICCV 2021), the method compared with LSP
that the LSP paper does not have: against a slow loop written here (one instance at a time),
its gradients, numerics and errors. The scripts run it in tests/test_scripts.py."""
import inspect
import math
import numbers

import pytest
import torch

import lsp_kd
from lsp_kd import HolisticMaps, hkd_loss


def features(N, F_dim, scale, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N, F_dim, generator=g, dtype=torch.float64) * scale).to(dtype)


def maps_for(F_s, F_t, dim, hops, seed, dtype=torch.float64):
    torch.manual_seed(seed)
    return HolisticMaps(F_s, F_t, dim, hops).to(dtype)


# ----------------------------------------------------------------------------------------
# HKD against a loop: the kNN graph pair by pair, matrix powers, one InfoNCE term per instance

def ref_holistic(feat, thetas, k, centre):
    """H = Σ_l (D^{-1/2} A D^{-1/2})^l F Θ_l, A the symmetric kNN graph (no self-loops) built
    instance by instance from sorted distances; rows normalised to unit length. (N, d)
    centre: F minus its mean row first."""
    feat = feat.detach().double()
    N = feat.size(0)
    if centre:
        feat = feat - sum(feat[n] for n in range(N)) / N
    A = torch.zeros(N, N, dtype=torch.float64)
    for i in range(N):
        others = sorted((j for j in range(N) if j != i),
                        key=lambda j: float(((feat[i] - feat[j]) ** 2).sum()))
        for j in others[:k]:
            A[i, j] = A[j, i] = 1.0                           # j among i's k: an edge both ways
    deg = A.sum(1)
    A_hat = A / deg.sqrt()[:, None] / deg.sqrt()[None, :]
    H = sum(torch.linalg.matrix_power(A_hat, l) @ feat @ theta.weight.detach().double().t()
            for l, theta in enumerate(thetas))
    return H / H.norm(dim=1, keepdim=True)


def ref_hkd(feat_s, feat_t, maps, k, tau, centre=True):
    """L_HOL: for every instance i, -log of the positive's share, teacher -> student and
    student -> teacher, each against the batch's other instances j ≠ i; mean over i."""
    h_s = ref_holistic(feat_s, maps.theta_s, k, centre)
    h_t = ref_holistic(feat_t, maps.theta_t, k, centre)
    N = h_s.size(0)
    f = lambda a, b: float(a @ b) / tau                       # noqa: E731, cosine / τ
    total = 0.0
    for i in range(N):
        for anchor, other in ((h_t, h_s), (h_s, h_t)):
            pos = math.exp(f(anchor[i], other[i]))
            neg = sum(math.exp(f(anchor[i], other[j])) for j in range(N) if j != i)
            total -= math.log(pos / (pos + neg))
    return total / N


@pytest.mark.parametrize("centre", [True, False])
@pytest.mark.parametrize("N, F_s, F_t, dim, hops, k, tau", [
    (12, 5, 7, 4, 1, 3, 0.07), (12, 5, 7, 4, 0, 3, 0.5), (15, 3, 9, 6, 2, 4, 0.2),
    (9, 8, 8, 3, 3, 8, 1.0),                                  # N = k + 1: all the others
    (20, 6, 4, 5, 1, 1, 0.1)])
def test_hkd_matches_loop(N, F_s, F_t, dim, hops, k, tau, centre):
    f_s, f_t = features(N, F_s, 1.0, seed=1) + 2, features(N, F_t, 3.0, seed=2)  # a mean
    maps = maps_for(F_s, F_t, dim, hops, seed=3)
    got = hkd_loss(f_s, f_t, maps, k=k, tau=tau, centre=centre)
    assert got.item() == pytest.approx(ref_hkd(f_s, f_t, maps, k, tau, centre), rel=1e-9)
    assert got.item() > 0


def test_hkd_centring_leaves_a_centred_batch_alone():
    f_s, f_t = features(12, 5, 1.0, seed=1), features(12, 7, 1.0, seed=2)
    f_s, f_t = f_s - f_s.mean(0), f_t - f_t.mean(0)
    maps = maps_for(5, 7, 4, 1, seed=3)
    assert hkd_loss(f_s, f_t, maps, k=3).item() == pytest.approx(
        hkd_loss(f_s, f_t, maps, k=3, centre=False).item(), rel=1e-12)
    assert hkd_loss(f_s + 5, f_t, maps, k=3).item() == pytest.approx(   # a shift is removed
        hkd_loss(f_s, f_t, maps, k=3).item(), rel=1e-9)
    assert hkd_loss(f_s + 5, f_t, maps, k=3, centre=False).item() != pytest.approx(
        hkd_loss(f_s, f_t, maps, k=3).item(), rel=1e-3)


def test_hkd_defaults_are_the_hkd_authors_code():
    sig = inspect.signature(hkd_loss).parameters
    assert (sig["k"].default, sig["tau"].default) == (8, 0.07)
    maps = HolisticMaps(5, 7)
    assert len(maps.theta_s) == len(maps.theta_t) == 2          # L = 1 hop
    assert maps.theta_s[0].out_features == 128
    assert all(theta.bias is None for theta in [*maps.theta_s, *maps.theta_t])


def test_hkd_rewards_matching_the_teacher():
    """The student's features equal to the teacher's (and its maps the teacher's) give a lower
    loss than unrelated features; with every pair alike it is 2 log N."""
    f_t = features(16, 6, 1.0, seed=4)
    maps = maps_for(6, 6, 5, 1, seed=5)
    maps.theta_s.load_state_dict(maps.theta_t.state_dict())
    same = hkd_loss(f_t.clone(), f_t, maps, k=3)
    other = hkd_loss(features(16, 6, 1.0, seed=6), f_t, maps, k=3)
    assert same.item() < other.item()
    alike = hkd_loss(f_t, f_t, maps, k=3, tau=1e12)           # f ≈ 0 for every pair
    assert alike.item() == pytest.approx(2 * math.log(16), rel=1e-9)


def test_hkd_gradients_reach_the_student_and_both_maps_not_the_teacher():
    f_s = features(14, 5, 1.0, seed=7, dtype=torch.float32).requires_grad_()
    f_t = features(14, 9, 1.0, seed=8, dtype=torch.float32).requires_grad_()
    maps = maps_for(5, 9, 4, 2, seed=9, dtype=torch.float32)
    hkd_loss(f_s, f_t, maps, k=3).backward()
    assert f_t.grad is None
    assert f_s.grad is not None and f_s.grad.abs().sum() > 0
    for theta in [*maps.theta_s, *maps.theta_t]:              # every hop, both models
        assert theta.weight.grad is not None and theta.weight.grad.abs().sum() > 0


def test_hkd_gradcheck_float64():
    f_s = features(8, 3, 1.0, seed=10).requires_grad_()
    f_t = features(8, 4, 1.0, seed=11)
    maps = maps_for(3, 4, 3, 2, seed=12)
    w_s, w_t = maps.theta_s[1].weight, maps.theta_t[2].weight
    assert torch.autograd.gradcheck(lambda fs, ws, wt: hkd_loss(fs, f_t, maps, k=2, tau=0.3),
                                    (f_s, w_s, w_t))


def test_hkd_huge_norms_finite():
    f_s = features(20, 16, 1.0, seed=13, dtype=torch.float32)
    f_t = features(20, 24, 1.0, seed=14, dtype=torch.float32)
    f_s = (f_s / f_s.norm(dim=1, keepdim=True) * 1e4).requires_grad_()
    f_t = f_t / f_t.norm(dim=1, keepdim=True) * 1e4
    maps = maps_for(16, 24, 8, 2, seed=15, dtype=torch.float32)
    loss = hkd_loss(f_s, f_t, maps, k=4)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert torch.isfinite(f_s.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in maps.parameters())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_hkd_half_precision(dtype):
    f_s = features(20, 16, 1.0, seed=16, dtype=torch.float32)
    f_t = features(20, 24, 30.0, seed=17, dtype=torch.float32)
    maps = maps_for(16, 24, 8, 1, seed=18, dtype=torch.float32)
    h_s, h_t = f_s.to(dtype).requires_grad_(), f_t.to(dtype)
    loss = hkd_loss(h_s, h_t, maps, k=4)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    exact = hkd_loss(h_s.detach().float(), h_t.float(), maps, k=4)  # the rounded features
    assert loss.item() == pytest.approx(exact.item(), rel=1e-6)
    loss.backward()
    assert h_s.grad.dtype == dtype and torch.isfinite(h_s.grad.float()).all()


@pytest.mark.parametrize("case", ["batch smaller than k + 1", "k 0", "rows", "1-d", "nan", "inf"])
def test_hkd_errors(case):
    f_s, f_t, maps = torch.randn(8, 5), torch.randn(8, 7), HolisticMaps(5, 7, 4)
    call, message = {
        "batch smaller than k + 1": (lambda: hkd_loss(f_s, f_t, maps, k=8), "k must be in"),
        "k 0": (lambda: hkd_loss(f_s, f_t, maps, k=0), "k must be in"),
        "rows": (lambda: hkd_loss(f_s, f_t[:7], maps, k=3), "same N"),
        "1-d": (lambda: hkd_loss(f_s[0], f_t[0], maps, k=3), "feat_s must be a 2-d"),
        "nan": (lambda: hkd_loss(f_s.index_fill(0, torch.tensor([2]), float("nan")), f_t, maps,
                                 k=3), "feat_s contains NaN"),
        "inf": (lambda: hkd_loss(f_s, f_t.index_fill(0, torch.tensor([2]), float("inf")), maps,
                                 k=3), "feat_t contains NaN or inf"),
    }[case]
    with pytest.raises(ValueError, match=message.replace("+", r"\+")):
        call()
    hkd_loss(f_s, f_t, maps, k=7)                            # N = k + 1 is enough


def test_pastes_alone():
    """The source of hkd_loss, HolisticMaps, check and number, run where only torch exists,
    gives the module's numbers."""
    namespace = {"torch": torch, "F": torch.nn.functional, "math": math, "numbers": numbers}
    for f in (lsp_kd.check, lsp_kd.number, lsp_kd.HolisticMaps):
        exec(inspect.getsource(f), namespace)
    exec(inspect.getsource(hkd_loss), namespace)
    f_s, f_t = features(12, 5, 1.0, seed=30), features(12, 7, 1.0, seed=31)
    maps = maps_for(5, 7, 4, 2, seed=32)
    pasted_maps = namespace["HolisticMaps"](5, 7, 4, 2).double()
    pasted_maps.load_state_dict(maps.state_dict())
    assert namespace["hkd_loss"](f_s, f_t, pasted_maps).item() == hkd_loss(f_s, f_t, maps).item()
