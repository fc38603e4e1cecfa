"""Distillation losses: Local Structure Preserving (LSP) and the baselines it is compared with.

Implements Sec. 3.3-3.5 of "Distilling Knowledge from Graph Convolutional Networks"
(Yang, Qiu, Song, Tao, Wang; CVPR 2020, https://arxiv.org/abs/2003.10477):
Eq. (3) local structure, Eq. (4) and (8) similarity kernels, Eq. (5)-(6) the LSP loss,
Sec. 3.5 the union graph for dynamic graphs, and the Sec. 4.1 baselines (KD, FitNet, AT).

Notation (paper symbol -> name here):
    z_i, z_j      feat[i], feat[j]              node features of one layer, (N, F)
    (j, i) ∈ E    edge_index[:, e] = (j, i)     row 0 = source j, row 1 = centre (target) i
    LS_ij         local_structure(...)[e]       Eq. (3), one value per edge, (E,)
    S_i           per-node KL                   Eq. (5), (N,)
    L_LSP         lsp_loss(...)                 Eq. (6), scalar
    E^u           union_graph(...)              Sec. 3.5
Suffixes _s and _t mean student and teacher. Dimensions: N nodes, E edges, F features.

Every function needs only torch (the imports below), so any one of them can be copied
on its own.
"""
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


# ----------------------------------------------------------------------------------------
# Similarity kernels SIM(z_i, z_j) on paired rows: (E, F), (E, F) -> (E,)

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
    """The official LSP code's similarity: exp(-||z_i - z_j||₁ / 100). Not in the paper."""
    return torch.exp(-(z_i - z_j).abs().sum(-1) / scale)


KERNELS = {
    "l2": sim_l2,
    "rbf": sim_rbf,
    "poly": sim_poly,
    "linear": sim_linear,
    "l1_official": sim_l1_official,
}


# ----------------------------------------------------------------------------------------
# Local structure, Eq. (3)

def _check_graph(edge_index, num_nodes):
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"edge_index must have shape (2, E), got {tuple(edge_index.shape)}")
    if edge_index.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"edge_index must be an integer tensor, got {edge_index.dtype}")
    if edge_index.numel() > 0 and (edge_index.min() < 0 or edge_index.max() >= num_nodes):
        raise ValueError(f"edge_index refers to nodes outside [0, {num_nodes})")


