"""The local structure as a measure (not in the paper): how much structure the teacher offers,
"Is my LSP term alive?", and how close the student's comes to it, Fig. 1 and Fig. 4 in
numbers, before training and after the epochs of common.STRUCTURE_EPOCHS."""
import numpy as np
import torch

import lsp_kd
from common import log

# RBF values lie in [0, 1], so within a neighbourhood LS_ij differ by a factor e at most: a
# strong structure holds ~0.1 nats (KL from uniform, degree 14). Below 1e-4 nats the LS_i^t
# are within ~1.5% of uniform: L_LSP is ~1e-4 of what the kernel allows, the term inert.
UNIFORM_KL = 1e-4


@torch.no_grad()
def neighbour_rank_correlation(feat_s, feat_t, edge_index, min_neighbours=3):
    """Per centre i, the Spearman correlation between the student's and the teacher's
    distances ||z_i - z_j|| to i's neighbours j (1: the same order); it needs no kernel and
    cannot saturate. Unrelated features score ~0 on a fixed graph, below 0 on the union of
    the models' own kNN graphs (each holds its model's nearest; -0.3 at 64 points, k = 10 and
    20). (N,) float64, NaN for centres with < min_neighbours edges or all distances tied."""
    N, dst = lsp_kd.check("feat_s", feat_s, 2).size(0), edge_index[1]
    lsp_kd.check("feat_t", feat_t, 2)

    def ranks(z):  # ranks 1..d_i of ||z_i - z_j||² among i's edges, ties averaged, (E,)
        # log_local_structure with Eq. (4)'s l2 kernel is ||z_i - z_j||² less a constant
        # per centre: the same order; in float64, ties stay ties
        v = lsp_kd.log_local_structure(z.double(), edge_index, "l2")
        order = torch.argsort(v, stable=True)
        order = order[torch.argsort(dst[order], stable=True)]  # by centre, then by value
        _, run, n_run = torch.unique_consecutive(torch.stack([dst[order].double(), v[order]]),
                                                 dim=1, return_inverse=True, return_counts=True)
        n_i = torch.zeros(N, dtype=torch.long, device=v.device).index_add_(
            0, dst, torch.ones_like(dst))                     # (N,) edges per centre
        first = (n_i.cumsum(0) - n_i)[dst[order]]             # position of i's first edge
        out = torch.empty_like(v)
        n_run = n_run.double()                                # edges per run of ties
        out[order] = (n_run.cumsum(0) - (n_run - 1) / 2)[run] - first  # their mean rank
        return out

    def per_centre(x):                                        # Σ over i's edges, (N,)
        return torch.zeros(N, dtype=torch.float64, device=x.device).index_add_(0, dst, x)

    r_s, r_t = ranks(feat_s), ranks(feat_t)
    deg = per_centre(torch.ones_like(r_s))
    c_s = r_s - (per_centre(r_s) / deg.clamp_min(1))[dst]     # centred ranks, (E,)
    c_t = r_t - (per_centre(r_t) / deg.clamp_min(1))[dst]
    var = per_centre(c_s * c_s) * per_centre(c_t * c_t)       # (N,)
    rho = per_centre(c_s * c_t) / var.sqrt()
    return torch.where((deg >= min_neighbours) & (var > 0), rho, float("nan"))


@torch.no_grad()
def structure_metrics(triples):
    """How close the student's structure is to the teacher's over [(feat_s, feat_t,
    edge_index)]: ls_kl, L_LSP of Eq. (5)-(6) with RBF σ = 1 (Fig. 1's quantity); ls_kl_auto,
    the same with each model's median σ; rank_corr, neighbour_rank_correlation's mean."""
    kl = [lsp_kd.lsp_loss(*t).item() for t in triples]
    kl_auto = [lsp_kd.lsp_loss(*t, sigma="auto").item() for t in triples]
    rho = torch.cat([neighbour_rank_correlation(*t).cpu() for t in triples])
    return {"ls_kl": float(np.mean(kl)), "ls_kl_auto": float(np.mean(kl_auto)),
            "rank_corr": float(rho.nanmean())}


@torch.no_grad()
def teacher_structure(args, samples):
    """The mean over centres of KL(LS_i^t || uniform) over [(feat_t, edge_index)] and the
    edges j ≠ i: lsp_loss, teacher first, against a student of equal features (uniform LS_i).
    Warns below UNIFORM_KL; the run goes on, a faithful reproduction must stay possible."""
    total, nodes = 0.0, 0
    for feat, ei in samples:
        ei = ei[:, ei[0] != ei[1]]                            # (2, E')
        feat = feat.double()  # a near-uniform structure's KL is below float32's resolution
        kl = lsp_kd.lsp_loss(feat[:, :1] * 0, feat, ei, args.kernel, args.sigma,
                             teacher_first=True)              # KL(LS^t || uniform)
        total, nodes = total + kl.item() * feat.size(0), nodes + feat.size(0)
    kl = total / nodes
    log(f"the teacher's local structure ({args.kernel}, σ = {args.sigma}): KL from uniform "
        f"{kl:.3e} nats per node")
    if kl < UNIFORM_KL:
        log(f"the teacher's local structures are practically uniform (KL from uniform "
            f"{kl:.1e} < {UNIFORM_KL:g}): L_LSP and its gradient vanish and the student "
            "trains as Student_Full; try --sigma auto", warning=True)
    return kl
