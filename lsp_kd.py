"""Distillation losses: Local Structure Preserving (LSP) and the baselines it is compared with.

Implements Sec. 3.3-3.5 of "Distilling Knowledge from Graph Convolutional Networks"
(Yang, Qiu, Song, Tao, Wang; CVPR 2020, https://arxiv.org/abs/2003.10477):
Eq. (3) local structure, Eq. (4) and (8) similarity kernels, Eq. (5)-(6) the LSP loss,
Sec. 3.5 the union graph for dynamic graphs, and the Sec. 4.1 baselines (KD, FitNet, AT).

The loss comes twice, with the same numbers (tests/test_lsp_kd.py proves it):
- `lsp_loss`: one literal function, Eq. (3) -> (5) -> (6) in numbered steps. It needs only
  `import torch`: copy it into your own code.
- `lsp_loss_fast`: what the training scripts run. The kernel goes over blocks of edges and is
  recomputed in the backward pass (memory O(E) instead of O(E·F)), and the frozen teacher's
  half can be computed once and reused. Built from the pieces below it.
Then the diagnostics that say whether an LSP term is alive (`median_sigma`, `kl_from_uniform`,
`kernel_saturation`) and a structure metric that cannot saturate (`neighbour_rank_correlation`).
Last, two methods the LSP paper does not have, to compare it with: Holistic KD (`hkd_loss`
and its learned maps `HolisticMaps`; Zhou et al., ICCV 2021) and the label-correlation KD of
the HKD authors' slides on multi-label KD (`label_correlation_loss`); each one function that
needs only `import torch`.

Notation (paper symbol -> name here):
    z_i, z_j      feat[i], feat[j]              node features of one layer, (N, F)
    (j, i) ∈ E    edge_index[:, e] = (j, i)     row 0 = source j, row 1 = centre (target) i
    LS_ij         local_structure(...)[e]       Eq. (3), one value per edge, (E,)
    S_i           per-node KL                   Eq. (5), (N,)
    L_LSP         lsp_loss(...)                 Eq. (6), scalar
    E^u           union_graph(...)              Sec. 3.5
    F, A, H       feat, A, H in hkd_loss        HKD: features, kNN graph, holistic representations
    Θ_l           HolisticMaps.theta_s/_t[l]    HKD: learned maps into the common width d
    P(L_j | L_i)  conditional in label_correlation_loss, (C, C)
Suffixes _s and _t mean student and teacher. Dimensions: N nodes (HKD: instances), E edges,
F features, C labels, d HKD's common width, k neighbours.
"""
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


# ----------------------------------------------------------------------------------------
# The LSP loss in one function, Eq. (3)-(6)

