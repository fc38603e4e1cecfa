"""Tests of models.py: every fast piece against a slow, obvious reference written here
(Python loops, dense matrices, SciPy's cKDTree), plus the paper's parameter counts and the
properties DGCNN must have (invariance to point order)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree

import models
from models import (DGCNN, GAT, EdgeConv, GATConv, dgcnn_student,
                    dgcnn_teacher, gat_student, gat_teacher, knn_graph, num_params,
                    scatter_softmax)


def random_edges(N, E, seed, allow_self=True):
    """E distinct random edges (j, i) over N nodes, as a (2, E) int64 tensor."""
    rng = np.random.default_rng(seed)
    pairs = [(j, i) for j in range(N) for i in range(N) if allow_self or i != j]
    pick = rng.choice(len(pairs), size=E, replace=False)
    return torch.tensor([pairs[p] for p in pick], dtype=torch.long).t().contiguous()


# ----------------------------------------------------------------------------------------
# scatter_softmax

def scatter_softmax_loop(src, index, num_nodes):
    """Reference: torch.softmax over the entries of each group, one group at a time."""
    out = torch.zeros_like(src)
    for n in range(num_nodes):
        idx = (index == n).nonzero().flatten()
        if idx.numel():
            out[idx] = torch.softmax(src[idx], dim=0)
    return out


@pytest.mark.parametrize("shape", [(40,), (40, 3)])
def test_scatter_softmax_matches_loop(shape):
    g = torch.Generator().manual_seed(0)
    src = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    # targets in {0, 2, 3, 5, 6}: nodes 1 and 4 are empty groups, num_nodes=9 > max + 1
    index = torch.tensor([0, 2, 3, 5, 6])[torch.randint(0, 5, (shape[0],), generator=g)]
    out = scatter_softmax(src, index, num_nodes=9)
    ref = scatter_softmax_loop(src, index, 9)
    assert out.shape == src.shape
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    # without num_nodes: inferred as max index + 1
    torch.testing.assert_close(scatter_softmax(src, index), ref, rtol=1e-12, atol=1e-12)
    # each non-empty group sums to 1
    sums = torch.zeros((9,) + src.shape[1:], dtype=src.dtype).index_add_(0, index, out)
    used = torch.zeros(9, dtype=torch.bool)
    used[index] = True
    torch.testing.assert_close(sums[used], torch.ones_like(sums[used]))
    assert (sums[~used] == 0).all()


def test_scatter_softmax_large_values_finite():
    src = torch.tensor([1000.0, 1001.0, -1000.0, 5.0])
    index = torch.tensor([0, 0, 1, 1])
    out = scatter_softmax(src, index, 2)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, scatter_softmax_loop(src, index, 2))


@pytest.mark.parametrize("shape", [(12,), (12, 2)])
def test_scatter_softmax_gradcheck(shape):
    g = torch.Generator().manual_seed(1)
    src = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([0, 0, 0, 2, 2, 3, 3, 3, 3, 5, 0, 2])
    assert torch.autograd.gradcheck(lambda s: scatter_softmax(s, index, 7), (src,))


def test_scatter_softmax_empty():
    for shape in [(0,), (0, 4)]:
        src = torch.zeros(shape)
        index = torch.zeros(0, dtype=torch.long)
        out = scatter_softmax(src, index, num_nodes=5)
        assert out.shape == src.shape
        assert scatter_softmax(src, index).shape == src.shape


# ----------------------------------------------------------------------------------------
# GATConv against a dense-adjacency implementation

def gatconv_dense(conv, x, edge_index):
    """Reference GATConv: (N, N) adjacency mask, per-head dense attention, masked softmax
    over the sources j of each target i (rows without neighbours -> 0), then the residual."""
    N, H, Fo = x.size(0), conv.heads, conv.out_dim
    adj = torch.zeros(N, N, dtype=torch.bool)                # adj[i, j]: edge j -> i
    for j, i in edge_index.t().tolist():
        adj[i, j] = True
    z = (x @ conv.fc.weight.t()).view(N, H, Fo)              # W x
    out = torch.zeros(N, H, Fo, dtype=x.dtype)
    for h in range(H):
        zh = z[:, h]                                         # (N, Fo)
        s_src = zh @ conv.attn_src[0, h]                     # a_srcᵀ W x_j
        s_dst = zh @ conv.attn_dst[0, h]                     # a_dstᵀ W x_i
        e = F.leaky_relu(s_dst[:, None] + s_src[None, :], 0.2)   # e[i, j]
        e = e.masked_fill(~adj, float("-inf"))
        alpha = torch.softmax(e, dim=1)
        alpha = torch.where(adj.any(1, keepdim=True), alpha, torch.zeros_like(alpha))
        out[:, h] = alpha @ zh
    if conv.res_fc is not None:
        if isinstance(conv.res_fc, torch.nn.Linear):
            out = out + (x @ conv.res_fc.weight.t()).view(N, H, Fo)
        else:                                                # identity, shared by the heads
            out = out + x[:, None, :]
    return out.reshape(N, H * Fo) if conv.concat else out.mean(1)


GATCONV_CASES = [
    # in_dim, out_dim, heads, residual, concat
    (7, 5, 3, False, True),
    (7, 5, 3, False, False),
    (7, 5, 3, True, True),     # residual Linear (in != out)
    (7, 5, 3, True, False),
    (6, 6, 3, True, True),     # residual Identity (in == per-head out)
    (6, 6, 2, True, False),
]


@pytest.mark.parametrize("in_dim,out_dim,heads,residual,concat", GATCONV_CASES)
def test_gatconv_matches_dense(in_dim, out_dim, heads, residual, concat):
    torch.manual_seed(0)
    N = 11
    conv = GATConv(in_dim, out_dim, heads, residual=residual, concat=concat).double()
    if residual:
        expected = torch.nn.Linear if in_dim != out_dim else torch.nn.Identity
        assert isinstance(conv.res_fc, expected)
    else:
        assert conv.res_fc is None
    x = torch.randn(N, in_dim, dtype=torch.float64)
    edge_index = random_edges(N, 35, seed=2)
    edge_index = edge_index[:, edge_index[1] != 4]           # node 4: no incoming edge
    out = conv(x, edge_index)
    ref = gatconv_dense(conv, x, edge_index)
    assert out.shape == (N, heads * out_dim if concat else out_dim)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    # the node without incoming edges gets only its residual (0 without one)
    if not residual:
        assert (out[4] == 0).all()


def test_gatconv_float32_close_to_dense():
    torch.manual_seed(1)
    conv = GATConv(9, 4, 2, residual=True)
    x = torch.randn(15, 9)
    edge_index = random_edges(15, 60, seed=3)
    torch.testing.assert_close(conv(x, edge_index), gatconv_dense(conv, x, edge_index),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("residual", [False, True])
def test_gatconv_empty_graph_and_isolated_nodes(residual):
    torch.manual_seed(0)
    conv = GATConv(6, 4, 2, residual=residual)
    x = torch.randn(5, 6)
    empty = torch.zeros(2, 0, dtype=torch.long)
    out = conv(x, empty)
    assert out.shape == (5, 8) and torch.isfinite(out).all()
    if not residual:
        assert (out == 0).all()
    # nodes 3 and 4 isolated
    edge_index = torch.tensor([[0, 1, 2, 0], [1, 2, 0, 0]])
    out = conv(x, edge_index)
    assert out.shape == (5, 8) and torch.isfinite(out).all()
    torch.testing.assert_close(out, gatconv_dense(conv, x, edge_index), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------
# GAT

def test_gat_paper_parameter_counts():
    assert num_params(gat_teacher()) == 3_640_748
    assert num_params(gat_student()) == 185_172


def test_gat_return_feats_shapes():
    torch.manual_seed(0)
    N = 20
    x = torch.randn(N, 50)
    edge_index = random_edges(N, 80, seed=4, allow_self=False)
    for model, widths in [(gat_teacher(), [1024, 1024]), (gat_student(), [136] * 4)]:
        feats, logits = model(x, edge_index, return_feats=True)
        assert logits.shape == (N, 121)
        assert [tuple(f.shape) for f in feats] == [(N, w) for w in widths]
        assert all(torch.isfinite(f).all() for f in feats) and torch.isfinite(logits).all()
        torch.testing.assert_close(model(x, edge_index), logits)


def test_gat_matches_stacked_dense_layers():
    """GAT = dense GATConv layers, ELU between them, features taken before the ELU; the
    first layer has no residual, the later ones do, the output layer averages its heads."""
    torch.manual_seed(0)
    N = 13
    model = GAT(5, [4, 6, 3], [2, 3, 2, 3], 7).double()
    assert model.layers[0].res_fc is None
    assert all(layer.res_fc is not None for layer in model.layers[1:])
    assert [layer.concat for layer in model.layers] == [True, True, True, False]
    x = torch.randn(N, 5, dtype=torch.float64)
    edge_index = random_edges(N, 45, seed=7, allow_self=False)
    feats, logits = model(x, edge_index, return_feats=True)
    h, ref_feats = x, []
    for layer in model.layers[:-1]:
        h = gatconv_dense(layer, h, edge_index)
        ref_feats.append(h)
        h = F.elu(h)
    ref_logits = gatconv_dense(model.layers[-1], h, edge_index)
    assert logits.shape == (N, 7)
    assert len(feats) == 3
    for f, r in zip(feats, ref_feats):
        torch.testing.assert_close(f, r, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-10, atol=1e-10)


def test_gat_heads_mismatch_raises():
    with pytest.raises(ValueError):
        GAT(50, [68, 68], [2, 2], 121)
    with pytest.raises(ValueError):
        GAT(50, [68, 68], [2, 2, 2, 2], 121)


# ----------------------------------------------------------------------------------------
# knn_graph against SciPy's cKDTree

def check_knn_against_kdtree(x, k, tol):
    B, P, _ = x.shape
    edge_index = knn_graph(x, k)
    assert edge_index.dtype == torch.int64 and edge_index.device == x.device
    assert edge_index.shape == (2, B * P * k)
    torch.testing.assert_close(edge_index[1], torch.arange(B * P).repeat_interleave(k))
    nbr = edge_index[0].view(B, P, k)
    pts = x.double().numpy()
    for b in range(B):
        ids = nbr[b]
        assert ((ids >= b * P) & (ids < (b + 1) * P)).all()  # never crosses clouds
        ids = (ids - b * P).numpy()
        tree = cKDTree(pts[b])
        kk = min(k + 1, P)
        dist, idx = tree.query(pts[b], k=kk)
        dist, idx = dist.reshape(P, kk), idx.reshape(P, kk)
        for p in range(P):
            assert p in set(ids[p])                          # the point itself is included
            assert len(set(ids[p])) == k                     # k distinct neighbours
            if set(ids[p]) == set(idx[p, :k]):
                continue
            # allowed only for a (float-rounding) tie at the k-th distance
            assert kk > k and dist[p, k] ** 2 - dist[p, k - 1] ** 2 < tol, (b, p)
            mine = np.sort(((pts[b][ids[p]] - pts[b][p]) ** 2).sum(-1))
            np.testing.assert_allclose(mine, dist[p, :k] ** 2, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("F_dim", [3, 16])
@pytest.mark.parametrize("k", [1, 5, 10])
def test_knn_graph_matches_kdtree(dtype, F_dim, k):
    g = torch.Generator().manual_seed(10 * k + F_dim)
    x = torch.randn(3, 50, F_dim, generator=g, dtype=torch.float64).to(dtype)
    check_knn_against_kdtree(x, k, tol=0.0 if dtype == torch.float64 else 1e-4)


@pytest.mark.parametrize("k", [1, 10, 20, 50])
def test_smallest_ranks_only_the_chunks_it_must(k, monkeypatch):
    """400 columns: smallest ranks only the k chunks of 8 columns with the smallest minima
    (P >= 2·8·k; k = 50 takes topk); the same ids as topk, in its order. Through knn_graph: the k
    nearest against cKDTree, one cloud a block."""
    g = torch.Generator().manual_seed(k)
    rank = torch.randn(2, 7, 400, generator=g)
    got = models.smallest(rank, k)
    assert got.shape == (2, 7, k)
    assert torch.equal(got, rank.topk(k, dim=-1, largest=False).indices)  # nearest first
    monkeypatch.setattr(models, "BLOCK", 400 * 400)
    x = torch.randn(2, 400, 3, generator=g, dtype=torch.float64)
    check_knn_against_kdtree(x, k, tol=0.0)


def test_knn_graph_k_equals_p_and_errors():
    x = torch.randn(2, 6, 3)
    edge_index = knn_graph(x, 6)                             # every point of its cloud
    for n in range(12):
        b = n // 6
        assert set(edge_index[0, edge_index[1] == n].tolist()) == set(range(6 * b, 6 * b + 6))
    for k in (0, -1, 7):
        with pytest.raises(ValueError):
            knn_graph(x, k)


# ----------------------------------------------------------------------------------------
# EdgeConv against a loop over nodes

def edgeconv_loop(conv, x, edge_index, train_stats=False):
    """Reference: x_i' = max_j LeakyReLU(BN(W [x_j - x_i || x_i])) node by node. BN in eval
    mode uses the running stats; with train_stats, the biased stats over all edges."""
    W, bn = conv.fc.weight, conv.bn
    src, dst = edge_index.tolist()
    if train_stats:
        h_all = torch.stack([W @ torch.cat([x[j] - x[i], x[i]]) for j, i in zip(src, dst)])
        mean, var = h_all.mean(0), h_all.var(0, unbiased=False)
    else:
        mean, var = bn.running_mean, bn.running_var
    out = torch.zeros(x.size(0), W.size(0), dtype=x.dtype)
    for i in range(x.size(0)):
        vals = []
        for j, t in zip(src, dst):
            if t != i:
                continue
            h = W @ torch.cat([x[j] - x[i], x[i]])
            h = (h - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias
            vals.append(torch.where(h > 0, h, 0.2 * h))
        if vals:
            out[i] = torch.stack(vals).max(0).values
    return out


def make_edgeconv(in_dim, out_dim, seed):
    torch.manual_seed(seed)
    conv = EdgeConv(in_dim, out_dim).double()
    with torch.no_grad():  # non-trivial BN parameters and running stats; γ of both signs
        conv.bn.weight.uniform_(0.5, 2.0)
        conv.bn.weight[1::2].neg_()
        conv.bn.bias.normal_()
        conv.bn.running_mean.normal_()
        conv.bn.running_var.uniform_(0.5, 3.0)
    return conv


def test_edgeconv_eval_matches_loop():
    conv = make_edgeconv(4, 6, seed=0).eval()
    x = torch.randn(2, 9, 4, dtype=torch.float64)
    edge_index = knn_graph(x, 4)
    for k in (None, 4):  # the generic path and the fused one for knn_graph's layout
        out = conv(x.view(18, 4), edge_index, k)
        torch.testing.assert_close(out, edgeconv_loop(conv, x.view(18, 4), edge_index),
                                   rtol=1e-10, atol=1e-10)
    # an arbitrary graph with a node (5) without incoming edges -> 0
    edge_index = random_edges(18, 50, seed=6)
    edge_index = edge_index[:, edge_index[1] != 5]
    out = conv(x.view(18, 4), edge_index)
    torch.testing.assert_close(out, edgeconv_loop(conv, x.view(18, 4), edge_index),
                               rtol=1e-10, atol=1e-10)
    assert (out[5] == 0).all()


@pytest.mark.parametrize("train", [False, True])
def test_edgeconv_fused_eval_path_used_and_equal_to_literal(train, monkeypatch):
    """In eval mode on a knn_graph (k given), forward hands over to forward_eval_knn (and
    only then); its output equals the literal edge-by-edge path on the shuffled edges."""
    conv = make_edgeconv(5, 7, seed=2).train(train)
    x = torch.randn(3, 11, 5, dtype=torch.float64).view(33, 5)
    edge_index = knn_graph(x.view(3, 11, 5), 4)
    shuffled = edge_index[:, torch.randperm(edge_index.size(1))]     # same edges, other layout
    calls = []
    fused = conv.forward_eval_knn
    monkeypatch.setattr(conv, "forward_eval_knn", lambda *a: calls.append(1) or fused(*a))
    out = conv(x, edge_index, 4)
    assert len(calls) == (0 if train else 1)
    if not train:
        torch.testing.assert_close(out, fused(x, edge_index[0].view(33, 4)), rtol=0, atol=0)
    # the literal path (in train mode, BN's batch stats do not depend on the edge order)
    torch.testing.assert_close(out, conv(x, shuffled), rtol=1e-12, atol=1e-12)
    assert len(calls) == (0 if train else 1)                       # not for the shuffled graph


def test_edgeconv_train_mode_matches_loop():
    conv = make_edgeconv(3, 5, seed=1).train()
    x = torch.randn(2, 8, 3, dtype=torch.float64)
    edge_index = knn_graph(x, 3)
    ref = edgeconv_loop(conv, x.view(16, 3), edge_index, train_stats=True)
    for k in (None, 3):  # a max over the reshaped (N, k, F) edges when k is given
        out = conv(x.view(16, 3), edge_index, k)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------------------
# DGCNN

def test_dgcnn_paper_parameter_counts():
    assert num_params(dgcnn_teacher()) == 1_809_576
    assert num_params(dgcnn_student()) == 99_560


def small_dgcnn(**kw):
    args = dict(edge_dims=(8, 8, 16), emb_dim=32, pool="maxavg", mlp=(16, 12), k=5,
                num_classes=7)
    args.update(kw)
    return DGCNN(**args)


def warm_up_bn(model, B, P, steps=3, dtype=torch.float32):
    """A few train-mode forwards so that BN running stats are non-trivial."""
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(B, P, 3, dtype=dtype))
    return model.eval()


@pytest.mark.parametrize("kw", [dict(), dict(pool="max", emb_dim=0, mlp=(16,))])
def test_dgcnn_permutation_invariance(kw):
    torch.manual_seed(0)
    B, P = 3, 30
    model = warm_up_bn(small_dgcnn(**kw), B, P)
    pts = torch.randn(B, P, 3)                               # distinct points
    perm = torch.stack([torch.randperm(P) for _ in range(B)])   # one per cloud
    shuffled = torch.gather(pts, 1, perm.unsqueeze(-1).expand(B, P, 3))
    with torch.no_grad():
        logits = model(pts)
        logits_perm = model(shuffled)
    assert logits.shape == (B, 7)
    torch.testing.assert_close(logits_perm, logits, rtol=1e-5, atol=1e-5)
    # shuffling the clouds themselves shuffles the logits the same way
    with torch.no_grad():
        torch.testing.assert_close(model(pts[[2, 0, 1]]), logits[[2, 0, 1]],
                                   rtol=1e-5, atol=1e-5)


def test_dgcnn_edge_features():
    torch.manual_seed(0)
    B, P, k = 2, 16, 5
    model = small_dgcnn(k=k).eval()
    pts = torch.randn(B, P, 3)
    with torch.no_grad():
        feats, logits = model.edge_features(pts), model(pts)
    assert logits.shape == (B, 7)
    assert len(feats) == len(model.convs) == 3
    prev = pts.reshape(B * P, 3)
    for (x, edge_index), width in zip(feats, (8, 8, 16)):
        assert x.shape == (B * P, width)
        assert edge_index.shape == (2, B * P * k) and edge_index.dtype == torch.int64
        # dynamic graph: the kNN graph of this EdgeConv's input features
        assert torch.equal(edge_index, knn_graph(prev.view(B, P, -1), k))
        prev = x


def test_dgcnn_student_forward_small():
    torch.manual_seed(0)
    model = dgcnn_student().eval()
    with torch.no_grad():
        pts = torch.randn(2, 24, 3)
        feats, logits = model.edge_features(pts), model(pts)
    assert logits.shape == (2, 40) and torch.isfinite(logits).all()
    assert [f.shape[1] for f, _ in feats] == [32, 32, 64, 128]
    assert all(ei.shape == (2, 2 * 24 * 10) for _, ei in feats)


def test_dgcnn_float64():
    torch.manual_seed(0)
    model = small_dgcnn().double()
    logits = model(torch.randn(2, 12, 3, dtype=torch.float64))   # train mode
    assert logits.dtype == torch.float64
    logits.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float64
               for p in model.parameters())
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 12, 3, dtype=torch.float64))
    assert out.dtype == torch.float64 and torch.isfinite(out).all()


def test_dgcnn_bad_pool_raises():
    with pytest.raises(ValueError):
        DGCNN(pool="avg")


@pytest.mark.parametrize("model", [dgcnn_teacher(), dgcnn_student(), small_dgcnn()],
                         ids=["teacher", "student", "small"])
def test_dgcnn_embed_is_forward_before_the_head(model):
    """embed gives the EdgeConv outputs and the pooled global feature (HKD's instances on
    ModelNet40): max (⊕ mean) over each cloud's points of the concatenated EdgeConv outputs
    (through the embedding layer when there is one); the head of it is forward."""
    torch.manual_seed(0)
    model.eval()
    B, P = 3, 24
    pts = torch.randn(B, P, 3)
    with torch.no_grad():
        feats, pooled = model.embed(pts)
        x = torch.cat([f for f, _ in feats], dim=-1)
        x = (model.emb(x) if model.emb is not None else x).view(B, P, -1)
        want = x.max(dim=1).values
        if model.pool == "maxavg":
            want = torch.cat([want, x.mean(dim=1)], dim=-1)
        torch.testing.assert_close(pooled, want)
        assert pooled.shape == (B, model.global_dim)
        torch.testing.assert_close(model.head(pooled), model(pts))
    assert (dgcnn_teacher().global_dim, dgcnn_student().global_dim) == (2048, 256)
