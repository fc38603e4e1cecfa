"""Tests of lsp_kd.py: the local structure and the LSP loss (Eq. 3-8), the union graph
(Sec. 3.5) and the neighbour rank correlation against per-node Python loops written here
(and SciPy), their properties (LS_i sums to 1, loss 0 iff equal structures, no gradient to
the teacher, stability, float64 gradcheck), and the KD / FitNet / AT baselines against
hand-written formulas."""
import inspect
import math
import numbers

import numpy as np
import pytest
import torch

import lsp_kd
from lsp_kd import (KERNELS, at_loss, fitnet_loss, kd_loss, log_local_structure, lsp_loss,
                    union_graph)
from structure import neighbour_rank_correlation


def local_structure(*args, **kw):
    return log_local_structure(*args, **kw).exp()


# ----------------------------------------------------------------------------------------
# Reference: one centre node at a time

def ref_sim(kernel, z_i, z_j, sigma=1.0, degree=2, c=0.0, scale=100.0):
    """SIM(z_i, z_j) written out from Eq. (4), Eq. (8) and the official code."""
    if kernel == "l2":                                       # Eq. (4), literal
        return ((z_i - z_j) ** 2).sum()
    if kernel == "rbf":
        return torch.exp(-((z_i - z_j) ** 2).sum() / (2 * sigma ** 2))
    if kernel == "poly":
        return ((z_i * z_j).sum() + c) ** degree
    if kernel == "linear":
        return (z_i * z_j).sum()
    if kernel == "l1_official":
        return torch.exp(-(z_i - z_j).abs().sum() / scale)
    raise AssertionError(kernel)


def ref_log_local_structure(feat, edge_index, kernel, **kw):
    """log LS per edge, Eq. (3): a (log-)softmax of SIM over the incoming edges of each
    centre i."""
    feat = feat.detach().double()
    src, dst = edge_index.tolist()
    log_ls = torch.zeros(len(src), dtype=torch.float64)
    for i in range(feat.size(0)):
        edges = [e for e in range(len(src)) if dst[e] == i]
        if not edges:
            continue
        sims = torch.stack([ref_sim(kernel, feat[i], feat[src[e]], **kw) for e in edges])
        log_ls[edges] = torch.log_softmax(sims, dim=0)
    return log_ls


def ref_local_structure(feat, edge_index, kernel, **kw):
    return ref_log_local_structure(feat, edge_index, kernel, **kw).exp()


def ref_lsp(feat_s, feat_t, edge_index, kernel, teacher_first=False, **kw):
    """Eq. (5)-(6): S_i = KL(LS_i^s || LS_i^t), mean over all N nodes (isolated ones add 0)."""
    log_s = ref_log_local_structure(feat_s, edge_index, kernel, **kw)
    log_t = ref_log_local_structure(feat_t, edge_index, kernel, **kw)
    N = feat_s.size(0)
    dst = edge_index[1].tolist()
    total = 0.0
    for i in range(N):
        edges = [e for e in range(len(dst)) if dst[e] == i]
        log_p, log_q = log_s[edges], log_t[edges]
        if teacher_first:
            log_p, log_q = log_q, log_p
        total += float((log_p.exp() * (log_p - log_q)).sum())   # Σ p log(p / q)
    return total / N


def make_graph():
    """12 nodes: random edges, a duplicate edge, a self-loop, one centre with a single
    incoming edge (11) and isolated centres (9, 10)."""
    g = torch.Generator().manual_seed(0)
    src = torch.randint(0, 12, (40,), generator=g)
    dst = torch.randint(0, 9, (40,), generator=g)
    extra = torch.tensor([[3, 3, 5, 2], [7, 7, 5, 11]])  # (3,7) twice, self-loop (5,5)
    return torch.cat([torch.stack([src, dst]), extra], dim=1)


# (kernel, kernel kwargs, feature scale keeping the kernel unsaturated)
KERNEL_CASES = [
    ("l2", {}, 0.3),
    ("rbf", {}, 0.3),
    ("rbf", {"sigma": 2.0}, 1.0),
    ("poly", {}, 0.5),
    ("poly", {"degree": 3}, 0.5),
    ("poly", {"degree": 3, "c": 1.0}, 0.3),
    ("linear", {}, 0.5),
    ("l1_official", {}, 20.0),
]
KERNEL_CASES_DEFAULT_SCALE = [(k, s) for k, kw, s in KERNEL_CASES if not kw]
CASE_IDS = [k + "".join(f"-{a}{v}" for a, v in kw.items()) for k, kw, _ in KERNEL_CASES]


def test_kernel_cases_cover_every_kernel():
    assert {k for k, _, _ in KERNEL_CASES} == set(KERNELS) == {
        "l2", "rbf", "poly", "linear", "l1_official"}


def features(N, F_dim, scale, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N, F_dim, generator=g, dtype=torch.float64) * scale).to(dtype)


@pytest.mark.parametrize("kernel,kw,scale", KERNEL_CASES, ids=CASE_IDS)
def test_local_structure_matches_loop(kernel, kw, scale):
    edge_index = make_graph()
    feat = features(12, 8, scale, seed=1)
    ls = local_structure(feat, edge_index, kernel, **kw)
    ref = ref_local_structure(feat, edge_index, kernel, **kw)
    assert ls.shape == (edge_index.size(1),)
    torch.testing.assert_close(ls, ref, rtol=1e-9, atol=1e-12)
    # discriminative: the structure is far from uniform over each centre's edges
    deg = torch.zeros(12, dtype=torch.float64).index_add_(0, edge_index[1],
                                                          torch.ones(edge_index.size(1),
                                                                     dtype=torch.float64))
    assert (ref - 1 / deg[edge_index[1]]).abs().max() > 1e-2
    # float32 input follows the same reference
    ls32 = local_structure(feat.float(), edge_index, kernel, **kw)
    assert ls32.dtype == torch.float32
    torch.testing.assert_close(ls32.double(), ref, rtol=1e-4, atol=1e-6)


PAIR_TERMS = {"rbf": lambda z_i, z_j: (z_i - z_j).pow(2).sum(-1),   # autograd's reference
              "l2": lambda z_i, z_j: (z_i - z_j).pow(2).sum(-1),
              "poly": lambda z_i, z_j: (z_i * z_j).sum(-1),
              "linear": lambda z_i, z_j: (z_i * z_j).sum(-1),
              "l1_official": lambda z_i, z_j: (z_i - z_j).abs().sum(-1)}


def knn_union(N_per_cloud=16, clouds=3, seed=8):
    """A union of two kNN graphs (k 4 and 6) over different features: ModelNet40's kind."""
    from models import knn_graph
    x_s, x_t = (features(clouds * N_per_cloud, 3, 1.0, seed=s) for s in (seed, seed + 1))
    return union_graph(knn_graph(x_s.view(clouds, N_per_cloud, 3), 4),
                       knn_graph(x_t.view(clouds, N_per_cloud, 3), 6), clouds * N_per_cloud)