def lsp_loss(feat_s, feat_t, edge_index, kernel="rbf", sigma=1.0, degree=2, c=0.0,
             num_nodes=None, teacher_first=False):
    """Local Structure Preserving loss, Eq. (3)-(6) of Yang et al., CVPR 2020.

    LS_ij  = exp(SIM(z_i, z_j)) / Σ_{j':(j',i)∈E} exp(SIM(z_i, z_j'))      Eq. (3)
    S_i    = KL(LS_i^s || LS_i^t) = Σ_j LS_ij^s log(LS_ij^s / LS_ij^t)     Eq. (5)
    L_LSP  = (1/N) Σ_i S_i                                                 Eq. (6)
    SIM: "rbf" exp(-||z_i - z_j||² / (2σ²)), "poly" (z_iᵀz_j + c)^d, "linear" z_iᵀz_j (Eq. 8),
    "l2" ||z_i - z_j||² (Eq. 4, literally a positive distance: the farthest j weighs most).

    With the paper's σ = 1, once neighbours lie more than about 6 apart (unit-scale features
    of width 16 or more already do), SIM < 1e-8 on every edge: both structures are uniform,
    and the loss and its gradient vanish. Pass sigma="auto" then: each model's own
    median-heuristic σ, the median of ||z_i - z_j|| over the edges j ≠ i (not in the paper;
    one σ per model over all the graphs batched in edge_index, a constant for the gradient).
    Args:
        feat_s: (N, F_s) student features; gradients flow into them.
        feat_t: (N, F_t) teacher features; F_t may differ from F_s; never receives gradient.
        edge_index: (2, E) int64, column e = (j, i): an edge from neighbour j to centre i.
            For dynamic graphs pass the union of both models' graphs (Sec. 3.5).
        kernel, sigma, degree, c: SIM and its hyper-parameters (the paper's defaults);
            sigma is the RBF kernel's alone, degree and c the polynomial kernel's.
        num_nodes: N, defaults to feat_s.size(0). Nodes without incoming edges add 0.
        teacher_first: KL(LS^t || LS^s), the official code's direction, instead of Eq. (5).
    Returns: a scalar >= 0 (float32 for half-precision input), 0 when the structures agree.
    Raises ValueError for malformed input, and when feat_s or feat_t contain NaN or inf (a
    diverged model), where the loss would silently be NaN.
    """
    N = feat_s.size(0) if num_nodes is None else num_nodes
    if feat_s.dim() != 2 or feat_t.dim() != 2 or not feat_t.size(0) == feat_s.size(0) >= N >= 0:
        raise ValueError(f"feat_s and feat_t must be (N, F) with the same N >= num_nodes >= 0, "
                         f"got {tuple(feat_s.shape)} and {tuple(feat_t.shape)}, num_nodes {N}")
    if (edge_index.dim() != 2 or edge_index.size(0) != 2
            or edge_index.dtype not in (torch.int64, torch.int32)):
        raise ValueError(f"edge_index must be a (2, E) int64 (or int32) tensor, got "
                         f"{edge_index.dtype} {tuple(edge_index.shape)}")
    outside = edge_index[(edge_index < 0) | (edge_index >= N)]  # ids of no node
    if outside.numel() > 0:
        raise ValueError(f"edge_index refers to node {outside[0].item()}, outside the nodes "
                         f"[0, {N})")
    for z, who in ((feat_s, "student"), (feat_t, "teacher")):
        if not torch.isfinite(z).all():
            raise ValueError(f"the {who}'s features contain NaN or inf: has it diverged?")
    if kernel not in ("rbf", "poly", "linear", "l2"):
        raise ValueError(f"unknown kernel {kernel!r}; known kernels: rbf, poly, linear, l2 "
                         "(and l1_official, the official code's, in lsp_loss_fast)")
    if kernel == "rbf" and sigma != "auto" and (isinstance(sigma, str) or not sigma > 0):
        raise ValueError(f"sigma must be a number > 0 or 'auto', got {sigma!r}")
    src, dst = edge_index                                     # j, i: (E,) each

    def log_structure(z):                                     # log LS_ij per edge, (E,)
        z = z.float() if z.dtype in (torch.float16, torch.bfloat16) else z
        z_i, z_j = z[dst], z[src]                             # (E, F) each
        # 1. SIM(z_i, z_j) on every edge, Eq. (4) / (8)
        if kernel in ("poly", "linear"):
            dot = (z_i * z_j).sum(-1)                         # z_iᵀ z_j, (E,)
            sim = (dot + c) ** degree if kernel == "poly" else dot
        else:
            dist2 = (z_i - z_j).pow(2).sum(-1)                # ||z_i - z_j||², (E,)
            s = sigma
            if sigma == "auto":  # NOTE: not the paper's: σ = median ||z_i - z_j||, j ≠ i
                d2 = torch.where(src != dst, dist2.detach(), float("nan"))  # loops: 0 always
                s = d2.nanmedian().sqrt().nan_to_num(1.0).clamp_min(1e-12) if len(d2) else 1.0
            sim = dist2 if kernel == "l2" else torch.exp(-dist2 / (2 * s ** 2))
        # 2. Eq. (3): softmax of SIM over the incoming edges of each centre i, in logs; the
        #    group's max is subtracted so that exp() stays finite
        group_max = sim.detach().new_full((N,), -float("inf")).scatter_reduce(
            0, dst, sim.detach(), "amax")                     # (N,)
        shifted = sim - group_max[dst]                        # (E,) all <= 0
        group_sum = shifted.new_zeros(N).index_add(0, dst, shifted.exp())  # (N,)
        return shifted - group_sum.log()[dst]                 # (E,)

    log_ls_s = log_structure(feat_s)
    with torch.no_grad():
        log_ls_t = log_structure(feat_t)                      # the teacher is frozen
    # 3. Eq. (5): S_i = Σ_j p_ij log(p_ij / q_ij), p = LS^s and q = LS^t (swapped if
    #    teacher_first); clamped at 0 only against float rounding (~-1e-10)
    log_p, log_q = (log_ls_t, log_ls_s) if teacher_first else (log_ls_s, log_ls_t)
    kl_edge = log_p.exp() * (log_p - log_q)                   # (E,)
    S = kl_edge.new_zeros(N).index_add(0, dst, kl_edge).clamp_min(0)  # (N,)
    # 4. Eq. (6): the mean over all N nodes
    return S.mean() if N > 0 else S.sum()


# ----------------------------------------------------------------------------------------
# Similarity kernels SIM(z_i, z_j) on paired rows, for the fast path: (E, F), (E, F) -> (E,)

def sim_l2(z_i, z_j):
    """Eq. (4): SIM = ||z_i - z_j||².
    NOTE: written literally as in the paper, a *positive* squared distance, so after the
    softmax of Eq. (3) the *farthest* neighbour gets the largest weight. Kept as printed."""
    return (z_i - z_j).pow(2).sum(-1)


def sim_rbf(z_i, z_j, sigma=1.0):
    """Eq. (8), RBF kernel: exp(-||z_i - z_j||² / (2σ²)), σ = 1 in the paper."""
    return torch.exp(-(z_i - z_j).pow(2).sum(-1) / (2 * sigma ** 2))


def sim_poly(z_i, z_j, degree=2, c=0.0):
    """Eq. (8), polynomial kernel: (z_iᵀ z_j + c)^d, d = 2 and c = 0 in the paper."""
    return ((z_i * z_j).sum(-1) + c).pow(degree)


def sim_linear(z_i, z_j):
    """Eq. (8), linear kernel: z_iᵀ z_j."""
    return (z_i * z_j).sum(-1)


def sim_l1_official(z_i, z_j, scale=100.0):
    """NOTE: the official LSP code's similarity, exp(-||z_i - z_j||₁ / 100); not in the paper."""
    return torch.exp(-(z_i - z_j).abs().sum(-1) / scale)


KERNELS = {
    "l2": sim_l2,
    "rbf": sim_rbf,
    "poly": sim_poly,
    "linear": sim_linear,
    "l1_official": sim_l1_official,
}


# ----------------------------------------------------------------------------------------
# The fast path: Eq. (3) on blocks of edges, then Eq. (5)-(6)

