"""Graph layers and the two networks of the paper, written on edge_index tensors.

"Distilling Knowledge from Graph Convolutional Networks" (Yang et al., CVPR 2020):
- GAT, Eq. (2), for PPI (Sec. 4.1): layers built like DGL 0.4's GATConv, which the official
  code uses, so that the paper's teacher has exactly its 3,640,748 parameters.
- DGCNN (Wang et al., 2019) for ModelNet40 (Sec. 3.5, 4.2): EdgeConv layers over a kNN graph
  rebuilt in feature space at every layer (a dynamic graph); the student's variants of Table 6.

Graphs are edge_index tensors of shape (2, E): edge_index[:, e] = (j, i) is an edge from the
source j to the target (centre) i, as in PyG; messages flow j -> i.
Dimensions: N nodes, E edges, H heads, F features, B batch, P points per cloud, k neighbours."""
import torch
import torch.nn as nn
import torch.nn.functional as F

NEGATIVE_SLOPE = 0.2            # of every LeakyReLU: GAT's (Eq. 2) and DGCNN's
PPI_FEATURES, PPI_LABELS = 50, 121   # the GATs' input and output widths (Sec. 4.1)


# Scatter operations: reductions over the edges that share a target node ------------------
def scatter_max(src, index, num_nodes):
    """Max of src (E,) or (E, F) over the entries that share an index; (N,) or (N, F), 0 for
    empty groups."""
    index = index.view((-1,) + (1,) * (src.dim() - 1)).expand_as(src)  # (E, ...) a view
    return src.new_zeros((num_nodes,) + tuple(src.shape[1:])).scatter_reduce_(
        0, index, src, "amax", include_self=False)


def scatter_softmax(src, index, num_nodes=None):
    """Softmax of src (E,) or (E, H) over the entries that share an index (E,) (the target
    node): src's shape; empty groups are fine."""
    N = num_nodes if num_nodes is not None else (int(index.max()) + 1 if index.numel() else 0)
    shape = (N,) + tuple(src.shape[1:])                           # (N,) or (N, H)
    # subtract each group's max so exp() cannot overflow; the softmax does not depend on
    # it, so it is detached and the gradient stays exact
    group_max = scatter_max(src.detach(), index, N)               # (N, ...)
    exp = (src - group_max[index]).exp()                          # (E, ...)
    group_sum = src.new_zeros(shape).index_add_(0, index, exp)    # (N, ...)
    return exp / group_sum[index]                                 # (E, ...)