def random_table(N, K, seed):
    """(N, K) neighbour ids with repeats within rows and self-loops."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, N, (N, K), generator=g)


@pytest.mark.parametrize("graph", ["random", "knn_union", "table"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_pair_terms_equal_autograd(kernel, graph, monkeypatch):
    """PairTerms (blocks, a written-out backward) against autograd on the plain formula over
    all pairs at once: the same values and gradients, in many blocks of 3 rows, on edge
    lists (a random graph with duplicates, self-loops, unsorted; a union of kNN graphs) and
    on a table of 7 neighbours a centre; and float64 gradcheck."""
    if graph == "table":
        N = 30
        nbr, centre = random_table(N, 7, seed=6), torch.arange(N)
    else:
        edge_index = random_graph(30, 100, seed=6) if graph == "random" else knn_union()
        N, nbr, centre = int(edge_index.max()) + 1, edge_index[0, :, None], edge_index[1]
    monkeypatch.setattr(lsp_kd, "BLOCK", 3 * (nbr.size(1) + 1) * 8)     # 3 rows a block
    feat = features(N, 8, 0.7, seed=7).requires_grad_()
    weights = torch.randn(nbr.shape, dtype=torch.float64)
    got = lsp_kd.PairTerms.apply(feat, centre, nbr, kernel)
    want = PAIR_TERMS[kernel](feat[centre][:, None], feat[nbr])
    assert nbr.size(0) > 9 * 3 and (nbr == centre[:, None]).any()      # many blocks, loops
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad((got * weights).sum(), feat)[0],
                               torch.autograd.grad((want * weights).sum(), feat)[0],
                               rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda f: lsp_kd.PairTerms.apply(f, centre, nbr, kernel),
                                     (feat,))


def test_local_structure_in_edge_blocks():
    """The pairs are gathered in blocks of BLOCK // 2F edges: with F = 2^15 a block is 8
    edges, so 300 edges make 38 blocks; values and gradients of every kernel must equal a
    one-shot computation (per-centre log_softmax of SIM over all edges at once)."""
    g = torch.Generator().manual_seed(3)
    N, F_dim, E = 30, 2 ** 15, 300
    sims = {"rbf": lambda t: torch.exp(-t / 2), "l2": lambda t: t, "linear": lambda t: t,
            "poly": lambda t: t ** 2, "l1_official": lambda t: torch.exp(-t / 100)}
    edge_index = torch.stack([torch.randint(0, N, (E,), generator=g),
                              torch.randint(0, N, (E,), generator=g)])   # unsorted centres
    feat = features(N, F_dim, 0.3 / F_dim ** 0.5, seed=4).requires_grad_()
    feat_t = features(N, F_dim, 0.3 / F_dim ** 0.5, seed=5)
    weights = torch.rand(E, generator=g, dtype=torch.float64)
    for kernel in KERNELS:
        src, dst = edge_index
        sim = sims[kernel](PAIR_TERMS[kernel](feat[dst], feat[src]) * (
            1e3 if kernel == "l1_official" else 1))                          # one block
        ref = torch.zeros(E, dtype=torch.float64)
        for i in range(N):
            ref = ref.index_put(((dst == i).nonzero()[:, 0],),
                                torch.log_softmax(sim[dst == i], dim=0))
        grad_ref, = torch.autograd.grad((ref * weights).sum(), feat)
        log_ls = log_local_structure(feat * (1e3 if kernel == "l1_official" else 1),
                                     edge_index, kernel)
        grad, = torch.autograd.grad((log_ls * weights).sum(), feat)
        torch.testing.assert_close(log_ls, ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-12)
        assert (ref - ref.mean()).abs().max() > 1e-3                         # not uniform
        torch.testing.assert_close(lsp_loss(feat, feat_t, edge_index, kernel).item(),
                                   ref_lsp(feat, feat_t, edge_index, kernel), rtol=1e-9,
                                   atol=1e-12)


@pytest.mark.parametrize("teacher_first", [False, True])
@pytest.mark.parametrize("kernel,kw,scale", KERNEL_CASES, ids=CASE_IDS)
def test_lsp_loss_matches_loop(kernel, kw, scale, teacher_first):
    edge_index = make_graph()
    feat_s = features(12, 8, scale, seed=2)
    feat_t = features(12, 8, scale, seed=3)
    loss = lsp_loss(feat_s, feat_t, edge_index, kernel, teacher_first=teacher_first, **kw)
    ref = ref_lsp(feat_s, feat_t, edge_index, kernel, teacher_first=teacher_first, **kw)
    assert ref > 1e-3                                    # not a degenerate comparison
    assert loss.dim() == 0
    assert math.isclose(loss.item(), ref, rel_tol=1e-9)
    loss32 = lsp_loss(feat_s.float(), feat_t.float(), edge_index, kernel,
                     teacher_first=teacher_first, **kw)
    assert loss32.dtype == torch.float32
    assert math.isclose(loss32.item(), ref, rel_tol=1e-4)


def test_teacher_first_differs_from_student_first():
    edge_index = make_graph()
    feat_s, feat_t = features(12, 8, 0.3, seed=2), features(12, 8, 0.3, seed=3)
    a = lsp_loss(feat_s, feat_t, edge_index, "rbf")
    b = lsp_loss(feat_s, feat_t, edge_index, "rbf", teacher_first=True)
    assert abs(a.item() - b.item()) > 1e-6
    # KL(t || s) with (s, t) swapped is KL(s || t)
    c = lsp_loss(feat_t, feat_s, edge_index, "rbf", teacher_first=True)
    assert math.isclose(a.item(), c.item(), rel_tol=1e-10)


@pytest.mark.parametrize("kernel,kw,scale", KERNEL_CASES, ids=CASE_IDS)
def test_lsp_different_widths(kernel, kw, scale):
    edge_index = make_graph()
    feat_s = features(12, 8, scale, seed=4)
    feat_t = features(12, 32, scale, seed=5) / 2         # same typical norm as feat_s
    loss = lsp_loss(feat_s, feat_t, edge_index, kernel, **kw)
    ref = ref_lsp(feat_s, feat_t, edge_index, kernel, **kw)
    assert ref > 1e-4
    assert math.isclose(loss.item(), ref, rel_tol=1e-9)


# ----------------------------------------------------------------------------------------
# Properties

@pytest.mark.parametrize("kernel,kw,scale", KERNEL_CASES, ids=CASE_IDS)
def test_local_structure_sums_to_one(kernel, kw, scale):
    edge_index = make_graph()
    ls = local_structure(features(12, 8, scale, seed=6, dtype=torch.float32), edge_index,
                         kernel, **kw)
    assert (ls >= 0).all()
    sums = torch.zeros(12).index_add_(0, edge_index[1], ls)
    has_edge = torch.zeros(12, dtype=torch.bool)
    has_edge[edge_index[1]] = True
    torch.testing.assert_close(sums[has_edge], torch.ones(int(has_edge.sum())))
    assert not has_edge[9] and not has_edge[10]
    assert (sums[~has_edge] == 0).all()
    # the centre with one incoming edge: LS = 1 exactly
    assert ls[edge_index[1] == 11].item() == pytest.approx(1.0, abs=1e-7)


@pytest.mark.parametrize("kernel,kw,scale", KERNEL_CASES, ids=CASE_IDS)
def test_lsp_zero_iff_equal(kernel, kw, scale):
    edge_index = make_graph()
    feat = features(12, 8, scale, seed=7, dtype=torch.float32)
    same = lsp_loss(feat, feat, edge_index, kernel, **kw)
    assert abs(same.item()) < 1e-6
    other = features(12, 8, scale, seed=8, dtype=torch.float32)
    assert lsp_loss(other, feat, edge_index, kernel, **kw).item() > 1e-4
    assert lsp_loss(other, feat, edge_index, kernel, teacher_first=True, **kw).item() > 1e-4


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_lsp_no_gradient_to_teacher(kernel):
    edge_index = make_graph()
    feat_s = features(12, 8, 0.5, seed=9, dtype=torch.float32).requires_grad_()
    feat_t = features(12, 16, 0.5, seed=10, dtype=torch.float32).requires_grad_()
    loss = lsp_loss(feat_s, feat_t, edge_index, kernel)
    loss.backward()
    assert feat_t.grad is None
    assert feat_s.grad is not None and torch.isfinite(feat_s.grad).all()
    assert feat_s.grad.abs().max() > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_lsp_half_precision(kernel, dtype):
    edge_index = make_graph()
    scale = dict(KERNEL_CASES_DEFAULT_SCALE)[kernel]
    f_s = features(12, 8, scale, seed=11, dtype=torch.float32)
    f_t = features(12, 8, scale, seed=12, dtype=torch.float32)
    h_s, h_t = f_s.to(dtype).requires_grad_(), f_t.to(dtype)
    loss = lsp_loss(h_s, h_t, edge_index, kernel)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    # exactly the float32 computation on the rounded features ...
    exact = lsp_loss(h_s.detach().float(), h_t.float(), edge_index, kernel)
    assert math.isclose(loss.item(), exact.item(), rel_tol=1e-6, abs_tol=1e-7)
    # ... and close to the float32 computation on the original ones
    full = lsp_loss(f_s, f_t, edge_index, kernel)
    assert math.isclose(loss.item(), full.item(), rel_tol=0.1)
    loss.backward()
    assert h_s.grad.dtype == dtype and torch.isfinite(h_s.grad.float()).all()


@pytest.mark.parametrize("teacher_first", [False, True])
@pytest.mark.parametrize("kernel,kw", [(k, kw) for k, kw, _ in KERNEL_CASES], ids=CASE_IDS)
def test_lsp_huge_norms_finite(kernel, kw, teacher_first):
    edge_index = make_graph()
    f_s = features(12, 16, 1.0, seed=13, dtype=torch.float32)
    f_t = features(12, 16, 1.0, seed=14, dtype=torch.float32)
    f_s = (f_s / f_s.norm(dim=1, keepdim=True) * 1e4).requires_grad_()
    f_t = f_t / f_t.norm(dim=1, keepdim=True) * 1e4
    loss = lsp_loss(f_s, f_t, edge_index, kernel, teacher_first=teacher_first, **kw)
    assert torch.isfinite(loss) and loss.item() >= 0
    loss.backward()
    assert torch.isfinite(f_s.grad).all()


@pytest.mark.parametrize("teacher_first", [False, True])
@pytest.mark.parametrize("kernel,kw,scale", KERNEL_CASES, ids=CASE_IDS)
def test_lsp_gradcheck_float64(kernel, kw, scale, teacher_first):
    edge_index = torch.tensor([[1, 2, 3, 0, 2, 4, 0, 1, 3, 4],
                               [0, 0, 0, 1, 1, 1, 2, 2, 4, 4]])  # 3: no incoming
    f_s = features(5, 3, scale, seed=15).requires_grad_()
    f_t = features(5, 4, scale, seed=16)
    assert torch.autograd.gradcheck(
        lambda fs: lsp_loss(fs, f_t, edge_index, kernel, teacher_first=teacher_first, **kw),
        (f_s,))


def test_lsp_empty_graph_is_zero():
    empty = torch.zeros(2, 0, dtype=torch.long)
    f_s = torch.randn(6, 4, requires_grad=True)
    loss = lsp_loss(f_s, torch.randn(6, 5), empty, "rbf")
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(f_s.grad).all() and (f_s.grad == 0).all()
    assert local_structure(torch.randn(6, 4), empty).shape == (0,)


def test_lsp_isolated_nodes_add_zero():
    edge_index = make_graph()
    f_s, f_t = features(12, 8, 0.3, seed=17), features(12, 8, 0.3, seed=18)
    loss = lsp_loss(f_s, f_t, edge_index)
    # 8 extra isolated nodes: same sum, divided by 20 nodes instead of 12
    pad_s = torch.cat([f_s, features(8, 8, 0.3, seed=19)])
    pad_t = torch.cat([f_t, features(8, 8, 0.3, seed=20)])
    padded = lsp_loss(pad_s, pad_t, edge_index)
    assert math.isclose(padded.item(), loss.item() * 12 / 20, rel_tol=1e-10)
    assert math.isclose(padded.item(), ref_lsp(pad_s, pad_t, edge_index, "rbf"),
                        rel_tol=1e-9)


# ----------------------------------------------------------------------------------------
# Errors

def test_lsp_errors():
    f_s, f_t = torch.randn(6, 4), torch.randn(6, 5)
    edge_index = torch.tensor([[0, 1, 2], [1, 2, 0]])
    with pytest.raises(ValueError):
        lsp_loss(f_s, torch.randn(7, 5), edge_index)
    with pytest.raises(ValueError):
        lsp_loss(f_s, f_t, torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError):
        lsp_loss(f_s, f_t, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError):
        local_structure(f_s, torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError):
        lsp_loss(f_s, f_t, torch.tensor([[0, 6], [1, 2]]))           # source out of range
    with pytest.raises(ValueError):
        lsp_loss(f_s, f_t, torch.tensor([[0, 1], [1, 9]]))           # target out of range
    with pytest.raises(ValueError):
        lsp_loss(f_s, f_t, torch.tensor([[0, -1], [1, 2]]))          # negative
    with pytest.raises(ValueError):
        lsp_loss(f_s, f_t, torch.tensor([[0, 1], [1, 7]]), num_nodes=8)  # past feat's rows
    with pytest.raises(ValueError) as err:
        lsp_loss(f_s, f_t, edge_index, kernel="cosine")
    for name in KERNELS:
        assert name in str(err.value)
    with pytest.raises(ValueError) as err:
        local_structure(f_s, edge_index, kernel="gaussian")
    assert all(name in str(err.value) for name in KERNELS)
    for sigma in (0.0, -1.0, float("nan"), float("inf"), 1e-16, 1e16):  # not a silent NaN
        with pytest.raises(ValueError, match=r"sigma must be in \[1e-15, 1e15\], or 'auto'"):
            lsp_loss(f_s, f_t, edge_index, sigma=sigma)
    for sigma in ("1", "median", torch.tensor(2.0), None, True):
        with pytest.raises(TypeError, match="sigma must be a number"):
            lsp_loss(f_s, f_t, edge_index, sigma=sigma)


N_ERR = 6                                                 # nodes of the error cases
F_S, F_T, LOG_LS = torch.randn(N_ERR, 4), torch.randn(N_ERR, 5), torch.zeros(3)
GOOD = torch.tensor([[0, 1, 2], [1, 2, 0]])               # (2, 3) edges inside [0, 6)
PAST = torch.tensor([[0, 1, N_ERR + 3], [1, 2, 0]])       # an edge from node 9: no such node


def graph_errors():
    """{case: (call, what its ValueError says)}: out-of-range edge ids and num_nodes, and
    per-edge tensors of the wrong length, for every function that takes a graph."""
    cases = {f"{f.__name__}, edge past N": (lambda f=f: f(F_S, F_T, PAST), "node 9")
             for f in (lsp_loss, neighbour_rank_correlation)}
    return {**cases,
            "lsp_loss, num_nodes > rows": (  # the edge to node 9 < num_nodes = 16
                lambda: lsp_loss(F_S, F_T, PAST, num_nodes=N_ERR + 10), "num_nodes"),
            "lsp_loss, num_nodes < 0": (lambda: lsp_loss(F_S, F_T, GOOD, num_nodes=-1),
                                        "num_nodes"),
            "log_local_structure, num_nodes > rows": (
                lambda: log_local_structure(F_S, PAST, num_nodes=N_ERR + 10), "num_nodes"),
            "log_local_structure, edge past N": (lambda: log_local_structure(F_S, PAST),
                                                 "node 9"),
            "log_local_structure poly, edge past N": (
                lambda: log_local_structure(F_S, PAST, "poly"), "node 9"),
            "lsp_loss, cached teacher of another graph": (
                lambda: lsp_loss(F_S, None, GOOD, log_ls_t=torch.zeros(5)), "one value per edge"),
            "union_graph, edge past num_nodes": (lambda: union_graph(PAST, GOOD, N_ERR),
                                                 "edge_index_s refers to node 9"),
            "lsp_loss, int16 edge_index": (lambda: lsp_loss(F_S, F_T, GOOD.short()), "int64")}


GRAPH_ERRORS = graph_errors()


@pytest.mark.parametrize("case", GRAPH_ERRORS)
def test_graph_errors_are_value_errors(case):
    call, says = GRAPH_ERRORS[case]
    with pytest.raises(ValueError, match=says):
        call()


@pytest.mark.parametrize("who", ["student", "teacher"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_features_raise(who, value):
    f_s, f_t = F_S.clone(), F_T.clone()
    (f_s if who == "student" else f_t)[3, 1] = value
    with pytest.raises(ValueError, match=f"feat_{who[0]} contains NaN or inf"):
        lsp_loss(f_s, f_t, GOOD)
    with pytest.raises(ValueError, match="feat contains NaN or inf"):
        log_local_structure(f_s if who == "student" else f_t, GOOD)


def test_non_finite_student_raises_with_a_cached_teacher():
    f_s = F_S.clone()
    f_s[0, 0] = float("nan")
    log_ls_t = log_local_structure(F_T, GOOD, "rbf")
    with pytest.raises(ValueError, match="feat_s contains NaN or inf"):
        lsp_loss(f_s, None, GOOD, log_ls_t=log_ls_t)
    assert torch.isfinite(lsp_loss(F_S, None, GOOD, log_ls_t=log_ls_t))


# ----------------------------------------------------------------------------------------
# union_graph

def union_ref(a, b):
    edges = set(map(tuple, a.t().tolist())) | set(map(tuple, b.t().tolist()))
    return sorted(edges, key=lambda e: (e[1], e[0]))


def test_union_graph_matches_sets():
    g = torch.Generator().manual_seed(0)
    for trial in range(5):
        N = 15
        a = torch.randint(0, N, (2, 60), generator=g)        # has duplicates
        b = torch.cat([a[:, :25], torch.randint(0, N, (2, 40), generator=g)], dim=1)
        out = union_graph(a, b, N)
        assert out.dtype == torch.int64 and out.shape[0] == 2
        edges = list(map(tuple, out.t().tolist()))
        assert len(edges) == len(set(edges))
        assert edges == union_ref(a, b)
        # num_nodes larger than max id + 1
        assert list(map(tuple, union_graph(a, b, num_nodes=40).t().tolist())) == edges
        # symmetric in its arguments
        assert torch.equal(union_graph(b, a, N), out)


def test_union_graph_knn_student_teacher():
    """Sec. 3.5: a k=4 student graph and a k=6 teacher graph over the same nodes."""
    from models import knn_graph
    x_s, x_t = torch.randn(2, 10, 5), torch.randn(2, 10, 7)
    e_s, e_t = knn_graph(x_s, 4), knn_graph(x_t, 6)
    out = union_graph(e_s, e_t, 20)
    assert list(map(tuple, out.t().tolist())) == union_ref(e_s, e_t)
    deg = torch.bincount(out[1], minlength=20)
    assert (deg >= 6).all() and (deg <= 10).all()


def test_union_graph_empty_inputs():
    empty = torch.zeros(2, 0, dtype=torch.long)
    assert union_graph(empty, empty, num_nodes=5).shape == (2, 0)
    a = torch.tensor([[2, 0, 2, 1], [1, 1, 1, 0]])
    for out in (union_graph(a, empty, 3), union_graph(empty, a, 3)):
        assert list(map(tuple, out.t().tolist())) == [(1, 0), (0, 1), (2, 1)]


def test_union_graph_int32_many_nodes():
    # i * N + j overflows int32 beyond N = 46341: the ids are widened first
    N = 70_000
    a = torch.tensor([[1, N - 1], [N - 2, N - 1]], dtype=torch.int32)
    b = torch.tensor([[N - 3, 0], [N - 1, N - 2]], dtype=torch.int32)
    out = union_graph(a, b, N)
    assert out.dtype == torch.int64 and torch.equal(out, union_graph(a.long(), b.long(), N))
    assert list(map(tuple, out.t().tolist())) == union_ref(a.long(), b.long())
    # N beyond int32: int32 ids are still all in range
    assert torch.equal(union_graph(a, b, 2 ** 31 + 5), union_graph(a.long(), b.long(), 2 ** 31 + 5))


def test_union_graph_num_nodes_too_small_raises():
    with pytest.raises(ValueError):
        union_graph(torch.tensor([[5], [0]]), torch.tensor([[1], [0]]), num_nodes=3)


# ----------------------------------------------------------------------------------------
# knn_lsp_loss: lsp_loss over union_graph, on neighbour tables

def tables(kind, N=48, seed=30):
    """Neighbour tables (N, 4) and (N, 6): "knn", knn_graph's of two feature spaces (3
    clouds of 16 points, ModelNet40's kind); "random", repeats within and across the tables
    and self-loops."""
    if kind == "random":
        return random_table(N, 4, seed), random_table(N, 6, seed + 1)
    from models import knn_graph
    x_s, x_t = features(N, 3, 1.0, seed), features(N, 5, 1.0, seed + 1)
    return (knn_graph(x_s.view(3, N // 3, 3), 4)[0].view(N, 4),
            knn_graph(x_t.view(3, N // 3, 5), 6)[0].view(N, 6))


def table_edges(nbr):
    """(N, K) table -> (2, N·K) edges (nbr[i, k], i)."""
    return torch.stack([nbr.flatten(), torch.arange(nbr.size(0)).repeat_interleave(nbr.size(1))])


KNN_CASES = [(k, kw, s) for k, kw, s in KERNEL_CASES] + [("rbf", {"sigma": "auto"}, 1.0)]


@pytest.mark.parametrize("kind", ["knn", "random"])
@pytest.mark.parametrize("teacher_first", [False, True])
@pytest.mark.parametrize("kernel,kw,scale", KNN_CASES,
                         ids=CASE_IDS + ["rbf-sigmaauto"])
def test_knn_lsp_loss_equals_lsp_loss_on_union(kernel, kw, scale, teacher_first, kind,
                                               monkeypatch):
    """The same loss and gradient as lsp_loss over union_graph, in several blocks."""
    monkeypatch.setattr(lsp_kd, "BLOCK", 64)
    nbr_s, nbr_t = tables(kind)
    union = union_graph(table_edges(nbr_s), table_edges(nbr_t), 48)
    f_s = features(48, 8, scale, seed=31).requires_grad_()
    f_t = features(48, 12, scale, seed=32) / 1.2
    want = lsp_loss(f_s, f_t, union, kernel, teacher_first=teacher_first, **kw)
    got = lsp_kd.knn_lsp_loss(f_s, f_t, nbr_s, nbr_t, kernel, teacher_first=teacher_first,
                              **kw)
    assert want > 1e-4 and union.size(1) < 48 * 10         # not trivial; repeats masked
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(torch.autograd.grad(got, f_s)[0],
                               torch.autograd.grad(want, f_s)[0], rtol=1e-9, atol=1e-13)
    got32 = lsp_kd.knn_lsp_loss(f_s.detach().float(), f_t.float(), nbr_s.int(), nbr_t,
                                kernel, teacher_first=teacher_first, **kw)
    assert got32.dtype == torch.float32
    assert math.isclose(got32.item(), want.item(), rel_tol=1e-4)


@pytest.mark.parametrize("kernel,kw,scale", KERNEL_CASES, ids=CASE_IDS)  # auto: σ detached
def test_knn_lsp_loss_gradcheck_float64(kernel, kw, scale):
    nbr_s, nbr_t = random_table(6, 2, seed=33), random_table(6, 3, seed=34)
    f_s, f_t = features(6, 3, scale, seed=35).requires_grad_(), features(6, 4, scale, seed=36)
    assert torch.autograd.gradcheck(
        lambda fs: lsp_kd.knn_lsp_loss(fs, f_t, nbr_s, nbr_t, kernel, **kw), (f_s,))


def test_knn_lsp_loss_empty_and_loops_only():
    """No nodes, no neighbours, and neighbours that are all the centre itself (σ = "auto"
    then has no pair j ≠ i and falls back to 1): as lsp_loss over union_graph, finite."""
    f_s, f_t = features(5, 3, 0.5, seed=39).requires_grad_(), features(5, 4, 0.5, seed=40)
    loops = torch.arange(5)[:, None].expand(5, 2)
    for nbr_s, nbr_t in ((loops[:, :0], loops[:, :0]), (loops, loops[:, :1]), (loops, loops)):
        union = union_graph(table_edges(nbr_s), table_edges(nbr_t), 5)
        for kw in ({}, {"sigma": "auto"}):
            got = lsp_kd.knn_lsp_loss(f_s, f_t, nbr_s, nbr_t, **kw)
            assert got.item() == lsp_loss(f_s, f_t, union, **kw).item() == 0.0
            assert torch.isfinite(torch.autograd.grad(got, f_s)[0]).all()
    none = torch.zeros(0, 3)
    assert lsp_kd.knn_lsp_loss(none, none, torch.zeros(0, 2, dtype=torch.long),
                               torch.zeros(0, 4, dtype=torch.long)).item() == 0.0


def test_knn_lsp_loss_half_precision_and_no_teacher_gradient():
    nbr_s, nbr_t = tables("knn")
    f_s = features(48, 8, 0.3, seed=37, dtype=torch.float16).requires_grad_()
    f_t = features(48, 8, 0.3, seed=38, dtype=torch.float16).requires_grad_()
    loss = lsp_kd.knn_lsp_loss(f_s, f_t, nbr_s, nbr_t)
    assert loss.dtype == torch.float32 and loss.item() == lsp_kd.knn_lsp_loss(
        f_s.float(), f_t.float(), nbr_s, nbr_t).item()
    loss.backward()
    assert f_t.grad is None and torch.isfinite(f_s.grad.float()).all()


def test_knn_lsp_loss_errors():
    nbr = torch.zeros(N_ERR, 2, dtype=torch.long)
    cases = {"feat_s and feat_t must have the same N": (F_S, F_T[:5], nbr, nbr),
             r"nbr_s must be \(N, k\), a row for each of the N = 6 nodes, got \(5, 2\)":
                 (F_S, F_T, nbr[:5], nbr),
             "nbr_t refers to node 9": (F_S, F_T, nbr, nbr + 9),
             "nbr_s refers to node -1": (F_S, F_T, nbr - 1, nbr),
             "nbr_t must be a 2-d int64": (F_S, F_T, nbr, nbr.float()),
             "nbr_s must be a 2-d int64": (F_S, F_T, nbr[:, 0], nbr),
             "feat_t contains NaN": (F_S, F_T / 0, nbr, nbr)}
    for says, args in cases.items():
        with pytest.raises(ValueError, match=says):
            lsp_kd.knn_lsp_loss(*args)
    with pytest.raises(ValueError, match="unknown kernel 'cosine'"):
        lsp_kd.knn_lsp_loss(F_S, F_T, nbr, nbr, "cosine")


# ----------------------------------------------------------------------------------------
# Baselines: KD, FitNet, AT

def test_kd_softmax_matches_formula():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    for T in (1.0, 4.0):
        ref = 0.0
        for n in range(7):
            p_t = torch.softmax(t[n].detach() / T, 0)
            p_s = torch.softmax(s[n].detach() / T, 0)
            ref += float((p_t * (p_t / p_s).log()).sum())
        ref = ref / 7 * T * T
        assert math.isclose(kd_loss(s, t, T=T).item(), ref, rel_tol=1e-10)
    assert kd_loss(s, t).item() == kd_loss(s, t, T=4.0).item()   # SPEC: T = 4 by default
    assert kd_loss(s, t).item() > 1e-3
    assert abs(kd_loss(t.detach().clone(), t).item()) < 1e-12
    kd_loss(s, t).backward()
    assert t.grad is None and s.grad is not None and s.grad.abs().max() > 0


def test_kd_multilabel_matches_formula():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    for T in (1.0, 4.0):
        total = 0.0
        for n in range(6):
            for c in range(4):
                p = 1 / (1 + math.exp(-t[n, c].item() / T))
                q = 1 / (1 + math.exp(-s[n, c].item() / T))
                total += p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
        ref = total / 24 * T * T
        assert math.isclose(kd_loss(s, t, T=T, multilabel=True).item(), ref, rel_tol=1e-9)
    assert kd_loss(s, t, multilabel=True).item() > 1e-3
    assert abs(kd_loss(t.detach().clone(), t, multilabel=True).item()) < 1e-12
    kd_loss(s, t, multilabel=True).backward()
    assert t.grad is None and s.grad is not None and s.grad.abs().max() > 0


def test_fitnet_loss():
    torch.manual_seed(0)
    reg = torch.nn.Linear(6, 10)
    f_s = torch.randn(9, 6, requires_grad=True)
    f_t = torch.randn(9, 10, requires_grad=True)
    loss = fitnet_loss(f_s, f_t, reg)
    pred = f_s @ reg.weight.t() + reg.bias
    ref = sum(((pred[n, c] - f_t[n, c]) ** 2).item() for n in range(9) for c in range(10)) / 90
    assert math.isclose(loss.item(), ref, rel_tol=1e-5)
    loss.backward()
    assert f_t.grad is None
    assert f_s.grad is not None and f_s.grad.abs().max() > 0
    assert reg.weight.grad is not None and reg.weight.grad.abs().max() > 0
    assert reg.bias.grad is not None


def at_ref(f_s, f_t, batch):
    """Per graph: a = Σ_c |F_c| per node, a / ||a||₂ within the graph; MSE over all nodes."""
    def attention(feat):
        a = [float(feat[n].abs().sum()) for n in range(feat.size(0))]
        out = []
        for n in range(feat.size(0)):
            norm = math.sqrt(sum(a[m] ** 2 for m in range(feat.size(0))
                                 if batch[m] == batch[n]))
            out.append(a[n] / norm)
        return out
    a_s, a_t = attention(f_s), attention(f_t)
    return sum((x - y) ** 2 for x, y in zip(a_s, a_t)) / len(a_s)


def test_at_loss_matches_loop():
    g = torch.Generator().manual_seed(0)
    batch = torch.tensor([0] * 4 + [1] * 9 + [2] * 6)           # 3 graphs, different sizes
    N = batch.numel()
    f_s = torch.randn(N, 5, generator=g, dtype=torch.float64, requires_grad=True)
    f_t = torch.randn(N, 11, generator=g, dtype=torch.float64, requires_grad=True)
    loss = at_loss(f_s, f_t, batch)
    ref = at_ref(f_s.detach(), f_t.detach(), batch.tolist())
    assert ref > 1e-4
    assert math.isclose(loss.item(), ref, rel_tol=1e-10)
    # unsorted batch vector: same per-graph grouping
    perm = torch.randperm(N, generator=g)
    assert math.isclose(at_loss(f_s[perm], f_t[perm], batch[perm]).item(), ref, rel_tol=1e-10)
    # a single graph
    assert math.isclose(at_loss(f_s, f_t, torch.zeros(N, dtype=torch.long)).item(),
                        at_ref(f_s.detach(), f_t.detach(), [0] * N), rel_tol=1e-10)
    loss.backward()
    assert f_t.grad is None and f_s.grad is not None and f_s.grad.abs().max() > 0


@pytest.mark.parametrize("case", ["kd rows", "kd classes", "kd multilabel rows",
                                  "fitnet rows", "fitnet widths", "at batch length"])
def test_baseline_shape_errors(case):
    """Shapes that broadcast to a wrong number silently, or fail deep inside torch."""
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    call, says = {
        "kd rows": (lambda: kd_loss(s, t[:1]), "same shape"),
        "kd classes": (lambda: kd_loss(s, torch.randn(4, 6)), "same shape"),
        "kd multilabel rows": (lambda: kd_loss(s, t[:1], multilabel=True), "same shape"),
        "fitnet rows": (lambda: fitnet_loss(s, torch.randn(1, 6), torch.nn.Linear(5, 6)),
                        "feat_t's shape"),
        "fitnet widths": (lambda: fitnet_loss(s, torch.randn(4, 7), torch.nn.Linear(5, 6)),
                          "feat_t's shape"),
        "at batch length": (lambda: at_loss(s, t, torch.zeros(3, dtype=torch.long)),
                            "the same N"),
    }[case]
    with pytest.raises(ValueError, match=says):
        call()


def test_at_loss_zero_when_equal_and_errors():
    f = torch.randn(10, 4)
    batch = torch.tensor([0] * 3 + [1] * 7)
    assert at_loss(f, f, batch).item() == 0.0
    assert at_loss(f, f * 3, batch).item() < 1e-12             # scale-free per graph
    with pytest.raises(ValueError):
        at_loss(f, torch.randn(11, 4), batch)


def test_cached_teacher_structure_equals_lsp_loss_on_a_batch_of_graphs():
    """train_ppi.py caches log LS^t per graph and concatenates it for a batch of graphs:
    the same loss and gradient as lsp_loss on the batch, for every kernel, both KL
    directions (σ = "auto" is each graph's own median there: not compared)."""
    g = torch.Generator().manual_seed(3)
    sizes, graphs = (7, 5), []
    for n in sizes:
        ei = torch.randint(0, n, (2, 4 * n), generator=g)
        graphs.append((torch.randn(n, 6, generator=g, dtype=torch.float64) * 0.3,
                       torch.randn(n, 9, generator=g, dtype=torch.float64) * 0.3, ei))
    ei = torch.cat([e + o for (_, _, e), o in zip(graphs, (0, sizes[0]))], 1)
    fs = torch.cat([a for a, _, _ in graphs]).requires_grad_()
    ft = torch.cat([b for _, b, _ in graphs])
    for kernel in KERNELS:
        cached = torch.cat([log_local_structure(b, e, kernel) for _, b, e in graphs])
        for teacher_first in (False, True):
            want = lsp_loss(fs, ft, ei, kernel=kernel, teacher_first=teacher_first)
            got = lsp_loss(fs, None, ei, kernel=kernel, teacher_first=teacher_first,
                           log_ls_t=cached)
            assert want > 1e-6  # not a trivially zero loss
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)
            torch.testing.assert_close(torch.autograd.grad(got, fs)[0],
                                       torch.autograd.grad(want, fs)[0])


