"""The two methods compared with LSP that the LSP paper does not have: Holistic KD (hkd_loss,
HolisticMaps) and the label-correlation KD of the HKD authors' slides
(label_correlation_loss). Each against a slow loop written here (one instance, one row at a
time), their gradients, numerics and errors; then their flags, terms and names in
experiment.py, and both scripts end to end with `--dry-run`."""
import argparse
import inspect
import math
import os
import subprocess
import sys

import pytest
import torch

import experiment
import lsp_kd
import train_modelnet
import train_ppi
from lsp_kd import HolisticMaps, hkd_loss, label_correlation_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def test_hkd_defaults_are_the_flags_defaults():
    sig = inspect.signature(hkd_loss).parameters
    assert (sig["k"].default, sig["tau"].default) == (experiment.HKD_DEFAULTS["hkd_k"][0],
                                                      experiment.HKD_DEFAULTS["hkd_tau"][0])
    maps = HolisticMaps(5, 7)
    assert len(maps.theta_s) == len(maps.theta_t) == experiment.HKD_DEFAULTS["hkd_layers"][0] + 1
    assert maps.theta_s[0].out_features == experiment.HKD_DEFAULTS["hkd_dim"][0]
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
        "batch smaller than k + 1": (lambda: hkd_loss(f_s, f_t, maps, k=8), "k + 1 = 9"),
        "k 0": (lambda: hkd_loss(f_s, f_t, maps, k=0), "k >= 1"),
        "rows": (lambda: hkd_loss(f_s, f_t[:7], maps, k=3), "same N"),
        "1-d": (lambda: hkd_loss(f_s[0], f_t[0], maps, k=3), "same N"),
        "nan": (lambda: hkd_loss(f_s.index_fill(0, torch.tensor([2]), float("nan")), f_t, maps,
                                 k=3), "student's features contain NaN"),
        "inf": (lambda: hkd_loss(f_s, f_t.index_fill(0, torch.tensor([2]), float("inf")), maps,
                                 k=3), "teacher's features contain NaN or inf"),
    }[case]
    with pytest.raises(ValueError, match=message.replace("+", r"\+")):
        call()
    hkd_loss(f_s, f_t, maps, k=7)                            # N = k + 1 is enough


# ----------------------------------------------------------------------------------------
# The label correlation against a loop: P(L_j | L_i) one row at a time

def ref_label_correlation(logits_s, logits_t):
    """Per row i: P(L_j | L_i) = Σ_n p_ni p_nj / Σ_n p_ni for every j ≠ i, from sums over the
    nodes; the row's mean Bernoulli KL(P^t || P^s); then the mean over the rows."""
    p_s, p_t = torch.sigmoid(logits_s.detach().double()), torch.sigmoid(logits_t.double())
    N, C = p_s.shape
    rows = []
    for i in range(C):
        kls = []
        for j in range(C):
            if j == i:
                continue
            cond = [sum(float(p[n, i] * p[n, j]) for n in range(N)) / sum(float(p[n, i])
                                                                          for n in range(N))
                    for p in (p_t, p_s)]                      # P^t(L_j | L_i), P^s(L_j | L_i)
            t, s = cond
            kls.append(t * math.log(t / s) + (1 - t) * math.log((1 - t) / (1 - s)))
        rows.append(sum(kls) / len(kls))
    return sum(rows) / C


@pytest.mark.parametrize("N, C, scale", [(30, 5, 1.0), (12, 2, 2.0), (40, 7, 0.3)])
def test_label_correlation_matches_loop(N, C, scale):
    z_s, z_t = features(N, C, scale, seed=20), features(N, C, 2 * scale, seed=21)
    got = label_correlation_loss(z_s, z_t)
    assert got.item() == pytest.approx(ref_label_correlation(z_s, z_t), rel=1e-9)
    assert got.item() > 1e-4


