"""Distillation losses: Local Structure Preserving (LSP) and the methods it is compared with.

"Distilling Knowledge from Graph Convolutional Networks" (Yang, Qiu, Song, Tao, Wang;
CVPR 2020, https://arxiv.org/abs/2003.10477): Eq. (3) the local structure, Eq. (4) and (8)
the similarity kernels, Eq. (5)-(6) the LSP loss, Sec. 3.5 the union graph of dynamic graphs,
Sec. 4.1 the baselines KD, FitNet and AT; then a later method the paper does not have,
Holistic KD (Zhou et al., ICCV 2021).
Every function needs only torch: copy the file down to knn_lsp_loss (the imports, KERNELS,
BLOCK and the functions from check to knn_lsp_loss) into your own code, or `pip install -e .`
and import them.

Notation (paper -> code):
    z_i, z_j      feat[i], feat[j]                node features of one layer, (N, F)
    (j, i) ∈ E    edge_index[:, e] = (j, i)       row 0 = source j, row 1 = centre (target) i
    LS_ij         log_local_structure(...).exp()  Eq. (3), one value per edge, (E,)
    S_i, L_LSP    inside lsp_loss                 Eq. (5) per node (N,), Eq. (6) their mean
    E^u           union_graph(...)                Sec. 3.5; kNN graphs: knn_lsp_loss's table
Suffixes _s and _t: student and teacher. N nodes, E edges, F features, C labels or classes."""
import math
import numbers

import torch
import torch.nn.functional as F

KERNELS = ("rbf", "poly", "linear", "l2", "l1_official")  # SIM of Eq. (3), see below
BLOCK = 2 ** 19  # numbers (rows of z_i and z_j) PairTerms gathers at once on the CPU; GPUs: 16×


def check(name, x, dims, floating=True):
    """x if it is a torch tensor of `dims` dimensions, real floating point and finite
    (floating=False: int64 or int32); else a TypeError or ValueError that names it. The
    finiteness test takes one pass (aminmax): 20× faster than isfinite(x).all() on the CPU."""
    if not torch.is_tensor(x):
        raise TypeError(f"{name} must be a torch tensor, got {type(x).__name__}")
    if x.dim() != dims or not (x.is_floating_point() if floating else
                               x.dtype in (torch.int64, torch.int32)):
        kind = "real floating-point" if floating else "int64 (or int32)"
        raise ValueError(f"{name} must be a {dims}-d {kind} tensor, got {x.dtype} "
                         f"{tuple(x.shape)}")
    if floating and x.numel() and not torch.stack(x.aminmax()).isfinite().all():
        raise ValueError(f"{name} contains NaN or inf: has the model diverged?")
    return x


def number(name, x, ok, must, integer=False):
    """x if it is a number (integer: an int), not a bool or a tensor, and ok(x); else a
    TypeError or ValueError that names it."""
    if isinstance(x, bool) or not isinstance(x, numbers.Integral if integer else numbers.Real):
        raise TypeError(f"{name} must be {'an int' if integer else 'a number'}, got "
                        f"{type(x).__name__}")
    if not ok(x):
        raise ValueError(f"{name} must be {must}, got {x}")
    return x


def check_ids(name, ids, N, rows, shape):
    """ids if it is a 2-d int64 or int32 tensor of `rows` rows (its shape: the string `shape`)
    and nodes in [0, N): an edge list (2, E) or a neighbour table (N, k); else a TypeError or
    ValueError that names it."""
    if check(name, ids, 2, floating=False).size(0) != rows:
        raise ValueError(f"{name} must be {shape}, got {tuple(ids.shape)}")
    if ids.numel():  # Python ints: N may lie beyond int32 ids' range
        lo, hi = torch.stack(ids.aminmax()).tolist()
        if lo < 0 or hi >= N:
            raise ValueError(f"{name} refers to node {lo if lo < 0 else hi}, outside the "
                             f"nodes [0, {N})")
    return ids