def random_graph(N, E, seed):
    """Random edges with duplicates and self-loops, some centres of degree 0-2."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, N, (2, E), generator=g)


def test_lsp_loss_pastes_alone():
    """The source of lsp_kd.py from check to knn_lsp_loss, run where only torch exists (and
    the constants they read), gives the module's numbers and gradients."""
    namespace = {"torch": torch, "F": torch.nn.functional, "BLOCK": lsp_kd.BLOCK,
                 "KERNELS": KERNELS, "math": math, "numbers": numbers}
    source = inspect.getsource(lsp_kd)
    exec(source[source.index("def check("):source.index("# Baselines of Sec. 4.1")], namespace)
    edge_index = random_graph(30, 120, seed=5)
    nbr_s, nbr_t = random_table(30, 3, seed=52), random_table(30, 5, seed=53)
    f_s, f_t = features(30, 8, 0.5, seed=50).requires_grad_(), features(30, 4, 0.5, seed=51)
    for kernel in KERNELS:
        for kw in ({}, {"sigma": "auto"}) if kernel == "rbf" else ({},):
            for name, args in (("lsp_loss", (edge_index,)), ("knn_lsp_loss", (nbr_s, nbr_t))):
                want = getattr(lsp_kd, name)(f_s, f_t, *args, kernel, **kw)
                got = namespace[name](f_s, f_t, *args, kernel, **kw)
                assert want.item() > 1e-5 and got.item() == want.item()
                assert torch.equal(torch.autograd.grad(got, f_s)[0],
                                   torch.autograd.grad(want, f_s)[0])