def test_label_correlation_is_asymmetric_and_zero_iff_equal():
    """P(L_j | L_i) ≠ P(L_i | L_j): a student whose matrix is the teacher's transposed still
    pays; the loss is 0 only when the matrices agree."""
    z_t = features(25, 4, 1.5, seed=22)
    assert label_correlation_loss(z_t.clone(), z_t).item() == 0.0
    # label 0 frequent, label 1 rare and only where 0 is: P(L_0 | L_1) ≈ 1 > P(L_1 | L_0)
    z = torch.full((40, 2), -8.0, dtype=torch.float64)
    z[:30, 0], z[:5, 1] = 8.0, 8.0
    p = torch.sigmoid(z)
    cond = (p.t() @ p) / p.sum(0)[:, None]                   # [i, j] = P(L_j | L_i)
    assert cond[1, 0] > 0.99 and cond[0, 1] < 0.2
    assert label_correlation_loss(z.flip(1), z).item() > 0.1  # the labels swapped


def test_label_correlation_gradient_reaches_the_student_only():
    z_s = features(20, 6, 1.0, seed=23).requires_grad_()
    z_t = features(20, 6, 1.0, seed=24).requires_grad_()
    label_correlation_loss(z_s, z_t).backward()
    assert z_t.grad is None and z_s.grad.abs().sum() > 0
    small_t = features(8, 3, 1.0, seed=25)
    assert torch.autograd.gradcheck(lambda z: label_correlation_loss(z, small_t),
                                    (features(8, 3, 1.0, seed=26).requires_grad_(),))