# GAT, Eq. (2) ----------------------------------------------------------------------------
class GATConv(nn.Module):
    """Graph attention layer, Eq. (2), as DGL 0.4's GATConv (no bias, optional residual).

    e_ij = LeakyReLU(a_srcᵀ W x_j + a_dstᵀ W x_i)      (MLP_1 of Eq. (2) on W x_i || W x_j)
    α_ij = softmax of e_ij over the incoming edges (j, i) of i
    x_i' = Σ_j α_ij W x_j  (+ res_fc(x_i))           one such sum per head"""
    def __init__(self, in_dim, out_dim, heads, residual=False, concat=True):
        super().__init__()
        self.heads, self.out_dim, self.concat = heads, out_dim, concat
        # NOTE: unsaid in the paper: DGL 0.4's GATConv, as the official code (no bias, no dropout)
        self.fc = nn.Linear(in_dim, heads * out_dim, bias=False)
        self.attn_src = nn.Parameter(torch.empty(1, heads, out_dim))
        self.attn_dst = nn.Parameter(torch.empty(1, heads, out_dim))
        self.leaky_relu = nn.LeakyReLU(NEGATIVE_SLOPE)
        # NOTE: the paper's Eq. (2) has no residual; here DGL 0.4's, as the official code (its
        # weights are part of the paper's 3,640,748): a bias-free Linear, else the identity
        self.res_fc = None if not residual else (
            nn.Linear(in_dim, heads * out_dim, bias=False) if in_dim != out_dim else nn.Identity())
        gain = nn.init.calculate_gain("relu")
        for weight in (self.fc.weight, self.attn_src, self.attn_dst):
            nn.init.xavier_normal_(weight, gain=gain)
        if isinstance(self.res_fc, nn.Linear):
            nn.init.xavier_normal_(self.res_fc.weight, gain=gain)

    def forward(self, x, edge_index):
        N, H, Fo = x.size(0), self.heads, self.out_dim
        src, dst = edge_index                                      # j, i: (E,) each
        z = self.fc(x).view(N, H, Fo)                              # W x: (N, H, F)
        score_src = (z * self.attn_src).sum(-1)                    # a_srcᵀ W x_j: (N, H)
        score_dst = (z * self.attn_dst).sum(-1)                    # a_dstᵀ W x_i: (N, H)
        e = self.leaky_relu(score_src[src] + score_dst[dst])       # Eq. (2) e_ij: (E, H)
        alpha = scatter_softmax(e, dst, N)                         # α_ij: (E, H)
        msg = z[src] * alpha.unsqueeze(-1)                         # α_ij W x_j: (E, H, F)
        out = z.new_zeros(N, H, Fo).index_add_(0, dst, msg)        # Σ_j: (N, H, F)
        if self.res_fc is not None:
            out = out + self.res_fc(x).view(N, -1, Fo)            # (N, H or 1, F) broadcast
        return out.flatten(1) if self.concat else out.mean(1)      # (N, H*F) or (N, F)


class GAT(nn.Module):
    """Stacked GATConv, ELU between layers, the output layer averaging its heads: the paper's
    teacher GAT(50, [256, 256], [4, 4, 6], 121) has 3,640,748 parameters."""
    def __init__(self, in_dim, hidden_dims, heads, out_dim, residual=True):
        super().__init__()
        if len(heads) != len(hidden_dims) + 1:
            raise ValueError(f"need one head count per layer: {len(hidden_dims) + 1} layers, "
                             f"got heads={list(heads)}")
        dims = [in_dim] + [h * d for h, d in zip(heads, hidden_dims)]  # layer input widths
        # NOTE: the paper does not say; here the first layer has no residual and the later
        # ones do, because the official code (DGL 0.4's GAT example) builds it so.
        self.layers = nn.ModuleList(
            [GATConv(dims[i], hidden_dims[i], heads[i], residual=residual and i > 0)
             for i in range(len(hidden_dims))]
            + [GATConv(dims[-1], out_dim, heads[-1], residual=residual, concat=False)])

    def forward(self, x, edge_index, return_feats=False):
        """x (N, F_in), edge_index (2, E) -> logits (N, out_dim); with return_feats, also the
        output of every hidden layer before its ELU, a list of (N, H*F)."""
        # NOTE: GAT (Velickovic et al.) and PyG's GATConv let each node attend to itself; here
        # the graph is used as given (PPI has no self-loops), as DGL 0.4 and the official code
        feats = []
        for layer in self.layers[:-1]:
            x = layer(x, edge_index)                               # (N, H*F)
            feats.append(x)
            x = F.elu(x)
        logits = self.layers[-1](x, edge_index)                    # (N, out_dim)
        return (feats, logits) if return_feats else logits


def gat_teacher(**kw):
    """The paper's PPI teacher: 3 layers, heads 4,4,6, hidden 256,256, 121 outputs."""
    return GAT(PPI_FEATURES, [256, 256], [4, 4, 6], PPI_LABELS, **kw)


def gat_student(**kw):
    """The paper's PPI student: 5 layers, 2 heads each, hidden 68, 121 outputs."""
    # NOTE: the paper says 0.16M parameters; its printed layer sizes, built like the teacher
    # (DGL 0.4, as the official code), give 185,172: the sizes are kept, not the count
    return GAT(PPI_FEATURES, [68, 68, 68, 68], [2, 2, 2, 2, 2], PPI_LABELS, **kw)