def median_sigma(feat, edge_index):
    """σ of sigma="auto", written out with NumPy: the (lower) median of ||z_i - z_j|| over
    the edges j ≠ i; 1 without such edges."""
    src, dst = edge_index.numpy()
    z = feat.detach().double().numpy()
    dist = np.linalg.norm(z[dst] - z[src], axis=1)[src != dst]
    return float(np.percentile(dist, 50, method="lower")) if len(dist) else 1.0


def test_sigma_auto_is_each_models_median_sigma():
    for E in (101, 100):                                    # odd and even counts
        edge_index = random_graph(25, E, seed=E)
        assert (edge_index[0] == edge_index[1]).any()       # self-loops: left out
        f_s, f_t = features(25, 5, 1.0, seed=60), features(25, 7, 20.0, seed=61)
        log_s, log_t = (ref_log_local_structure(f, edge_index, "rbf",
                                                sigma=median_sigma(f, edge_index))
                        for f in (f_s, f_t))
        S = torch.zeros(25, dtype=torch.float64).index_add_(
            0, edge_index[1], log_s.exp() * (log_s - log_t))
        got = lsp_loss(f_s, f_t, edge_index, "rbf", sigma="auto")
        assert math.isclose(got.item(), S.mean().item(), rel_tol=1e-6)
    loops = torch.arange(25).repeat(2, 1)                   # self-loops alone: σ = 1
    torch.testing.assert_close(log_local_structure(f_s, loops, sigma="auto"),
                               log_local_structure(f_s, loops, sigma=1.0))
    assert lsp_loss(f_s, f_t, torch.zeros(2, 0, dtype=torch.long), sigma="auto") == 0