def test_label_correlation_huge_logits_finite():
    """Logits of 1e4 (saturated sigmoids, labels no node holds, P exactly 0 or 1) stay finite."""
    z_s = (features(30, 5, 1.0, seed=26, dtype=torch.float32) * 1e4).requires_grad_()
    z_t = features(30, 5, 1.0, seed=27, dtype=torch.float32) * 1e4
    z_t[:, 2] = -1e4                                          # a label that no node holds
    loss = label_correlation_loss(z_s, z_t)
    assert torch.isfinite(loss) and loss.item() >= 0
    loss.backward()
    assert torch.isfinite(z_s.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_label_correlation_half_precision(dtype):
    z_s = features(30, 6, 2.0, seed=28, dtype=torch.float32)
    z_t = features(30, 6, 2.0, seed=29, dtype=torch.float32)
    h_s, h_t = z_s.to(dtype).requires_grad_(), z_t.to(dtype)
    loss = label_correlation_loss(h_s, h_t)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    exact = label_correlation_loss(h_s.detach().float(), h_t.float())
    assert loss.item() == pytest.approx(exact.item(), rel=1e-6)
    loss.backward()
    assert h_s.grad.dtype == dtype and torch.isfinite(h_s.grad.float()).all()


def test_label_correlation_errors():
    z = torch.randn(6, 4)
    for a, b in ((z[:5], z), (torch.randn(6, 3), z), (z[:, :1], z[:, :1]), (z[0], z[0])):
        with pytest.raises(ValueError, match="same shape"):
            label_correlation_loss(a, b)
    for bad in (float("nan"), float("inf")):  # as lsp_loss and hkd_loss: not a NaN loss
        with pytest.raises(ValueError, match="student's logits contain NaN or inf"):
            label_correlation_loss(z * bad, z)
        with pytest.raises(ValueError, match="teacher's logits contain NaN or inf"):
            label_correlation_loss(z, torch.full_like(z, bad))


@pytest.mark.parametrize("name", ["hkd_loss", "label_correlation_loss"])
def test_pastes_alone(name):
    """The function's source, run where only `torch` exists, gives the module's numbers."""
    namespace = {"torch": torch}
    exec(inspect.getsource(lsp_kd.HolisticMaps), namespace)
    exec(inspect.getsource(getattr(lsp_kd, name)), namespace)
    if name == "hkd_loss":
        f_s, f_t = features(12, 5, 1.0, seed=30), features(12, 7, 1.0, seed=31)
        maps = maps_for(5, 7, 4, 2, seed=32)
        pasted_maps = namespace["HolisticMaps"](5, 7, 4, 2).double()
        pasted_maps.load_state_dict(maps.state_dict())
        args, pasted_args = (f_s, f_t, maps), (f_s, f_t, pasted_maps)
    else:
        args = pasted_args = (features(12, 5, 1.0, seed=33), features(12, 5, 1.0, seed=34))
    assert namespace[name](*pasted_args).item() == getattr(lsp_kd, name)(*args).item()


# ----------------------------------------------------------------------------------------
# experiment.py: the flags, the terms of one step, the method's name and row

def distill_parser(multilabel=False):
    p = argparse.ArgumentParser()
    experiment.add_distill_args(p)
    if multilabel:
        experiment.add_multilabel_args(p)
    return p


def test_distill_terms_hkd_and_label_correlation_weigh_into_the_loss():
    g = torch.Generator().manual_seed(0)
    N, ei = 30, torch.randint(0, 30, (2, 120), generator=g)
    f_s, f_t = torch.randn(N, 6, generator=g), torch.randn(N, 9, generator=g)
    logits_s, logits_t = torch.randn(N, 5, generator=g), torch.randn(N, 5, generator=g)
    maps = HolisticMaps(6, 9, 8, 2)
    args = distill_parser(multilabel=True).parse_args(
        ["--kd", "--hkd", "--kd-corr", "--hkd-k", "4", "--hkd-tau", "0.2", "--hkd-weight", "2",
         "--kd-corr-weight", "3"])
    teacher = experiment.TeacherOutput(f_t, logits_t)
    terms = experiment.distill_terms(args, f_s, logits_s, ei, teacher, None, hkd_maps=maps,
                                     multilabel=True)       # PPI: the instances are the nodes
    assert list(terms) == ["kd", "kd_corr", "hkd"]
    torch.testing.assert_close(terms["hkd"], hkd_loss(f_s, f_t, maps, k=4, tau=0.2))
    torch.testing.assert_close(terms["kd_corr"], label_correlation_loss(logits_s, logits_t))
    task = torch.tensor(0.7)
    want = 0.9 * task + 0.1 * terms["kd"] + 2 * terms["hkd"] + 3 * terms["kd_corr"]
    torch.testing.assert_close(experiment.total_loss(args, task, terms), want)
    # ModelNet40: the instances are the clouds, pooled_s and the teacher's inst
    pooled_s, pooled_t = torch.randn(10, 6, generator=g), torch.randn(10, 9, generator=g)
    args = distill_parser().parse_args(["--hkd"])
    terms = experiment.distill_terms(args, f_s, logits_s[:10], ei, experiment.TeacherOutput(
        f_t, inst=pooled_t), None, hkd_maps=maps, inst_s=pooled_s)
    assert list(terms) == ["hkd"]
    torch.testing.assert_close(terms["hkd"], hkd_loss(pooled_s, pooled_t, maps))
    torch.testing.assert_close(experiment.total_loss(args, task, terms),
                               task + experiment.HKD_WEIGHT * terms["hkd"])


@pytest.mark.parametrize("argv, name", [
    (["--hkd"], "Student_hkd"), (["--hkd", "--kd"], "Student_kd+hkd"),
    (["--kd-corr"], "Student_kd_corr"), (["--kd", "--kd-corr", "--hkd"], "Student_kd+kd_corr+hkd"),
    (["--hkd", "--lsp", "--sigma", "auto"], "Student_lsp_rbf-sigmaauto+hkd"),
    (["--hkd", "--hkd-k", "4", "--hkd-tau", "0.1", "--hkd-weight", "5"], "Student_hkd-k4-tau0.1"),
    (["--hkd", "--hkd-layers", "2", "--hkd-dim", "64"], "Student_hkd-L2-dim64"),
])
def test_method_name_and_no_paper_row(argv, name):
    args = distill_parser(multilabel=True).parse_args(argv)
    assert experiment.method_name(args) == name
    assert experiment.distilling(args)
    assert experiment.paper_row(args, "ppi") is None
    assert experiment.paper_row(args, "modelnet") is None


def test_paper_rows_of_the_paper_methods_unchanged():
    p = distill_parser(multilabel=True)
    assert experiment.paper_row(p.parse_args([]), "ppi") == "student"
    assert experiment.paper_row(p.parse_args(["--kd"]), "modelnet") == "kd"
    assert experiment.paper_row(p.parse_args(["--lsp"]), "ppi") == "lsp_rbf"


# ----------------------------------------------------------------------------------------
# The scripts end to end, and their flag checks

def run(script, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args],
                          capture_output=True, text=True, timeout=300)