def check_kernel(kernel, sigma, degree, c):
    """Raises a ValueError or TypeError for an unknown kernel or a bad parameter of it."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; known kernels: {', '.join(KERNELS)}")
    if kernel == "rbf" and sigma != "auto":  # 2σ² neither 0 nor inf in float32
        number("sigma", sigma, lambda s: 1e-15 <= s <= 1e15, "in [1e-15, 1e15], or 'auto'")
    if kernel == "poly":
        number("degree", degree, lambda d: d >= 1, ">= 1", integer=True)
        number("c", c, math.isfinite, "finite")


def log_local_structure(feat, edge_index, kernel="rbf", sigma=1.0, degree=2, c=0.0,
                        num_nodes=None):
    """Eq. (3): the local structure LS_i of every centre node i, in logs.

    LS_ij = exp(SIM(z_i, z_j)) / Σ_{j':(j',i)∈E} exp(SIM(z_i, z_j'))           Eq. (3)
    SIM:  "rbf"    exp(-||z_i - z_j||² / (2σ²)), σ = 1 in the paper            Eq. (8)
          "poly"   (z_iᵀz_j + c)^d, d = 2, c = 0                             Eq. (8)
          "linear" z_iᵀz_j                                                   Eq. (8)
          "l2"     ||z_i - z_j||²                                            Eq. (4)
          "l1_official" exp(-||z_i - z_j||₁ / 100), the official code's (not the paper's)
    sigma="auto" (not in the paper): σ = the median of ||z_i - z_j|| over the edges j ≠ i.
    With σ = 1, once neighbours lie more than about 6 apart (unit-scale features of width 16
    or more already do), SIM < 1e-8 on every edge: every LS_i is uniform and LSP vanishes.
    Args:
        feat: (N, F) node features z; half precision is computed in float32.
        edge_index: (2, E) int64 or int32, column e = (j, i): from neighbour j to centre i.
        num_nodes: N, defaults to feat.size(0). A node without incoming edges has no LS_i.
    Returns: (E,) log LS_ij; exp() of the values on each centre's incoming edges sums to 1.
    Raises ValueError for malformed input and for NaN or inf in feat (a diverged model)."""
    check("feat", feat, 2)
    N = feat.size(0) if num_nodes is None else number(
        "num_nodes", num_nodes, lambda n: 0 <= n <= feat.size(0), "in [0, feat.size(0)]", True)
    check_ids("edge_index", edge_index, N, 2, "(2, E)")
    check_kernel(kernel, sigma, degree, c)
    feat = feat.float() if feat.dtype in (torch.float16, torch.bfloat16) else feat
    src, dst = edge_index                                     # j, i: (E,) each
    # 1. What SIM needs of each pair, on every edge: z_iᵀz_j, ||z_i - z_j||₁ or ||z_i - z_j||²
    t = PairTerms.apply(feat, dst, src[:, None], kernel)[:, 0]  # (E,): a row per edge
    # 2. SIM(z_i, z_j), Eq. (4) / (8)
    sim = similarity(t, kernel, sigma, degree, c, src != dst)  # (E,)
    # 3. Eq. (3): a softmax over each centre's incoming edges, in logs; each group's max is
    #    subtracted (detached: the softmax does not depend on it) so that exp() stays finite
    group_max = sim.new_zeros(N).scatter_reduce_(0, dst, sim.detach(), "amax",
                                                 include_self=False)       # (N,)
    shifted = sim - group_max[dst]                            # (E,) all <= 0
    group_sum = sim.new_zeros(N).index_add_(0, dst, shifted.exp())         # (N,)
    return shifted - group_sum.log()[dst]                     # (E,)


def similarity(t, kernel, sigma, degree, c, pairs):
    """Step 2 of log_local_structure: SIM of Eq. (4) / (8) from PairTerms' t, any shape; pairs:
    where t belongs to a pair j ≠ i (σ = "auto" is the median distance over those)."""
    if kernel == "rbf":
        if sigma == "auto":  # NOTE: not the paper's σ = 1; a self-loop's distance is always 0
            d2 = t.detach()[pairs]                            # self-loops left out
            sigma = d2.median().sqrt().clamp_min(1e-12) if d2.numel() else 1.0
        sim = torch.exp(-t / (2 * sigma ** 2))
    elif kernel == "poly":
        sim = (t + c) ** degree
    elif kernel == "l1_official":
        sim = torch.exp(-t / 100)
    else:  # "linear": z_iᵀz_j; "l2": NOTE: Eq. (4) as printed, a *positive* squared distance,
        sim = t  # so after the softmax the farthest neighbour weighs most; kept literal
    if sim.numel() and not torch.stack(sim.detach().aminmax()).isfinite().all():
        raise ValueError(f"SIM ({kernel}) overflows {sim.dtype} on some edge: the features "
                         "are too large for it; scale them down (or use float64)")
    return sim


def lsp_loss(feat_s, feat_t, edge_index, kernel="rbf", sigma=1.0, degree=2, c=0.0,
             num_nodes=None, teacher_first=False, log_ls_t=None):
    """Local Structure Preserving loss, Eq. (3)-(6) of Yang et al., CVPR 2020.

    LS_ij  = exp(SIM(z_i, z_j)) / Σ_{j':(j',i)∈E} exp(SIM(z_i, z_j'))      Eq. (3)
    S_i    = KL(LS_i^s || LS_i^t) = Σ_j LS_ij^s log(LS_ij^s / LS_ij^t)     Eq. (5)
    L_LSP  = (1/N) Σ_i S_i                                                 Eq. (6)
    Args:
        feat_s: (N, F_s) student features; gradients flow into them.
        feat_t: (N, F_t) teacher features, F_t may differ from F_s; receive no gradient.
        edge_index: (2, E), column e = (j, i); for dynamic graphs the union of both models'
            graphs (Sec. 3.5, union_graph).
        kernel, sigma, degree, c: SIM (log_local_structure); the defaults are the paper's.
            sigma="auto" gives each model its own median σ.
        num_nodes: N, defaults to feat_s.size(0); nodes without incoming edges add 0.
        teacher_first: KL(LS^t || LS^s), the official code's direction, instead of Eq. (5).
        log_ls_t: (E,) the teacher's log_local_structure, if known: a frozen teacher on a
            fixed graph needs it only once (train_ppi.py); feat_t is then not read.
    Returns: a scalar >= 0 (float32 for half-precision input), 0 when the structures agree.
    Raises ValueError for malformed input and for NaN or inf in the features."""
    N = check("feat_s", feat_s, 2).size(0) if num_nodes is None else num_nodes
    if log_ls_t is None and check("feat_t", feat_t, 2).size(0) != feat_s.size(0):
        raise ValueError(f"feat_s and feat_t must have the same N, got {tuple(feat_s.shape)} "
                         f"and {tuple(feat_t.shape)}")
    log_ls_s = log_local_structure(feat_s, edge_index, kernel, sigma, degree, c, N)  # (E,)
    if log_ls_t is None:
        with torch.no_grad():                                 # the teacher is frozen
            log_ls_t = log_local_structure(feat_t, edge_index, kernel, sigma, degree, c, N)
    elif check("log_ls_t", log_ls_t, 1).shape != log_ls_s.shape:
        raise ValueError(f"log_ls_t must hold one value per edge, ({log_ls_s.numel()},), got "
                         f"{tuple(log_ls_t.shape)}")
    # 4. Eq. (5): S_i = Σ_j p_ij log(p_ij / q_ij), p = LS^s, q = LS^t (swapped with
    #    teacher_first); clamped at 0 only against float rounding (~-1e-10)
    log_p, log_q = (log_ls_t.detach(), log_ls_s) if teacher_first else (log_ls_s,
                                                                         log_ls_t.detach())
    kl_edge = log_p.exp() * (log_p - log_q)                   # (E,)
    S = kl_edge.new_zeros(N).index_add_(0, edge_index[1], kl_edge).clamp_min(0)  # (N,)
    # 5. Eq. (6): the mean over all N nodes
    return S.mean() if N > 0 else S.sum()


def pair_blocks(feat, centre, nbr):
    """PairTerms' blocks of rows: (slice r of the rows, z_i (rows, 1, F), z_j (rows, K, F)),
    (K + 1)·F numbers a row."""
    K, F_ = nbr.size(1), feat.size(1)
    step = max(1, BLOCK * (1 if feat.device.type == "cpu" else 16) // max((K + 1) * F_, 1))
    for start in range(0, nbr.size(0), step):
        r = slice(start, start + step)
        ids = nbr[r]                                          # (rows, K)
        yield r, feat.index_select(0, centre[r])[:, None], feat.index_select(
            0, ids.flatten()).view(*ids.shape, F_)


class PairTerms(torch.autograd.Function):
    """Step 1 of log_local_structure: for each centre i = centre[m] and each of its neighbours
    j = nbr[m, k], z_iᵀz_j (poly, linear), ||z_i - z_j||₁ (l1_official) or ||z_i - z_j||² (rbf,
    l2); (N, F), (M,), (M, K) -> (M, K); an edge list is M = E rows of K = 1.
    NOTE: not in the paper, the same numbers, taken in blocks of pairs: memory O(M·K + N·F),
    not O(M·K·F) (gigabytes on ModelNet40), and a backward pass that adds every block into one
    (N, F) gradient (autograd zero-fills one per block: 3-5× slower). Distances come from the
    pairs, never as ||z_i||² + ||z_j||² - 2 z_iᵀz_j (it cancels in float32 for close pairs).
    Tested equal to autograd on the plain formulas, gradcheck included. No second derivative."""
    @staticmethod
    def forward(ctx, feat, centre, nbr, kernel):
        ctx.save_for_backward(feat, centre, nbr)
        ctx.kernel = kernel
        t = feat.new_empty(nbr.shape)                         # (M, K)
        for r, z_i, z_j in pair_blocks(feat, centre, nbr):
            if kernel in ("poly", "linear"):
                t[r] = (z_i * z_j).sum(-1)                    # z_iᵀz_j
            elif kernel == "l1_official":  # z_j - z_i in place: z_j is a fresh gather
                t[r] = z_j.sub_(z_i).abs_().sum(-1)           # ||z_i - z_j||₁
            else:
                t[r] = z_j.sub_(z_i).pow_(2).sum(-1)          # ||z_i - z_j||²
        return t

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_t):                                # (M, K) -> (N, F)
        feat, centre, nbr = ctx.saved_tensors
        grad = torch.zeros_like(feat)
        for r, z_i, z_j in pair_blocks(feat, centre, nbr):
            g = grad_t[r, :, None]                            # (rows, K, 1)
            if ctx.kernel in ("poly", "linear"):  # d(z_iᵀz_j) = z_jᵀdz_i + z_iᵀdz_j
                to_i, to_j = over_neighbours(z_j * g), z_i * g
            else:  # d = z_j - z_i: d||d||₁ = sign(d)ᵀdd, d||d||² = 2dᵀdd, dd = dz_j - dz_i
                d = z_j.sub_(z_i)
                to_j = d.sign_().mul_(g) if ctx.kernel == "l1_official" else d.mul_(2 * g)
                to_i = over_neighbours(to_j).neg()
            grad.index_add_(0, centre[r], to_i)  # to_i negated, not alpha=-1: 2× slower
            grad.index_add_(0, nbr[r].flatten(), to_j.flatten(0, 1))
        return grad, None, None, None


def over_neighbours(x):
    """(rows, K, F) -> (rows, F), the sum over K; for K = 1 the rows themselves, not a copy
    (a sum over one entry is 4× slower in torch)."""
    return x[:, 0] if x.size(1) == 1 else x.sum(1)


def union_graph(edge_index_s, edge_index_t, num_nodes):
    """Sec. 3.5: E^u = E^s ∪ E^t, the union of the student's and the teacher's edges (j, i),
    used only inside the loss: each model still aggregates over its own graph.
    (2, E_s), (2, E_t) over the same N nodes -> (2, E_u) int64, each edge once, sorted by
    centre i, then by source j."""
    number("num_nodes", num_nodes, lambda n: 0 <= n and int(n) ** 2 < 2 ** 63,  # the key
           "in [0, 3.03e9): the key i·N + j of an edge is an int64", integer=True)
    edges = torch.cat([check_ids(f"edge_index_{m}", e, num_nodes, 2, "(2, E)")
                       for m, e in (("s", edge_index_s), ("t", edge_index_t))], 1).long()
    key = torch.unique(edges[1] * num_nodes + edges[0])       # (E_u,) sorted: by i, then j
    return torch.stack([key % num_nodes, key // num_nodes])   # (2, E_u)


def knn_lsp_loss(feat_s, feat_t, nbr_s, nbr_t, kernel="rbf", sigma=1.0, degree=2, c=0.0,
                 teacher_first=False):
    """lsp_loss over the union of two kNN graphs (Sec. 3.5) given as neighbour tables:
    lsp_loss(feat_s, feat_t, union_graph(E^s, E^t, N), ...) up to float rounding, faster.
    NOTE: not in the paper, the same loss: each centre i has at most k_s + k_t neighbours, so
    its local structure is a row of an (N, k_s + k_t) table, and Eq. (3) a log_softmax along
    the row, repeats of a neighbour masked out: no union graph to build, no scatter over the
    edges, and z_i taken once per row, not once per edge (ModelNet40: 0.75-0.9× the time of
    union_graph and lsp_loss, docs/performance.md). Tested equal to them, gradients and
    gradcheck included.
    Args:
        feat_s, feat_t: (N, F_s), (N, F_t), as lsp_loss.
        nbr_s, nbr_t: (N, k_s), (N, k_t) int64 or int32, row i the neighbours j of centre i
            (edges (j, i)); from knn_graph: edge_index[0].view(N, k).
        kernel, sigma, degree, c, teacher_first: as lsp_loss.
    Returns: a scalar >= 0 (float32 for half-precision input), 0 when the structures agree."""
    N = check("feat_s", feat_s, 2).size(0)
    if check("feat_t", feat_t, 2).size(0) != N:
        raise ValueError(f"feat_s and feat_t must have the same N, got {tuple(feat_s.shape)} "
                         f"and {tuple(feat_t.shape)}")
    for name, nbr in (("nbr_s", nbr_s), ("nbr_t", nbr_t)):
        check_ids(name, nbr, N, N, f"(N, k), a row for each of the N = {N} nodes")
    check_kernel(kernel, sigma, degree, c)
    nbr = torch.cat([nbr_s, nbr_t], 1).long().sort(1).values  # (N, K) row i: its j, ascending
    keep = torch.ones_like(nbr, dtype=torch.bool)             # (N, K) each edge (j, i) once
    keep[:, 1:] = nbr[:, 1:] != nbr[:, :-1]
    centre = torch.arange(N, device=nbr.device)               # (N,) i

    def log_ls(feat):  # log_local_structure on the table: (N, F) -> (N, K), 0 where masked
        feat = feat.float() if feat.dtype in (torch.float16, torch.bfloat16) else feat
        t = PairTerms.apply(feat, centre, nbr, kernel)        # (N, K)
        sim = similarity(t, kernel, sigma, degree, c, keep & (nbr != centre[:, None]))
        return sim.masked_fill(~keep, -math.inf).log_softmax(1).masked_fill(~keep, 0)

    log_ls_s = log_ls(feat_s)                                 # Eq. (3), (N, K)
    with torch.no_grad():                                     # the teacher is frozen
        log_ls_t = log_ls(feat_t)
    log_p, log_q = (log_ls_t, log_ls_s) if teacher_first else (log_ls_s, log_ls_t)
    S = (log_p.exp() * (log_p - log_q)).sum(1).clamp_min(0)  # Eq. (5), (N,); masked: 0
    return S.mean() if N > 0 else S.sum()                     # Eq. (6)


# Baselines of Sec. 4.1 -------------------------------------------------------------------
def kd_loss(logits_s, logits_t, T=4.0, multilabel=False):
    """Knowledge distillation (Hinton et al., 2015): KL(p_t || p_s) at temperature T, × T².
    multilabel=False: p = softmax(logits / T), averaged over samples. multilabel=True:
    p = sigmoid(logits / T) per label, a Bernoulli KL averaged over samples and labels (for
    PPI's 121 labels, where the paper ran no KD). (N, C), (N, C) -> scalar."""
    number("T", T, lambda v: 0 < v < math.inf, "a finite number > 0")
    if check("logits_s", logits_s, 2).shape != check("logits_t", logits_t, 2).shape:
        raise ValueError(f"logits_s and logits_t must have the same shape (N, C), got "
                         f"{tuple(logits_s.shape)} and {tuple(logits_t.shape)}")
    s, t = logits_s / T, logits_t.detach() / T
    if multilabel:  # KL(Bern(p_t) || Bern(p_s)) = BCE(s, p_t) - BCE(t, p_t): 0 when s == t
        p_t = torch.sigmoid(t)
        return (F.binary_cross_entropy_with_logits(s, p_t, reduction="none")
                - F.binary_cross_entropy_with_logits(t, p_t, reduction="none")).mean() * T * T
    return F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), reduction="batchmean",
                    log_target=True) * T * T


def fitnet_loss(feat_s, feat_t, regressor):
    """FitNets hint (Romero et al., 2015): MSE(regressor(z^s), z^t), the regressor (e.g.
    nn.Linear(F_s, F_t)) trained with the student. (N, F_s), (N, F_t) -> scalar."""
    pred = regressor(check("feat_s", feat_s, 2))              # (N, F_t)
    if pred.shape != check("feat_t", feat_t, 2).shape:
        raise ValueError(f"regressor(feat_s) must have feat_t's shape {tuple(feat_t.shape)}, "
                         f"got {tuple(pred.shape)}")
    return F.mse_loss(pred, feat_t.detach())


def at_loss(feat_s, feat_t, batch):
    """Attention transfer (Zagoruyko & Komodakis, 2017) on graphs: a_i = Σ_c |F_ic| per node,
    L2-normalised within each graph or point cloud, MSE between student and teacher.
    feat_s (N, F_s), feat_t (N, F_t), batch (N,) int64 graph or cloud of each node."""
    if not (check("feat_s", feat_s, 2).size(0) == check("feat_t", feat_t, 2).size(0)
            == check("batch", batch, 1, floating=False).numel()):
        raise ValueError(f"feat_s, feat_t and batch must have the same N, got "
                         f"{feat_s.size(0)}, {feat_t.size(0)} and {batch.numel()}")
    G = int(batch.max()) + 1 if batch.numel() else 0

    def attention(feat):
        a = feat.abs().sum(-1)                                # (N,) Σ_c |F_c|
        norm = a.new_zeros(G).index_add_(0, batch, a * a).sqrt()  # (G,) per-graph L2 norm
        return a / norm.clamp_min(1e-12)[batch]               # (N,)

    return F.mse_loss(attention(feat_s), attention(feat_t.detach()))


# Not in the LSP paper: Holistic KD (Zhou et al., ICCV 2021) ------------------------------
class HolisticMaps(torch.nn.Module):
    """HKD's learned maps Θ_l of H = Σ_{l=0..L} Â^l F Θ_l: per hop l a bias-free Linear
    Θ^s_l (F_s -> d) and Θ^t_l (F_t -> d), all trained with the student."""
    def __init__(self, dim_s, dim_t, dim=128, hops=1):
        super().__init__()
        # NOTE: the slides give no d and train Θ^s only; here all Θ, as the HKD authors' code
        self.theta_s = torch.nn.ModuleList(torch.nn.Linear(dim_s, dim, bias=False)
                                           for _ in range(hops + 1))
        self.theta_t = torch.nn.ModuleList(torch.nn.Linear(dim_t, dim, bias=False)
                                           for _ in range(hops + 1))


def hkd_loss(feat_s, feat_t, maps, k=8, tau=0.07, centre=True):
    """Holistic KD, L_HOL of Zhou et al., ICCV 2021 (its slides' Algorithm 1, steps 4-7), over
    the N instances of a batch:
    F     <- F - mean_i F_i         centred over the batch (NOTE: not the slides'; centre)
    A     = φ(F)                    each instance's k nearest others in its model's features
    H     = Σ_{l=0..L} (D^-½ A D^-½)^l F Θ_l                          per model, Eq. (5)-(6)
    f(a, b) = aᵀb / (‖a‖ ‖b‖ τ)
    L_HOL = -(1/N) Σ_i [log softmax_j f(h_i^t, h_j^s) + log softmax_j f(h_i^s, h_j^t)] at j = i
    Args: feat_s (N, F_s), feat_t (N, F_t; no gradient), maps: HolisticMaps(F_s, F_t, d, L);
    k and τ: the HKD authors' code's. Returns a scalar, 2 log N when every pair is alike.
    Raises ValueError for N < k + 1, malformed input, NaN or inf."""
    N = check("feat_s", feat_s, 2).size(0)
    if check("feat_t", feat_t, 2).size(0) != N:
        raise ValueError(f"feat_s and feat_t must have the same N, got {tuple(feat_s.shape)} "
                         f"and {tuple(feat_t.shape)}")
    number("k", k, lambda v: 1 <= v < N, f"in [1, N - 1]: HKD's kNN graph needs k + 1 "
           f"instances in a batch, here N = {N}", integer=True)
    number("tau", tau, lambda v: 0 < v < math.inf, "a finite number > 0")
    widths = (maps.theta_s[0].in_features, maps.theta_t[0].in_features)
    if widths != (feat_s.size(1), feat_t.size(1)):
        raise ValueError(f"maps are for features of widths {widths}, got "
                         f"{(feat_s.size(1), feat_t.size(1))}")

    def holistic(feat, thetas):                               # h / ‖h‖ of one model, (N, d)
        feat = feat.to(thetas[0].weight.dtype)                # the maps' (float32 as a rule)
        # 0. NOTE: pooled features after a ReLU-like activation share one direction; then
        #    every f ≈ 1/τ, L_HOL sits at 2 log N and SGD does not leave it: hence centred
        if centre:
            feat = feat - feat.mean(0, keepdim=True)          # (N, F)
        # 1. φ: symmetric kNN graph without self-loops (NOTE: the slides do not say), no grad
        with torch.no_grad():
            dist = torch.cdist(feat, feat).fill_diagonal_(float("inf"))      # (N, N)
            nbr = dist.topk(k, dim=1, largest=False).indices   # (N, k)
            A = torch.zeros_like(dist).scatter_(1, nbr, 1.0)   # (N, N)
            A = torch.maximum(A, A.t())
            d = A.sum(1).rsqrt()                              # D^-½, every degree >= k
            A_hat = d[:, None] * A * d[None, :]               # (N, N)
        # 2. H = F Θ_0 + Â(F Θ_1 + Â(... + Â F Θ_L)) (Horner)
        H = thetas[-1](feat)                                  # (N, d)
        for theta in reversed(thetas[:-1]):
            H = theta(feat) + A_hat @ H
        return F.normalize(H, dim=1)                          # (N, d), unit rows

    h_s = holistic(feat_s, maps.theta_s)
    h_t = holistic(feat_t.detach(), maps.theta_t)
    # 3. NOTE: the slides' negatives are f(h_i^t, f_j^s), features of another width; here
    #    h_j^s and h_j^t, the batch's other instances; the negative log, averaged over i
    logits = h_t @ h_s.t() / tau                              # (N, N) [teacher i, student j]
    target = torch.arange(N, device=logits.device)
    return F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)