def test_sigma_auto_keeps_lsp_alive_where_sigma_1_vanishes():
    """Unit-scale random features of width 64: neighbours lie ~11 apart, exp(-11²/2) ~ 1e-27,
    so with σ = 1 both structures are uniform and the loss and its gradient vanish."""
    edge_index = random_graph(500, 5000, seed=7)
    g = torch.Generator().manual_seed(8)
    f_s = torch.randn(500, 64, generator=g).requires_grad_()
    f_t = torch.randn(500, 64, generator=g)
    dead = lsp_loss(f_s, f_t, edge_index, "rbf")
    alive = lsp_loss(f_s, f_t, edge_index, "rbf", sigma="auto")
    grad_dead, = torch.autograd.grad(dead, f_s)
    grad_alive, = torch.autograd.grad(alive, f_s)
    assert dead.item() < 1e-6 and grad_dead.norm() < 1e-6
    assert alive.item() > 1e-3 and grad_alive.norm() > 1e-5


def test_sigma_auto_is_not_silenced_by_self_loops():
    """A ring with a self-loop at every node (as PyG's add_self_loops makes): half the edges
    have distance 0. Their median would make σ ~0, every centre's structure all on its loop,
    and the loss 0; σ from the edges j ≠ i keeps it alive, the same in both functions."""
    N = 50
    ring = torch.stack([torch.arange(N), (torch.arange(N) + 1) % N])
    edge_index = torch.cat([ring, torch.arange(N).repeat(2, 1)], 1)
    f_s = features(N, 8, 1.0, seed=80).requires_grad_()
    f_t = features(N, 8, 1.0, seed=81)
    loss = lsp_loss(f_s, f_t, edge_index, "rbf", sigma="auto")
    grad, = torch.autograd.grad(loss, f_s)
    assert loss.item() > 1e-3 and grad.norm() > 1e-4