def results(out_dir):
    import json
    (run_dir,) = [p for p in os.scandir(out_dir) if p.is_dir()]
    with open(os.path.join(run_dir.path, "results.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("script, flags, method", [
    ("train_ppi.py", ["--hkd"], "Student_hkd"),
    ("train_ppi.py", ["--kd-corr"], "Student_kd_corr"),
    ("train_ppi.py", ["--hkd", "--kd"], "Student_kd+hkd"),
    ("train_modelnet.py", ["--hkd"], "Student_hkd"),
    ("train_modelnet.py", ["--hkd", "--kd"], "Student_kd+hkd"),
])
def test_dry_run(tmp_path, script, flags, method):
    p = run(script, "--data", "synthetic", "--dry-run", "--out-dir", str(tmp_path), *flags)
    assert p.returncode == 0, p.stderr
    res = results(tmp_path)
    assert res["method"] == method and res["synthetic"] is True
    assert res["args"]["dry_run"] is True
    for term in ("hkd", "kd_corr"):                           # its column in the epoch line
        assert (f"| {term} " in p.stdout) == (f"--{term.replace('_', '-')}" in flags)
    # no row of the paper beside it: dashes where its figures would be
    (row,) = [line for line in p.stdout.splitlines() if line.startswith(f"[synthetic] {method} ")]
    assert row.rstrip().endswith("| - - - -" if script == "train_ppi.py" else "| - - - - -")


@pytest.mark.parametrize("script, flags, message", [
    ("train_modelnet.py", ["--hkd", "--batch-size", "4", "--hkd-k", "8"],
     "--batch-size must be >= --hkd-k + 1 = 9 with --hkd"),
    ("train_modelnet.py", ["--hkd", "--batch-size", "6", "--hkd-k", "6"],
     "--batch-size must be >= --hkd-k + 1 = 7"),
    ("train_ppi.py", ["--hkd", "--hkd-k", "500"], "--hkd-k 500 needs k + 1 = 501 nodes"),
    ("train_ppi.py", ["--kd-corr-weight", "-1"], "--kd-corr-weight must be >= 0"),
    ("train_modelnet.py", ["--kd-corr"], "unrecognized arguments: --kd-corr"),
] + [(script, flags, message) for script in ("train_ppi.py", "train_modelnet.py")
     for flags, message in ((["--hkd-k", "0"], "--hkd-k must be >= 1"),
                            (["--hkd-tau", "0"], "--hkd-tau must be > 0"),
                            (["--hkd-tau", "nan"], "--hkd-tau must be > 0"),
                            (["--hkd-layers", "-1"], "--hkd-layers must be >= 0"),
                            (["--hkd-dim", "0"], "--hkd-dim must be >= 1"),
                            (["--hkd-weight", "-1"], "--hkd-weight must be >= 0"))])
def test_bad_hkd_flags_end_in_one_error_line(tmp_path, script, flags, message):
    p = run(script, "--dry-run", "--out-dir", str(tmp_path / "out"), *flags)
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], p.stderr
    assert not list((tmp_path / "out").rglob("results.json"))


def test_modelnet_dry_run_keeps_k_plus_one_clouds_a_batch():
    args = train_modelnet.get_args(["--dry-run", "--hkd"])
    assert args.batch_size == args.hkd_k + 1 == 9
    assert train_modelnet.get_args(["--dry-run"]).batch_size == 4
    assert train_modelnet.get_args(["--dry-run", "--hkd", "--hkd-k", "2"]).batch_size == 4


def test_kd_corr_is_a_ppi_flag():
    assert train_ppi.get_args(["--kd-corr"]).kd_corr
    assert not hasattr(train_modelnet.get_args([]), "kd_corr")