# DGCNN: kNN graph and EdgeConv -----------------------------------------------------------
BLOCK = 2 ** 19  # numbers held at once by knn_graph and forward_eval_knn: on the CPU blocks
                 # that stay in the cache; 16× on a GPU, where fewer, larger kernels are faster


def rows_a_block(x, numbers_a_row):
    return max(1, BLOCK * (1 if x.device.type == "cpu" else 16) // numbers_a_row)


@torch.no_grad()
def knn_graph(x, k):
    """kNN graph of every cloud in feature space, as DGCNN's (the point itself counts):
    x (B, P, F) -> edge_index (2, B*P*k) over ids b*P + p; row 1 is each point k times, row 0
    its k nearest of the same cloud. A few clouds at a time, not (B*P, B*P) distances."""
    B, P, _ = x.shape
    if not 0 < k <= P:
        raise ValueError(f"k must be in [1, P={P}], got k={k}")
    nbr = []
    for xb in x.split(rows_a_block(x, P * P)):                 # (b, P, F) each
        # ||x_i - x_j||² = ||x_i||² - 2 x_i·x_j + ||x_j||², and ||x_i||² is the same along
        # row i, so it does not change which j are nearest: rank by ||x_j||² - 2 x_i·x_j
        sq = xb.pow(2).sum(-1)                                     # (b, P)
        nbr.append(smallest(torch.baddbmm(sq.unsqueeze(1), xb, xb.transpose(1, 2), alpha=-2),
                            k))                                    # (b, P, k)
    src = (torch.cat(nbr) + P * torch.arange(B, device=x.device).view(B, 1, 1)).reshape(-1)
    dst = torch.arange(B * P, device=x.device).repeat_interleave(k)  # (B*P*k,) i
    return torch.stack([src, dst])                                 # src: (B*P*k,) j


def smallest(rank, k, C=8):
    """The column ids of the k smallest entries of each row of rank (..., P) -> (..., k),
    nearest first: rank.topk(k, largest=False).indices (ties may fall otherwise).
    NOTE: the same neighbours, about twice as fast for the teacher's k = 20 (on the CPU, torch's
    topk is slow once k > P/64): split the columns into P/C chunks of C (chunk m: m, m + P/C,
    ...); the k smallest entries lie in the k chunks with the smallest minima (any entry
    elsewhere has those k minima at or below it), so only those k·C entries are ranked."""
    P = rank.size(-1)
    if P % C or P < 2 * C * k:
        return rank.topk(k, dim=-1, largest=False).indices
    chunk_min = rank.unflatten(-1, (C, P // C)).amin(-2)           # (..., P/C)
    best = chunk_min.topk(k, dim=-1, largest=False, sorted=False).indices  # (..., k) chunks
    cand = (best.unsqueeze(-1) + P // C * torch.arange(C, device=rank.device)).flatten(-2)
    return cand.gather(-1, rank.gather(-1, cand).topk(k, dim=-1, largest=False).indices)


class EdgeConv(nn.Module):
    """EdgeConv, x_i' = max_{j:(j,i)∈E} LeakyReLU(BN(W [x_j - x_i || x_i])): Eq. (1) with g_φ
    the identity, h_θ a 1×1 conv (bias-free Linear) + BN + LeakyReLU(0.2), A the max."""
    def __init__(self, in_dim, out_dim):
        super().__init__()
        self.fc = nn.Linear(2 * in_dim, out_dim, bias=False)      # W = [W_a | W_b]
        self.bn = nn.BatchNorm1d(out_dim)

    def forward(self, x, edge_index, k=None):
        """x (N, F), edge_index (2, E) -> (N, F'); a node without incoming edges gets 0.
        k: edge_index is a knn_graph of k neighbours (each node's k edges consecutive)."""
        N = x.size(0)
        src, dst = edge_index                                      # j, i: (E,) each
        if k is not None and not self.bn.training:  # the frozen teacher: same numbers, fused
            return self.forward_eval_knn(x, src.view(N, k))       # (N, k) sources of each i
        h_j, h_i = self._project(x)                                # (N, F') each
        edge = h_j[src] + h_i[dst]                                 # W [x_j - x_i || x_i]: (E, F')
        edge = F.leaky_relu(self.bn(edge), NEGATIVE_SLOPE)         # (E, F')
        if k is not None:  # each node's k edges are consecutive rows: max over a reshape
            return edge.view(N, k, -1).max(dim=1).values           # (N, F')
        return scatter_max(edge, dst, N)                           # (N, F')

    def _project(self, x):
        """The two halves of W [x_j - x_i || x_i] = W_a x_j + (W_b - W_a) x_i, W = [W_a | W_b],
        per point: h_j = W_a x and h_i = (W_b - W_a) x, (N, F') each. Equal, up to rounding, to
        DGCNN's 1×1 conv on the (E, 2F) edge features, but the matmuls run on the N points
        instead of the E = k·N edges: k times fewer multiply-adds."""
        w_a, w_b = self.fc.weight.chunk(2, dim=1)                 # (F', F) each
        return x @ w_a.t(), x @ (w_b - w_a).t()                    # (N, F'), (N, F')

    def forward_eval_knn(self, x, nbr):
        """forward in eval mode (the frozen teacher, inference) on a kNN graph; nbr (N, k) holds
        the k sources j of each node i (row 0 of knn_graph, viewed as (N, k)). -> (N, F').

        In eval mode BN is a fixed per-channel affine map a·e + b, and LeakyReLU is
        increasing; h_i is the same on all of i's edges, so
            max_j LeakyReLU(a·(h_j + h_i) + b) = LeakyReLU(max_j (a·h_j) + a·h_i + b):
        the same numbers up to rounding, with only a max over gathered rows of a·h_j left on
        the edges, gathered in blocks of BLOCK numbers, not as one (E, F') tensor (blocks that
        stay in the cache: 3-10× faster than embedding_bag(mode="max") on the CPU).
        (a < 0 is fine: the max is taken after the scaling.)"""
        h_j, h_i = self._project(x)                                # (N, F') each
        a = self.bn.weight * (self.bn.running_var + self.bn.eps).rsqrt()  # (F',)
        b = self.bn.bias - a * self.bn.running_mean                # (F',)
        h_j, step = h_j * a, rows_a_block(h_j, nbr.size(1) * h_j.size(1))
        nbr_max = torch.cat([h_j.index_select(0, ids.flatten()).view(*ids.shape, -1).amax(1)
                             for ids in nbr.split(step)])          # max_j a·h_j: (N, F')
        return F.leaky_relu(nbr_max + h_i * a + b, NEGATIVE_SLOPE)  # (N, F')


class DGCNN(nn.Module):
    """Dynamic Graph CNN (Wang et al., 2019): EdgeConvs, each over the kNN graph of its input
    features (a dynamic graph), an optional point-wise embedding, max (and avg) pooling, an
    MLP head. The paper's teacher (dgcnn_teacher) has 1,809,576 parameters."""
    def __init__(self, edge_dims=(64, 64, 128, 256), emb_dim=1024, pool="maxavg",
                 mlp=(512, 256), k=20, num_classes=40, dropout=0.5, in_dim=3):
        super().__init__()
        if pool not in ("max", "maxavg"):
            raise ValueError(f"pool must be 'max' or 'maxavg', got {pool!r}")
        self.k, self.pool = k, pool
        dims = [in_dim] + list(edge_dims)
        self.convs = nn.ModuleList(EdgeConv(a, b) for a, b in zip(dims[:-1], dims[1:]))
        width = sum(edge_dims)
        self.emb = None
        if emb_dim:  # point-wise layer on the concatenated EdgeConv outputs
            self.emb = nn.Sequential(nn.Linear(width, emb_dim, bias=False),
                                     nn.BatchNorm1d(emb_dim), nn.LeakyReLU(NEGATIVE_SLOPE))
            width = emb_dim
        width *= 2 if pool == "maxavg" else 1
        self.global_dim = width  # of the pooled global feature that the head classifies
        head = []
        for i, w in enumerate(mlp):  # as DGCNN: only the first MLP Linear is bias-free
            head += [nn.Linear(width, w, bias=i > 0), nn.BatchNorm1d(w),
                     nn.LeakyReLU(NEGATIVE_SLOPE), nn.Dropout(dropout)]
            width = w
        self.head = nn.Sequential(*head, nn.Linear(width, num_classes))

    def edge_features(self, pts):
        """The EdgeConv stack alone: pts (B, P, 3) -> a list with, per EdgeConv, (its output
        (B*P, F), the edge_index (2, B*P*k) it aggregated over). All that LSP, AT and FitNet
        take from a teacher, whose embedding and head then need not run."""
        B, P, _ = pts.shape
        x = pts.reshape(B * P, -1)                                 # (B*P, 3)
        feats = []
        for conv in self.convs:
            edge_index = knn_graph(x.view(B, P, -1), self.k)       # (2, B*P*k)
            x = conv(x, edge_index, self.k)                        # (B*P, F)
            feats.append((x, edge_index))
        return feats

    def embed(self, pts):
        """Everything before the head: pts (B, P, 3) -> (edge_features(pts), the pooled global
        feature of each cloud (B, global_dim)); self.head(pooled) gives the logits."""
        B, P, _ = pts.shape
        feats = self.edge_features(pts)
        x = torch.cat([f for f, _ in feats], dim=-1)              # (B*P, ΣF)
        if self.emb is not None:
            x = self.emb(x)                                        # (B*P, emb_dim)
        x = x.view(B, P, -1)                                       # (B, P, F)
        pooled = x.max(dim=1).values                               # (B, F)
        if self.pool == "maxavg":
            pooled = torch.cat([pooled, x.mean(dim=1)], dim=-1)    # (B, 2F)
        return feats, pooled

    def forward(self, pts):
        """pts (B, P, 3) -> logits (B, num_classes)."""
        return self.head(self.embed(pts)[1])


def dgcnn_teacher(**kw):
    """The paper's ModelNet40 teacher (1.81M parameters)."""
    return DGCNN((64, 64, 128, 256), emb_dim=1024, pool="maxavg", mlp=(512, 256), k=20, **kw)


# The student and Table 6's variants. NOTE: the paper gives those only by their sizes (0.44M,
# 0.14M, 0.30M), no widths: these shapes are our reading, their true counts beside them.
STUDENT_VARIANTS = {
    "base": dict(edge_dims=(32, 32, 64, 128), mlp=(256,)),          # 99,560
    "channels": dict(edge_dims=(64, 64, 128, 256), mlp=(256,)),     # 233,384
    "layers": dict(edge_dims=(32, 32, 64, 64, 128), mlp=(256,)),    # 124,264
    "mlp": dict(edge_dims=(32, 32, 64, 128), mlp=(512, 256)),       # 297,448
}


def dgcnn_student(variant="base", k=10, **kw):
    """The paper's ModelNet40 student (0.1M parameters), or a Table 6 variant of it."""
    # NOTE: the paper gives only the EdgeConv widths, k = 10, one MLP layer of 256 and "0.1M"
    # parameters; here no embedding layer and max pooling only (the teacher has both, as
    # DGCNN): that reading has 99,560 ≈ 0.1M (165,096 with the teacher's max ⊕ avg pooling)
    return DGCNN(**STUDENT_VARIANTS[variant], emb_dim=0, pool="max", k=k, **kw)


def num_params(model):
    return sum(p.numel() for p in model.parameters())