def test_lsp_loss_against_a_uniform_student_is_the_kl_from_uniform():
    """structure.teacher_structure measures the teacher's structure as lsp_loss(equal student
    features, teacher, teacher_first=True): a student of equal features has uniform LS_i,
    so that is the mean over all N nodes of KL(LS_i^t || uniform)."""
    edge_index = make_graph()                                # degrees 0, 1 and more
    feat = features(12, 8, 0.5, seed=70)
    for kernel, sigma in (("l2", 1.0), ("rbf", 1.0), ("rbf", "auto"), ("poly", 1.0)):
        log_ls = log_local_structure(feat, edge_index, kernel, sigma=sigma)
        dst, want = edge_index[1].tolist(), 0.0
        for i in range(12):
            p = log_ls[[e for e in range(len(dst)) if dst[e] == i]].exp()
            want += (p * (p.log() + math.log(len(p)))).sum().item() if len(p) > 1 else 0.0
        got = lsp_loss(feat[:, :1] * 0, feat, edge_index, kernel, sigma, teacher_first=True)
        assert want / 12 > 1e-3 and got.item() == pytest.approx(want / 12, rel=1e-9)


def ref_rank_correlation(feat_s, feat_t, edge_index, min_neighbours=3):
    from scipy.stats import spearmanr
    src, dst = edge_index.tolist()
    out = []
    for i in range(feat_s.size(0)):
        nbrs = [src[e] for e in range(len(dst)) if dst[e] == i]
        d_s = [float((feat_s[i] - feat_s[j]).norm()) for j in nbrs]
        d_t = [float((feat_t[i] - feat_t[j]).norm()) for j in nbrs]
        if len(nbrs) < min_neighbours or len(set(d_s)) == 1 or len(set(d_t)) == 1:
            out.append(float("nan"))
        else:
            out.append(spearmanr(d_s, d_t).statistic)
    return np.array(out)