def _check_graph(edge_index, num_nodes):
    """ValueError unless edge_index is a (2, E) integer tensor of ids in [0, num_nodes)."""
    if num_nodes < 0:
        raise ValueError(f"num_nodes must be >= 0, got {num_nodes}")
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"edge_index must have shape (2, E), got {tuple(edge_index.shape)}")
    if edge_index.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"edge_index must be an integer tensor, got {edge_index.dtype}")
    outside = edge_index[(edge_index < 0) | (edge_index >= num_nodes)]  # ids of no node
    if outside.numel() > 0:
        raise ValueError(f"edge_index refers to node {outside[0].item()}, outside the nodes "
                         f"[0, {num_nodes})")


def _check_pair(feat_s, feat_t, num_nodes):
    """ValueError unless feat_s (N, F_s) and feat_t (N, F_t) (or None) have the same
    N >= num_nodes rows. -> num_nodes, or N when it is None."""
    N = feat_s.size(0) if num_nodes is None else num_nodes
    if feat_s.dim() != 2 or feat_s.size(0) < N or (
            feat_t is not None and (feat_t.dim() != 2 or feat_t.size(0) != feat_s.size(0))):
        raise ValueError(f"feat_s and feat_t must be (N, F) with the same N >= num_nodes, got "
                         f"{tuple(feat_s.shape)} and "
                         f"{None if feat_t is None else tuple(feat_t.shape)}, num_nodes {N}")
    return N


class NonFiniteError(ValueError):
    """Features with NaN or inf: a model that has diverged (the scripts stop with one line)."""


def _check_finite(feat, who):
    """NonFiniteError if feat holds NaN or inf (who: "student" or "teacher")."""
    if not torch.isfinite(feat).all():
        raise NonFiniteError(f"the {who}'s features contain NaN or inf: has it diverged?")


def _check_sigma(sigma):
    """ValueError unless sigma is a number > 0 (nan is not)."""
    if isinstance(sigma, str) or not sigma > 0:
        raise ValueError(f"sigma must be a number > 0 or 'auto', got {sigma!r}")


def _check_per_edge(edge_index, num_nodes, **per_edge):
    """_check_graph, and ValueError unless every tensor of per_edge is (E,), one per edge."""
    _check_graph(edge_index, num_nodes)
    for name, t in per_edge.items():
        if t.shape != edge_index.shape[1:]:
            raise ValueError(f"{name} must have one value per edge, shape "
                             f"({edge_index.size(1)},), got {tuple(t.shape)}")