def log_local_structure(feat, edge_index, kernel="rbf", num_nodes=None, **kernel_kwargs):
    """log LS_ij of Eq. (3) for every edge (j, i); see local_structure. Returns (E,)."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; known kernels: {', '.join(KERNELS)}")
    if feat.dim() != 2:
        raise ValueError(f"feat must have shape (N, F), got {tuple(feat.shape)}")
    N = feat.size(0) if num_nodes is None else num_nodes
    _check_graph(edge_index, N)
    if feat.dtype in (torch.float16, torch.bfloat16):
        feat = feat.float()  # half precision overflows in the kernels: work in float32
    src, dst = edge_index                                     # j, i: (E,) each
    # SIM(z_i, z_j) on blocks of edges, concatenated: (E,). NOTE: two measured economies
    # (numbers in the README, Performance): (1) blocks of about 2^20 numbers on the CPU
    # (2^24 on a GPU), as gathering all (E, F) rows at once makes allocations that the OS
    # pages in afresh at every call; (2) with gradients, each block is recomputed in the
    # backward pass (checkpoint) instead of keeping its (block, F) tensors: memory O(E) for
    # the loss rather than O(E·F). ModelNet40, CPU: the LSP terms 4-6 s -> 1.2 s.
    E = dst.numel()
    numbers = 2**20 if feat.device.type == "cpu" else 2**24
    per_block = max(1, numbers // max(feat.size(1), 1))      # edges per block

    def sim_block(e):  # SIM for the edges e .. e + per_block - 1: (per_block,)
        # index_select is feat[idx]; on the CPU its forward is several times faster
        z_i = feat.index_select(0, dst[e:e + per_block])      # (per_block, F)
        z_j = feat.index_select(0, src[e:e + per_block])      # (per_block, F)
        return KERNELS[kernel](z_i, z_j, **kernel_kwargs)

    starts = range(0, max(E, 1), per_block)  # max: with E = 0, one empty block for cat
    if torch.is_grad_enabled() and feat.requires_grad:
        sim = torch.cat([checkpoint(sim_block, e, use_reentrant=False,
                                    preserve_rng_state=False)  # the kernels draw no random numbers
                         for e in starts])
    else:
        sim = torch.cat([sim_block(e) for e in starts])
    # Eq. (3): LS_ij = exp(SIM_ij) / Σ_{j':(j',i)∈E} exp(SIM_ij'), done as a log-softmax
    # grouped by the centre i; subtracting each group's max keeps exp() finite.
    # (the max is detached: the softmax does not depend on it, so the gradient is exact)
    group_max = sim.new_zeros(N).scatter_reduce_(0, dst, sim.detach(), "amax", include_self=False)
    shifted = sim - group_max[dst]                            # (E,) all <= 0
    group_sum = sim.new_zeros(N).index_add_(0, dst, shifted.exp())  # (N,) each >= 1 if used
    return shifted - group_sum.log()[dst]                     # (E,)


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


# ----------------------------------------------------------------------------------------
# The LSP loss, Eq. (5)-(6)

def lsp_loss(feat_s, feat_t, edge_index, kernel="rbf", num_nodes=None, teacher_first=False,
             **kernel_kwargs):
    """Local Structure Preserving loss, Eq. (5)-(6) of Yang et al., CVPR 2020.

    LS_ij  = exp(SIM(z_i, z_j)) / Σ_{j':(j',i)∈E} exp(SIM(z_i, z_j'))      Eq. (3)
    S_i    = KL(LS_i^s || LS_i^t) = Σ_j LS_ij^s log(LS_ij^s / LS_ij^t)     Eq. (5)
    L_LSP  = (1/N) Σ_i S_i                                                 Eq. (6)

    Args:
        feat_s: (N, F_s) student features; gradients flow into them.
        feat_t: (N, F_t) teacher features; F_t may differ from F_s; never receives gradient.
        edge_index: (2, E) int64 edges (j, i) over which both local structures are taken
            (for dynamic graphs pass union_graph(...) of the two models' graphs, Sec. 3.5).
        kernel: name in KERNELS ("rbf" in the paper); kernel_kwargs set sigma/degree/c.
        num_nodes: N, defaults to feat_s.size(0). Nodes without incoming edges add 0.
        teacher_first: use KL(LS^t || LS^s) as the official code does, not Eq. (5).
    Returns:
        scalar tensor (float32 for half-precision input), >= 0, = 0 when the two local
        structures are equal.
    """
    if feat_s.dim() != 2 or feat_t.dim() != 2:
        raise ValueError(f"feat_s and feat_t must be (N, F), got {tuple(feat_s.shape)} "
                         f"and {tuple(feat_t.shape)}")
    if feat_s.size(0) != feat_t.size(0):
        raise ValueError(f"feat_s and feat_t must have the same number of nodes, got "
                         f"{feat_s.size(0)} and {feat_t.size(0)}")
    N = feat_s.size(0) if num_nodes is None else num_nodes
    log_ls_s = log_local_structure(feat_s, edge_index, kernel, N, **kernel_kwargs)  # (E,)
    with torch.no_grad():
        log_ls_t = log_local_structure(feat_t, edge_index, kernel, N, **kernel_kwargs)  # (E,)
    return local_structure_kl(log_ls_s, log_ls_t, edge_index, N, teacher_first)


def lsp_loss_fast(feat_s, feat_t, edge_index, kernel="rbf", num_nodes=None,
                  teacher_first=False, log_ls_t=None, **kernel_kwargs):
    """lsp_loss as the scripts run it (same numbers): the kernel on blocks of edges,
    recomputed in backward (log_local_structure); log_ls_t, the frozen teacher's log LS^t
    (E,), may be passed precomputed (fixed graphs: once per graph), and feat_t is then unused."""
    N = feat_s.size(0) if num_nodes is None else num_nodes
    log_ls_s = log_local_structure(feat_s, edge_index, kernel, N, **kernel_kwargs)  # (E,)
    if log_ls_t is None:
        with torch.no_grad():
            log_ls_t = log_local_structure(feat_t, edge_index, kernel, N, **kernel_kwargs)
    return local_structure_kl(log_ls_s, log_ls_t, edge_index, N, teacher_first)


def local_structure_kl(log_ls_s, log_ls_t, edge_index, num_nodes, teacher_first=False):
    """Eq. (5)-(6) from the two log local structures (E,) of log_local_structure: the second
    half of lsp_loss. On a fixed graph (PPI) the frozen teacher's log LS^t can be computed
    once and reused at every step; log_ls_t receives no gradient."""
    N, log_ls_t = num_nodes, log_ls_t.detach()
    if teacher_first:  # NOTE: the official code's direction, KL(LS^t || LS^s)
        kl_edge = log_ls_t.exp() * (log_ls_t - log_ls_s)      # (E,)
    else:              # Eq. (5): LS^s log(LS^s / LS^t)
        kl_edge = log_ls_s.exp() * (log_ls_s - log_ls_t)      # (E,)
    S = kl_edge.new_zeros(N).index_add_(0, edge_index[1], kl_edge)  # Eq. (5): S_i, (N,)
    S = S.clamp_min(0)  # a KL is >= 0; this only removes float rounding (~-1e-10) at S_i = 0
    return S.mean() if N > 0 else S.sum()                     # Eq. (6): mean over all N


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
    return F.mse_loss(regressor(feat_s), feat_t.detach())


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
    G = int(batch.max()) + 1 if batch.numel() > 0 else 0

    def attention(feat):
        a = feat.abs().sum(-1)                                 # (N,) Σ_c |F_c|
        norm = a.new_zeros(G).index_add_(0, batch, a * a).sqrt()  # (G,) per-graph L2 norm
        return a / norm.clamp_min(1e-12)[batch]                # (N,)

    return F.mse_loss(attention(feat_s), attention(feat_t.detach()))