def test_neighbour_rank_correlation_matches_scipy_with_ties():
    g = torch.Generator().manual_seed(9)
    # a coarse grid of values, so that many distances tie
    f_s = torch.randint(0, 3, (40, 2), generator=g).double()
    f_t = torch.randint(0, 3, (40, 3), generator=g).double()
    edge_index = random_graph(40, 200, seed=10)               # degrees 0 .. ~12
    got = neighbour_rank_correlation(f_s, f_t, edge_index).numpy()
    want = ref_rank_correlation(f_s, f_t, edge_index)
    assert np.isnan(got).sum() > 0 and (~np.isnan(got)).sum() > 20
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(want)], atol=1e-10)


def test_neighbour_rank_correlation_on_sparse_graphs():
    """Fewer edges than nodes, and a high node id: the per-centre groups are sized by the
    nodes, not by the edges."""
    f_s, f_t = features(10, 4, 1.0, seed=90), features(10, 3, 1.0, seed=91)
    edge_index = torch.tensor([[0, 1, 2, 3, 5], [9, 9, 9, 9, 1]])
    got = neighbour_rank_correlation(f_s, f_t, edge_index).numpy()
    want = ref_rank_correlation(f_s, f_t, edge_index)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert not np.isnan(got[9]) and np.isnan(got[:9]).all()
    assert got[9] == pytest.approx(want[9])
    f_s[3] = float("nan")                                       # a diverged student
    with pytest.raises(ValueError, match="NaN or inf"):
        neighbour_rank_correlation(f_s, f_t, edge_index)


def test_neighbour_rank_correlation_scaled_teacher_and_random():
    edge_index = random_graph(300, 3000, seed=11)
    f_t = features(300, 16, 1.0, seed=80)
    same = neighbour_rank_correlation(3.0 * f_t, f_t, edge_index).numpy()
    assert np.nanmin(same) == pytest.approx(1.0)
    unrelated = neighbour_rank_correlation(features(300, 16, 1.0, seed=81), f_t, edge_index)
    assert abs(np.nanmean(unrelated.numpy())) < 0.05


def test_rank_correlation_of_unrelated_features_on_a_union_of_knn_graphs():
    # ModelNet40's graph holds each model's own nearest neighbours of i, so unrelated
    # features score below 0 there (the docstring's -0.3: 64 points, k = 10 and 20)
    from models import knn_graph
    g = torch.Generator().manual_seed(0)
    f_s, f_t = torch.randn(16, 64, 32, generator=g), torch.randn(16, 64, 64, generator=g)
    edge_index = union_graph(knn_graph(f_s, 10), knn_graph(f_t, 20), 16 * 64)
    rho = neighbour_rank_correlation(f_s.view(-1, 32), f_t.view(-1, 64), edge_index)
    assert -0.4 < rho.nanmean().item() < -0.25


# ----------------------------------------------------------------------------------------
# Bad calls: a TypeError or ValueError that names the argument, never NaN