def per_edge(fn, feat, edge_index):
    """fn(z_i, z_j) -> (e,) for every edge (j, i), computed on blocks of edges: (E,).

    Blocks of about 2^20 numbers on the CPU (2^24 on a GPU), because gathering all (E, F)
    rows at once makes allocations that the OS pages in afresh at every call; with
    gradients, each block is recomputed in the backward pass (checkpoint) instead of keeping
    its (block, F) tensors: memory O(E) rather than O(E·F). README, Performance, has the times.
    """
    src, dst = edge_index                                     # j, i: (E,) each
    E = dst.numel()
    numbers = 2**20 if feat.device.type == "cpu" else 2**24
    per_block = max(1, numbers // max(feat.size(1), 1))      # edges per block

    def block(e):  # the edges e .. e + per_block - 1: (per_block,)
        z_i = feat.index_select(0, dst[e:e + per_block])      # (per_block, F); = feat[idx],
        z_j = feat.index_select(0, src[e:e + per_block])      # several times faster on CPU
        return fn(z_i, z_j)

    starts = range(0, max(E, 1), per_block)  # max: with E = 0, one empty block for cat
    if torch.is_grad_enabled() and feat.requires_grad:
        return torch.cat([checkpoint(block, e, use_reentrant=False,
                                     preserve_rng_state=False)  # fn draws no random numbers
                          for e in starts])
    return torch.cat([block(e) for e in starts])


def _squared_distance(z_i, z_j):
    return (z_i - z_j).pow(2).sum(-1)                         # ||z_i - z_j||², (e,)


def _checked(feat, edge_index, num_nodes):
    """Validate; -> (feat, in float32 if it was half precision, N)."""
    N = feat.size(0) if num_nodes is None else num_nodes
    if feat.dim() != 2 or feat.size(0) < N:
        raise ValueError(f"feat must have shape (N, F) with N >= num_nodes = {N}, got "
                         f"{tuple(feat.shape)}")
    _check_graph(edge_index, N)
    if feat.dtype in (torch.float16, torch.bfloat16):
        feat = feat.float()  # half precision overflows in the kernels: work in float32
    return feat, N


def _grouped_log_softmax(sim, dst, N):
    """Eq. (3): LS_ij = exp(SIM_ij) / Σ_{j':(j',i)∈E} exp(SIM_ij'), done as a log-softmax
    grouped by the centre i; subtracting each group's max keeps exp() finite (the max is
    detached: the softmax does not depend on it, so the gradient is exact). (E,) -> (E,)"""
    group_max = sim.new_zeros(N).scatter_reduce_(0, dst, sim.detach(), "amax", include_self=False)
    shifted = sim - group_max[dst]                            # (E,) all <= 0
    group_sum = sim.new_zeros(N).index_add_(0, dst, shifted.exp())  # (N,) each >= 1 if used
    return shifted - group_sum.log()[dst]                     # (E,)


def log_local_structure(feat, edge_index, kernel="rbf", num_nodes=None, **kernel_kwargs):
    """log LS_ij of Eq. (3) for every edge (j, i); see local_structure. Returns (E,).
    kernel_kwargs: sigma (a number, or "auto" for median_sigma(feat, edge_index)), degree,
    c, scale."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; known kernels: {', '.join(KERNELS)}")
    if kernel == "rbf":
        return rbf_log_local_structure(feat, edge_index, kernel_kwargs.get("sigma", 1.0),
                                       num_nodes)[0]
    feat, N = _checked(feat, edge_index, num_nodes)
    sim = per_edge(lambda z_i, z_j: KERNELS[kernel](z_i, z_j, **kernel_kwargs),
                   feat, edge_index)                          # SIM per edge, (E,)
    return _grouped_log_softmax(sim, edge_index[1], N)


def rbf_log_local_structure(feat, edge_index, sigma=1.0, num_nodes=None):
    """log LS_ij of Eq. (3) with the RBF kernel of Eq. (8), and the σ it used: with
    sigma="auto" the median over the edges j ≠ i of ||z_i - z_j|| (median_sigma), taken
    from the same squared distances, so that it costs one median more. -> ((E,), σ as a
    float)."""
    feat, N = _checked(feat, edge_index, num_nodes)
    if sigma != "auto":
        _check_sigma(sigma)
    dist2 = per_edge(_squared_distance, feat, edge_index)    # ||z_i - z_j||², (E,)
    if sigma == "auto":  # NOTE: not the paper's σ = 1; see lsp_loss
        sigma = _median_sigma(dist2, edge_index)
    sim = torch.exp(-dist2 / (2 * sigma ** 2))                # SIM, Eq. (8): (E,)
    return _grouped_log_softmax(sim, edge_index[1], N), sigma


def local_structure(feat, edge_index, kernel="rbf", num_nodes=None, **kernel_kwargs):
    """Eq. (3): the local structure LS_i of every centre node i.

    LS_ij = exp(SIM(z_i, z_j)) / Σ_{j':(j',i)∈E} exp(SIM(z_i, z_j'))

    Args:
        feat: (N, F) node features z.
        edge_index: (2, E) int64, edge_index[:, e] = (j, i): source j, centre i.
        kernel: a name in KERNELS; kernel_kwargs override its defaults (sigma, degree, c).
        num_nodes: N, defaults to feat.size(0).
    Returns:
        (E,) LS_ij per edge (float32 for half-precision input); the values of each
        centre's incoming edges sum to 1.
    """
    return log_local_structure(feat, edge_index, kernel, num_nodes, **kernel_kwargs).exp()


def local_structure_kl(log_ls_s, log_ls_t, edge_index, num_nodes, teacher_first=False):
    """Eq. (5)-(6) from the two log local structures (E,) of log_local_structure: the second
    half of lsp_loss_fast; log_ls_t receives no gradient."""
    _check_per_edge(edge_index, num_nodes, log_ls_s=log_ls_s, log_ls_t=log_ls_t)
    N, log_ls_t = num_nodes, log_ls_t.detach()
    if teacher_first:  # NOTE: the official code's direction, KL(LS^t || LS^s)
        kl_edge = log_ls_t.exp() * (log_ls_t - log_ls_s)      # (E,)
    else:              # Eq. (5): LS^s log(LS^s / LS^t)
        kl_edge = log_ls_s.exp() * (log_ls_s - log_ls_t)      # (E,)
    S = kl_edge.new_zeros(N).index_add_(0, edge_index[1], kl_edge)  # Eq. (5): S_i, (N,)
    S = S.clamp_min(0)  # a KL is >= 0; this only removes float rounding (~-1e-10) at S_i = 0
    return S.mean() if N > 0 else S.sum()                     # Eq. (6): mean over all N


def lsp_loss_fast(feat_s, feat_t, edge_index, kernel="rbf", num_nodes=None,
                  teacher_first=False, log_ls_t=None, **kernel_kwargs):
    """lsp_loss with the same numbers, as the scripts run it: any kernel of KERNELS, on
    blocks of edges recomputed in backward (log_local_structure). On a fixed graph the
    frozen teacher's log LS^t (E,) can be computed once and passed as log_ls_t; feat_t is
    then unused (may be None). sigma="auto" gives each model its own median_sigma.
    Raises ValueError where lsp_loss does: malformed input, or NaN or inf in the features."""
    N = _check_pair(feat_s, feat_t, num_nodes)
    _check_finite(feat_s, "student")
    if log_ls_t is None:
        _check_finite(feat_t, "teacher")
    log_ls_s = log_local_structure(feat_s, edge_index, kernel, N, **kernel_kwargs)  # (E,)
    if log_ls_t is None:
        with torch.no_grad():
            log_ls_t = log_local_structure(feat_t, edge_index, kernel, N, **kernel_kwargs)
    return local_structure_kl(log_ls_s, log_ls_t, edge_index, N, teacher_first)


# ----------------------------------------------------------------------------------------
# Is the LSP term alive? Diagnostics, and a structure metric that cannot saturate

def _median_sigma(dist2, edge_index):
    """σ = the median of ||z_i - z_j|| over the edges j ≠ i from the squared distances (E,)
    (the lower median for an even count, as torch.median; median of d² = (median d)²), at
    least 1e-12; 1 without such edges. Self-loops are left out: their distance is 0 whatever
    the features' scale, and where they are half the edges or more (a ring or a chain with a
    loop at every node) they would make σ ~0 and the loss 0."""
    dist2 = dist2.detach()[edge_index[0] != edge_index[1]]
    return max(dist2.median().sqrt().item(), 1e-12) if dist2.numel() else 1.0


@torch.no_grad()
def median_sigma(feat, edge_index):
    """The median heuristic for an RBF bandwidth: the median over the edges j ≠ i of
    ||z_i - z_j|| (the lower median for an even count, as torch.median), at least 1e-12; 1
    for a graph of self-loops alone. A float."""
    feat, _ = _checked(feat, edge_index, None)
    return _median_sigma(per_edge(_squared_distance, feat, edge_index), edge_index)


def kl_from_uniform(log_ls, edge_index, num_nodes):
    """How much structure a local-structure vector holds: for every centre i,
    KL(LS_i || uniform over i's d_i incoming edges) = log d_i + Σ_j LS_ij log LS_ij,
    0 for a uniform LS_i (every neighbour alike) and for d_i <= 1. Returns (N,)."""
    _check_per_edge(edge_index, num_nodes, log_ls=log_ls)
    dst = edge_index[1]
    log_ls = log_ls.detach().float()
    deg = log_ls.new_zeros(num_nodes).index_add_(
        0, dst, torch.ones_like(log_ls))                     # d_i, (N,)
    neg_entropy = torch.zeros_like(deg).index_add_(0, dst, log_ls.exp() * log_ls)  # (N,)
    kl = (neg_entropy + deg.clamp_min(1).log()).clamp_min(0)  # clamp: float rounding only
    return torch.where(deg > 1, kl, torch.zeros_like(kl))


@torch.no_grad()
def kernel_saturation(feat, edge_index, kernel="rbf", **kernel_kwargs):
    """The share of edges j ≠ i whose SIM(z_i, z_j) is exactly 0 or exactly 1 in float32: for
    the RBF kernel, the edges on which it has underflowed (0) or cannot tell the neighbour
    from the centre (1). Self-loops, whose RBF value is 1 by definition, are left out.
    A float in [0, 1]."""
    _check_graph(edge_index, feat.size(0))
    if kernel == "rbf" and kernel_kwargs.get("sigma") != "auto":
        _check_sigma(kernel_kwargs.get("sigma", 1.0))
    edge_index = edge_index[:, edge_index[0] != edge_index[1]]  # (2, E') without self-loops
    if edge_index.size(1) == 0:
        return 0.0
    if kernel_kwargs.get("sigma") == "auto":
        kernel_kwargs = {**kernel_kwargs, "sigma": median_sigma(feat, edge_index)}
    sim = per_edge(lambda z_i, z_j: KERNELS[kernel](z_i.float(), z_j.float(), **kernel_kwargs),
                   feat, edge_index)                          # (E,)
    return ((sim == 0) | (sim == 1)).float().mean().item()


def _ranks_in_groups(values, group):
    """Ranks 1..d of values within each group (ties get their average rank). (E,)"""
    order = torch.argsort(values, stable=True)
    order = order[torch.argsort(group[order], stable=True)]  # by group, then by value
    g, v = group[order], values[order]                        # sorted, (E,) each
    pos = torch.arange(len(order), device=values.device, dtype=torch.float64)
    groups = int(g.max()) + 1 if len(g) else 0
    first = pos.new_full((groups,), float("inf")).scatter_reduce(  # 1st position per group
        0, g, pos, "amin")[g]
    rank = pos - first + 1                                    # 1..d_i within each group
    new_run = torch.ones_like(g, dtype=torch.bool)            # a new run of ties starts
    new_run[1:] = (g[1:] != g[:-1]) | (v[1:] != v[:-1])
    run = new_run.cumsum(0) - 1                               # run id per sorted edge
    runs = int(run[-1]) + 1 if len(run) else 0
    avg = (torch.zeros(runs, dtype=torch.float64, device=values.device).index_add_(0, run, rank)
           / torch.zeros(runs, dtype=torch.float64, device=values.device).index_add_(
               0, run, torch.ones_like(rank)))               # mean rank per run of ties
    out = torch.empty_like(pos)
    out[order] = avg[run]
    return out


@torch.no_grad()
def neighbour_rank_correlation(feat_s, feat_t, edge_index, num_nodes=None, min_neighbours=3):
    """For every centre i, the Spearman rank correlation between the student's and the
    teacher's distances ||z_i - z_j|| to i's neighbours j: 1 when the student orders the
    neighbourhood as the teacher does. Unrelated features score ~0 on a graph that neither
    model chose (PPI's), but below 0 on the union of the two models' own kNN graphs
    (ModelNet40's), which holds each model's nearest neighbours of i: about -0.3 for
    independent random features at 64 points, k = 10 and 20, self-loops included.
    Unlike the KL of LS it needs no kernel and cannot saturate. Returns (N,) float64, NaN
    for centres with fewer than min_neighbours incoming edges, with all distances tied, or
    with a non-finite distance (diverged features); average with nanmean."""
    N = _check_pair(feat_s, feat_t, num_nodes)
    _check_graph(edge_index, N)
    dst = edge_index[1]
    dist2 = lambda z_i, z_j: (z_i - z_j).double().pow(2).sum(-1)  # noqa: E731, same ranks as d
    d_s, d_t = per_edge(dist2, feat_s, edge_index), per_edge(dist2, feat_t, edge_index)  # (E,)
    r_s, r_t = _ranks_in_groups(d_s, dst), _ranks_in_groups(d_t, dst)  # (E,) each

    def group_sum(x):                                         # Σ over i's edges, (N,)
        return torch.zeros(N, dtype=torch.float64, device=x.device).index_add_(0, dst, x)

    deg = group_sum(torch.ones_like(r_s))                     # (N,)
    c_s = r_s - (group_sum(r_s) / deg.clamp_min(1))[dst]      # centred ranks, (E,)
    c_t = r_t - (group_sum(r_t) / deg.clamp_min(1))[dst]
    var = group_sum(c_s * c_s) * group_sum(c_t * c_t)         # (N,)
    rho = group_sum(c_s * c_t) / var.sqrt()                   # Pearson r of the ranks
    finite = group_sum((~(d_s.isfinite() & d_t.isfinite())).double()) == 0  # no NaN/inf
    return torch.where((deg >= min_neighbours) & (var > 0) & finite, rho,
                       torch.full_like(rho, float("nan")))


def union_graph(edge_index_s, edge_index_t, num_nodes=None):
    """Sec. 3.5: E^u = E^s ∪ E^t, the union of the student's and the teacher's edges (j, i).

    Used only inside the loss: each model still aggregates over its own graph.
    Args:
        edge_index_s, edge_index_t: (2, E_s), (2, E_t) int64 over the same N nodes.
    Returns:
        (2, E_u) int64, every edge once, sorted by centre i, then by source j.
    """
    for ei in (edge_index_s, edge_index_t):
        if ei.dim() != 2 or ei.size(0) != 2:
            raise ValueError(f"edge_index must have shape (2, E), got {tuple(ei.shape)}")
    edges = torch.cat([edge_index_s, edge_index_t], dim=1)    # (2, E_s + E_t)
    if num_nodes is None:
        num_nodes = int(edges.max()) + 1 if edges.numel() > 0 else 0
    _check_graph(edges, num_nodes)
    edges = edges.long()  # int32 ids would overflow in i * N + j
    key = torch.unique(edges[1] * num_nodes + edges[0])       # (E_u,) sorted: by i, then j
    return torch.stack([key % num_nodes, key // num_nodes])   # (2, E_u)


# ----------------------------------------------------------------------------------------
# Baselines of Sec. 4.1

def kd_loss(logits_s, logits_t, T=4.0, multilabel=False):
    """Knowledge distillation (Hinton et al., 2015): KL(p_t || p_s) at temperature T, × T².

    multilabel=False: p = softmax(logits / T) over classes, averaged over samples.
    multilabel=True:  p = sigmoid(logits / T) per label, a Bernoulli KL averaged over
        samples and labels (for PPI, whose 121 labels have no softmax; the paper skips KD).
    Args: logits_s, logits_t: (N, C). Returns a scalar; no gradient reaches logits_t.
    """
    if logits_s.shape != logits_t.shape:
        raise ValueError(f"logits_s and logits_t must have the same shape (N, C), got "
                         f"{tuple(logits_s.shape)} and {tuple(logits_t.shape)}")
    logits_t = logits_t.detach()
    if multilabel:
        s, t = logits_s / T, logits_t / T
        p_t = torch.sigmoid(t)
        # KL(Bern(p_t) || Bern(p_s)) = BCE(s, p_t) - BCE(t, p_t): exactly 0 when s == t
        kl = (F.binary_cross_entropy_with_logits(s, p_t, reduction="none")
              - F.binary_cross_entropy_with_logits(t, p_t, reduction="none"))
        return kl.mean() * T * T
    log_p_s = F.log_softmax(logits_s / T, dim=-1)
    log_p_t = F.log_softmax(logits_t / T, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * T * T


def fitnet_loss(feat_s, feat_t, regressor):
    """FitNets hint loss (Romero et al., 2015): MSE(regressor(z^s), z^t).

    Args: feat_s (N, F_s); feat_t (N, F_t); regressor: a learned map F_s -> F_t
    (e.g. torch.nn.Linear(F_s, F_t)), trained together with the student.
    """
    pred = regressor(feat_s)                                   # (N, F_t)
    if pred.shape != feat_t.shape:
        raise ValueError(f"regressor(feat_s) must have feat_t's shape {tuple(feat_t.shape)}, "
                         f"got {tuple(pred.shape)}")
    return F.mse_loss(pred, feat_t.detach())


def at_loss(feat_s, feat_t, batch=None):
    """Attention transfer (Zagoruyko & Komodakis, 2017) for graphs: a_i = Σ_c |F_ic| per node,
    L2-normalised within each graph or point cloud, then MSE between student and teacher.

    Args: feat_s (N, F_s), feat_t (N, F_t); batch (N,) int64 graph/cloud id of each node,
    None for a single graph. Returns a scalar; no gradient reaches feat_t.
    """
    if feat_s.size(0) != feat_t.size(0):
        raise ValueError(f"feat_s and feat_t must have the same number of nodes, got "
                         f"{feat_s.size(0)} and {feat_t.size(0)}")
    if batch is None:
        batch = torch.zeros(feat_s.size(0), dtype=torch.long, device=feat_s.device)
    if batch.shape != feat_s.shape[:1]:
        raise ValueError(f"batch must be (N,) = ({feat_s.size(0)},), one graph id per node, "
                         f"got {tuple(batch.shape)}")
    G = int(batch.max()) + 1 if batch.numel() > 0 else 0

    def attention(feat):
        a = feat.abs().sum(-1)                                 # (N,) Σ_c |F_c|
        norm = a.new_zeros(G).index_add_(0, batch, a * a).sqrt()  # (G,) per-graph L2 norm
        return a / norm.clamp_min(1e-12)[batch]                # (N,)

    return F.mse_loss(attention(feat_s), attention(feat_t.detach()))


# ----------------------------------------------------------------------------------------
# Beyond the LSP paper: Holistic KD (Zhou et al., ICCV 2021) and its authors' multi-label KD

class HolisticMaps(torch.nn.Module):
    """The learned maps of HKD's holistic representations H = Σ_{l=0..L} Â^l F Θ_l: for each
    hop l = 0..L a bias-free Linear Θ^s_l (F_s -> d) for the student and Θ^t_l (F_t -> d) for
    the teacher, into a common width d. All of them are trained with the student, the
    teacher's Θ^t too (the teacher's features stay frozen), as FitNet's regressor is."""

    def __init__(self, dim_s, dim_t, dim=128, hops=1):
        super().__init__()
        # NOTE: the slides write Θ_l as matrices; here bias-free Linear maps, and the common
        # width d = 128 (the slides give none) as the HKD authors' code and CRD use. Their
        # Algorithm 1 updates only the student's W^s; here the student's optimiser also
        # trains every Θ (the teacher's too), as the HKD authors' code trains its embeddings.
        self.theta_s = torch.nn.ModuleList(torch.nn.Linear(dim_s, dim, bias=False)
                                           for _ in range(hops + 1))
        self.theta_t = torch.nn.ModuleList(torch.nn.Linear(dim_t, dim, bias=False)
                                           for _ in range(hops + 1))


def hkd_loss(feat_s, feat_t, maps, k=8, tau=0.07, centre=True):
    """Holistic knowledge distillation, L_HOL of Zhou et al., "Distilling Holistic Knowledge
    with Graph Neural Networks", ICCV 2021 (its slides' Algorithm 1, steps 4-7), over the N
    instances of one mini-batch:

    F      <- F - mean_i F_i          centred over the batch (not in the slides; centre=True)
    A      = φ(F)                     attributed context graph: each instance's k nearest
                                      instances in the model's own feature space (step 4)
    H      = Σ_{l=0..L} (D^{-1/2} A D^{-1/2})^l F Θ_l      per model, Eq. (5)-(6) (step 5)
    f(a, b) = aᵀb / (‖a‖ ‖b‖ τ)       cosine similarity over a temperature τ
    L_HOL  = -(1/N) Σ_i [ log e^{f(h_i^t, h_i^s)} / Σ_j e^{f(h_i^t, h_j^s)}
                        + log e^{f(h_i^s, h_i^t)} / Σ_j e^{f(h_i^s, h_j^t)} ]   (steps 6-7)
    the symmetric InfoNCE: each positive pair (h_i^t, h_i^s) against the batch's other
    instances j ≠ i, teacher -> student and student -> teacher.

    Args:
        feat_s: (N, F_s) the student's features of N instances; gradients flow into them.
        feat_t: (N, F_t) the teacher's; never receive gradient (its Θ^t_l do).
        maps: a HolisticMaps(F_s, F_t, d, L): Θ^s_l = maps.theta_s[l], Θ^t_l = maps.theta_t[l].
        k: neighbours of each instance in φ (the HKD authors' code: 8).
        tau: the temperature τ of f (the HKD authors' code: 0.07).
        centre: subtract the batch's mean feature first (not the slides'; see step 0).
    Returns: a scalar >= 0 (float32 for half-precision input); 2 log N when every pair is
    alike (f constant), lower as each h_i^s comes closer to its own h_i^t than to the others.
    Raises ValueError for N < k + 1 instances (φ needs k others), for malformed input, and
    for NaN or inf in the features (a diverged model).
    """
    N = feat_s.size(0)
    if feat_s.dim() != 2 or feat_t.dim() != 2 or feat_t.size(0) != N:
        raise ValueError(f"feat_s and feat_t must be (N, F) with the same N, got "
                         f"{tuple(feat_s.shape)} and {tuple(feat_t.shape)}")
    if k < 1 or N < k + 1:
        raise ValueError(f"HKD's kNN graph needs k >= 1 and at least k + 1 = {k + 1} "
                         f"instances in a batch, got k = {k} and {N} instances")
    for z, who in ((feat_s, "student"), (feat_t, "teacher")):
        if not torch.isfinite(z).all():
            raise ValueError(f"the {who}'s features contain NaN or inf: has it diverged?")

    def holistic(feat, thetas):                               # h / ‖h‖ of one model, (N, d)
        feat = feat.float() if feat.dtype in (torch.float16, torch.bfloat16) else feat
        # 0. NOTE: not in the slides: F is centred over the batch's instances (φ's distances
        #    do not change). Pooled features after a ReLU-like activation share one direction
        #    (94% of their squared norm on our synthetic ModelNet40); then f(h_i, h_j) ≈ 1/τ
        #    for every pair, L_HOL sits at 2 log N, and SGD at lr 0.1 does not leave it.
        if centre:
            feat = feat - feat.mean(0, keepdim=True)          # (N, F)
        # 1. φ: the attributed context graph, from the features as they are now (topk is not
        #    differentiable: A carries no gradient), by Euclidean distance, as the slides'
        #    A = φ(F) (the HKD authors' code builds it from the softmax of the logits instead)
        with torch.no_grad():
            dist = torch.cdist(feat, feat)                    # ‖F_i - F_j‖, (N, N)
            dist.fill_diagonal_(float("inf"))                 # an instance is not its own
            nbr = dist.topk(k, dim=1, largest=False).indices  # (N, k)
            A = torch.zeros_like(dist).scatter_(1, nbr, 1.0)  # A_ij = 1: j among i's k, (N, N)
            # NOTE: the slides do not say whether φ's graph is directed; here symmetric
            # (A_ij = 1 when either is among the other's k nearest) and without self-loops,
            # because D^{-1/2} A D^{-1/2} is GCN's normalisation of an undirected graph, and
            # the l = 0 term F Θ_0 already holds each instance's own features.
            A = torch.maximum(A, A.t())                       # (N, N)
            d = A.sum(1).rsqrt()                              # D^{-1/2}: every degree >= k
            A_hat = d[:, None] * A * d[None, :]               # D^{-1/2} A D^{-1/2}, (N, N)
        # 2. Eq. (5)-(6): H = Σ_l Â^l F Θ_l = F Θ_0 + Â(F Θ_1 + Â(... + Â F Θ_L)) (Horner:
        #    L products with Â, each on width d)
        H = thetas[-1](feat)                                  # F Θ_L, (N, d)
        for theta in reversed(thetas[:-1]):
            H = theta(feat) + A_hat @ H                       # (N, d)
        return torch.nn.functional.normalize(H, dim=1)        # (N, d), unit rows: f is a cosine

    h_s = holistic(feat_s, maps.theta_s)                      # (N, d)
    h_t = holistic(feat_t.detach(), maps.theta_t)             # (N, d); the teacher is frozen
    # 3. f(h_i^t, h_j^s) for every pair: row i holds teacher instance i against every student
    #    instance j; column i, student instance i against every teacher instance
    # NOTE: the slides write the negatives as f(h_i^t, f_j^s), a feature f_j^s of another
    # space and width; here h_j^s (and h_j^t), as in the mutual-information bound just above
    # L_HOL in the slides, so that positives and negatives are compared alike.
    logits = h_t @ h_s.t() / tau                              # (N, N)
    target = torch.arange(N, device=logits.device)           # the positive: the same instance
    # NOTE: the slides' L_HOL is a sum over i of log-probabilities, to be maximised; here its
    # negative, averaged over the N instances, so that its weight does not depend on the
    # batch size. The negatives are the batch's other instances only (the HKD authors' code
    # also draws 16384 from a memory bank, and adds the same loss on F Θ_0 alone).
    return (torch.nn.functional.cross_entropy(logits, target)       # teacher -> student
            + torch.nn.functional.cross_entropy(logits.t(), target))  # student -> teacher


def label_correlation_loss(logits_s, logits_t):
    """Multi-label KD by label correlation ("Correlation Matrix KL divergence/MSE", the last
    section of the HKD authors' slides): match the teacher's and the student's conditional
    label matrices P(L_j | L_i), the probability that label j occurs where label i does,
    estimated from the per-label sigmoid outputs of the N nodes of a batch:

    p_nc         = sigmoid(z_nc)                                 (N, C)
    P(L_j | L_i) = Σ_n p_ni p_nj / Σ_n p_ni,   j ≠ i             (C, C), asymmetric
    R_i          = (1 / (C - 1)) Σ_{j≠i} KL(Bern(P^t(L_j|L_i)) || Bern(P^s(L_j|L_i)))
    L_corr       = (1 / C) Σ_i R_i                               row i matched as a whole

    Args: logits_s, logits_t: (N, C) per-label logits of the same N nodes, C >= 2.
    Returns: a scalar >= 0 (float32 for half-precision input), 0 when the matrices agree;
    no gradient reaches logits_t. Raises ValueError for malformed input, and for NaN or inf
    in the logits (a diverged model).
    """
    if logits_s.shape != logits_t.shape or logits_s.dim() != 2 or logits_s.size(1) < 2:
        raise ValueError(f"logits_s and logits_t must have the same shape (N, C), C >= 2, "
                         f"got {tuple(logits_s.shape)} and {tuple(logits_t.shape)}")
    for z, who in ((logits_s, "student"), (logits_t, "teacher")):
        if not torch.isfinite(z).all():
            raise ValueError(f"the {who}'s logits contain NaN or inf: has it diverged?")
    C = logits_s.size(1)

    def conditional(z):        # P(L_j | L_i) and 1 - P(L_j | L_i) as [i, j], (C, C) each
        z = z.float() if z.dtype in (torch.float16, torch.bfloat16) else z
        # w_ni = p_ni / Σ_n p_ni, as a softmax over the nodes of log p_ni: finite whatever
        # the logits, even for a label that no node holds
        w = torch.softmax(torch.nn.functional.logsigmoid(z), dim=0)    # (N, C)
        # Σ_n w_ni p_nj, and Σ_n w_ni (1 - p_nj) (not 1 - P: no cancellation near P = 1)
        return w.t() @ torch.sigmoid(z), w.t() @ torch.sigmoid(-z)     # (C, C) each

    p_s, q_s = conditional(logits_s)
    with torch.no_grad():
        p_t, q_t = conditional(logits_t)                      # the teacher is frozen
    # NOTE: the slides name a KL divergence or an MSE between the matrices, not how; a row
    # P(L_· | L_i) is not a distribution (it sums to the expected number of other labels),
    # so here each entry is the probability of a binary event, compared by a Bernoulli KL
    # (teacher first, as kd_loss(multilabel=True)), then averaged over the row's C - 1
    # entries and over the rows. The diagonal, P(L_i | L_i), a label against itself, is
    # left out.
    tiny = torch.finfo(p_s.dtype).tiny                        # log 0 -> a finite large number
    kl = (torch.xlogy(p_t, p_t) - torch.xlogy(p_t, p_s.clamp_min(tiny))
          + torch.xlogy(q_t, q_t) - torch.xlogy(q_t, q_s.clamp_min(tiny)))  # (C, C)
    off = ~torch.eye(C, dtype=torch.bool, device=kl.device)   # j ≠ i
    R = kl[off].view(C, C - 1).mean(1)                        # R_i, (C,)
    return R.clamp_min(0).mean()  # clamp: a KL is >= 0; only float rounding goes below