def bad_calls():
    """{case: (call, error, what it says)} for every function of lsp_kd (and the rank
    correlation of structure.py)."""
    f_s, f_t, e, maps, hkd = F_S, F_T, GOOD, lsp_kd.HolisticMaps(4, 5, 8), lsp_kd.hkd_loss
    return {
        "numpy features": (lambda: lsp_loss(f_s.numpy(), f_t, e), TypeError,
                           "feat_s must be a torch"),
        "feat_t None": (lambda: lsp_loss(f_s, None, e), TypeError, "feat_t must be a torch"),
        "complex features": (lambda: lsp_loss(f_s.to(torch.complex64), f_t, e), ValueError,
                             "feat_s must be a 2-d real floating-point"),
        "integer features": (lambda: log_local_structure(f_s.long(), e), ValueError,
                             "feat must"),
        "numpy edge_index": (lambda: lsp_loss(f_s, f_t, e.numpy()), TypeError,
                             "edge_index must"),
        "num_nodes 6.0": (lambda: lsp_loss(f_s, f_t, e, num_nodes=6.0), TypeError,
                          "num_nodes must be an int"),
        "log_ls_t a list": (lambda: lsp_loss(f_s, None, e, log_ls_t=[0.0] * 3), TypeError,
                            "log_ls_t must"),
        "poly degree 0.5": (lambda: lsp_loss(f_s, f_t, e, "poly", degree=0.5), TypeError,
                            "degree must be an int"),
        "poly degree -1": (lambda: lsp_loss(f_s, f_t, e, "poly", degree=-1), ValueError,
                           "degree must be >= 1"),
        "poly c nan": (lambda: lsp_loss(f_s, f_t, e, "poly", c=math.nan), ValueError,
                       "c must be finite"),
        "poly degree 1e5": (lambda: lsp_loss(f_s * 0 + 10, f_t, e, "poly", degree=10 ** 5),
                            ValueError, r"SIM \(poly\) overflows"),
        "union num_nodes 2^32": (lambda: union_graph(e + 2 ** 32, e, 2 ** 32 + 6), ValueError,
                                 "num_nodes must be in"),
        "union num_nodes 2^40": (lambda: union_graph(e, e + 2 ** 40, 2 ** 40 + 6), ValueError,
                                 "num_nodes must be in"),
        "union 1-d": (lambda: union_graph(e[0], e, 6), ValueError, "edge_index_s must be a 2-d"),
        "union float N": (lambda: union_graph(e, e, 6.0), TypeError, "num_nodes must be an int"),
        "kd T inf": (lambda: kd_loss(f_s, f_s + 1, T=math.inf), ValueError, "T must be a finite"),
        "kd T 0": (lambda: kd_loss(f_s, f_s + 1, T=0), ValueError, "T must be a finite"),
        "kd numpy": (lambda: kd_loss(f_s.numpy(), f_s), TypeError, "logits_s must be a torch"),
        "at float batch": (lambda: at_loss(f_s, f_t, torch.zeros(N_ERR)), ValueError,
                           "batch must"),
        "fitnet numpy": (lambda: fitnet_loss(f_s.numpy(), f_t, torch.nn.Linear(4, 5)),
                         TypeError, "feat_s must be a torch"),
        "hkd tau 0": (lambda: hkd(f_s, f_t, maps, k=2, tau=0), ValueError, "tau must"),
        "hkd tau inf": (lambda: hkd(f_s, f_t, maps, k=2, tau=math.inf), ValueError, "tau must"),
        "hkd k 4.5": (lambda: hkd(f_s, f_t, maps, k=4.5), TypeError, "k must be an int"),
        "hkd maps' widths": (lambda: hkd(f_s, f_t, lsp_kd.HolisticMaps(3, 5, 8), k=2),
                             ValueError, r"maps are for features of widths \(3, 5\)"),
        "rank correlation numpy": (lambda: neighbour_rank_correlation(f_s.numpy(), f_t, e),
                                   TypeError, "feat_s must be a torch")}


@pytest.mark.parametrize("case", bad_calls())
def test_bad_calls_name_the_argument(case):
    call, error, message = bad_calls()[case]
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("scale", [1e19, 1e30])
@pytest.mark.parametrize("kernel,sigma", [("rbf", "auto"), ("l2", 1.0), ("linear", 1.0),
                                          ("poly", 1.0), ("rbf", 1.0), ("l1_official", 1.0)])
def test_huge_features_refused_or_finite(kernel, sigma, scale):
    """Finite features so large that SIM overflows float32 are refused; where SIM saturates
    instead (RBF σ = 1, L1: exp(-huge) = 0) the loss and its gradient are finite."""
    signs = torch.tensor([1.0, -1.0, 1.0, -1.0])                          # ±1e19, ±1e30, ...
    f_s = (torch.arange(1.0, 25.0).view(6, 4) * signs * scale).requires_grad_()
    f_t = torch.arange(2.0, 26.0).view(6, 4) * signs * scale  # z_iᵀz_j >= 8e38 > float32's max
    if kernel in ("rbf", "l1_official") and sigma != "auto":
        loss = lsp_loss(f_s, f_t, GOOD, kernel, sigma)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(f_s.grad).all()
    else:
        with pytest.raises(ValueError, match=f"SIM \\({kernel}\\) overflows torch.float32"):
            lsp_loss(f_s, f_t, GOOD, kernel, sigma)
    assert lsp_loss(f_s.double(), f_t.double(), GOOD, kernel, sigma).isfinite()  # float64 can


def test_close_pairs_far_apart_keep_their_distances():
    """Edges within clusters 1e3 apart whose points lie 1e-2 apart: float32 keeps the squared
    distances and their gradients (gathered pairs), where ||z_i||² + ||z_j||² - 2 z_iᵀz_j
    would cancel to noise."""
    g = torch.Generator().manual_seed(0)
    dst = torch.arange(100).repeat_interleave(6)                       # 4 clusters of 25
    edge_index = torch.stack([dst // 25 * 25 + torch.randint(0, 25, (600,), generator=g), dst])

    def clustered(width):
        centres = torch.randn(4, width, generator=g, dtype=torch.float64) * 1e3
        return centres.repeat_interleave(25, 0) + 1e-2 * torch.randn(100, width, generator=g,
                                                                     dtype=torch.float64)
    f_s, f_t = clustered(16).float().requires_grad_(), clustered(32).float()
    f64 = f_s.detach().double().requires_grad_()
    want = lsp_loss(f64, f_t.double(), edge_index, sigma="auto")            # σ of the distances
    got = lsp_loss(f_s, f_t, edge_index, sigma="auto")
    assert want > 1e-3 and abs(got.item() / want.item() - 1) < 1e-4
    (grad_want,), (grad,) = torch.autograd.grad(want, f64), torch.autograd.grad(got, f_s)
    assert (grad - grad_want).abs().max() < 1e-4 * grad_want.abs().max()


def test_no_nodes_no_edges_is_zero():
    empty = torch.zeros(2, 0, dtype=torch.long)
    assert lsp_loss(torch.zeros(0, 3), torch.zeros(0, 4), empty).item() == 0
    assert lsp_loss(F_S, F_T, empty, num_nodes=0).item() == 0


def test_hkd_takes_the_maps_dtype():
    maps = lsp_kd.HolisticMaps(4, 5, 8)
    want = lsp_kd.hkd_loss(F_S, F_T, maps, k=2)
    assert lsp_kd.hkd_loss(F_S.double(), F_T.double(), maps, k=2).item() == want.item()
