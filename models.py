"""Graph layers and the two networks of the paper, written on edge_index tensors.

"Distilling Knowledge from Graph Convolutional Networks" (Yang et al., CVPR 2020):
- GAT, Eq. (2), for PPI (Sec. 4.1): layers built like DGL 0.4's GATConv, which the official
  code uses, so that the paper's teacher has exactly its 3,640,748 parameters.
- DGCNN (Wang et al., 2019) for ModelNet40 (Sec. 3.5, 4.2): EdgeConv layers over a kNN graph
  rebuilt in feature space at every layer (a dynamic graph).

Graphs are edge_index tensors of shape (2, E): edge_index[:, e] = (j, i) is an edge from the
source j to the target (centre) i, as in PyG; messages flow j -> i.
Dimensions: N nodes, E edges, H heads, F features, B batch, P points per cloud, k neighbours.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------
# Scatter operations: reductions over the edges that share a target node

def scatter_max(src, index, num_nodes):
    """Max of src (E,) or (E, F) over the entries that share an index; (N,) or (N, F), 0 for
    empty groups."""
    index = index.view((-1,) + (1,) * (src.dim() - 1)).expand_as(src)  # (E, ...) a view
    return src.new_zeros((num_nodes,) + tuple(src.shape[1:])).scatter_reduce_(
        0, index, src, "amax", include_self=False)


def scatter_softmax(src, index, num_nodes=None):
    """Softmax of src over the entries that share the same index (target node).

    src: (E,) or (E, H); index: (E,) int64 target of each entry. Returns src's shape.
    Groups are reduced with scatter_reduce (max) and index_add (sum); empty groups are fine.
    """
    N = num_nodes if num_nodes is not None else (int(index.max()) + 1 if index.numel() else 0)
    shape = (N,) + tuple(src.shape[1:])                           # (N,) or (N, H)
    # subtract each group's max so exp() cannot overflow; the softmax does not depend on
    # it, so it is detached and the gradient stays exact
    group_max = scatter_max(src.detach(), index, N)               # (N, ...)
    exp = (src - group_max[index]).exp()                          # (E, ...)
    group_sum = src.new_zeros(shape).index_add_(0, index, exp)    # (N, ...)
    return exp / group_sum[index]                                 # (E, ...)


def add_self_loops(edge_index, num_nodes):
    """Remove existing self-loops, then add one (i, i) for every node. (2, E) -> (2, E')."""
    src, dst = edge_index
    keep = src != dst
    loops = torch.arange(num_nodes, device=edge_index.device).expand(2, num_nodes)
    return torch.cat([edge_index[:, keep], loops], dim=1)


# ----------------------------------------------------------------------------------------
# GAT, Eq. (2)

class GATConv(nn.Module):
    """Graph attention layer, Eq. (2), as DGL 0.4's GATConv (no bias, optional residual).

    e_ij = LeakyReLU(a_srcᵀ W x_j + a_dstᵀ W x_i)      (MLP_1 of Eq. (2) on W x_i || W x_j)
    α_ij = softmax of e_ij over the incoming edges (j, i) of i
    x_i' = Σ_j α_ij W x_j  (+ res_fc(x_i))           one such sum per head
    """

    def __init__(self, in_dim, out_dim, heads, residual=False, concat=True,
                 negative_slope=0.2, feat_drop=0.0, attn_drop=0.0):
        super().__init__()
        self.heads, self.out_dim, self.concat = heads, out_dim, concat
        self.fc = nn.Linear(in_dim, heads * out_dim, bias=False)
        self.attn_src = nn.Parameter(torch.empty(1, heads, out_dim))
        self.attn_dst = nn.Parameter(torch.empty(1, heads, out_dim))
        self.leaky_relu = nn.LeakyReLU(negative_slope)
        self.feat_drop = nn.Dropout(feat_drop)
        self.attn_drop = nn.Dropout(attn_drop)
        if residual:  # as DGL 0.4: a Linear only where the widths differ
            self.res_fc = (nn.Linear(in_dim, heads * out_dim, bias=False)
                           if in_dim != out_dim else nn.Identity())
        else:
            self.res_fc = None
        gain = nn.init.calculate_gain("relu")
        nn.init.xavier_normal_(self.fc.weight, gain=gain)
        nn.init.xavier_normal_(self.attn_src, gain=gain)
        nn.init.xavier_normal_(self.attn_dst, gain=gain)
        if isinstance(self.res_fc, nn.Linear):
            nn.init.xavier_normal_(self.res_fc.weight, gain=gain)

    def forward(self, x, edge_index):
        N, H, Fo = x.size(0), self.heads, self.out_dim
        src, dst = edge_index                                      # j, i: (E,) each
        z = self.fc(self.feat_drop(x)).view(N, H, Fo)              # W x: (N, H, F)
        score_src = (z * self.attn_src).sum(-1)                    # a_srcᵀ W x_j: (N, H)
        score_dst = (z * self.attn_dst).sum(-1)                    # a_dstᵀ W x_i: (N, H)
        e = self.leaky_relu(score_src[src] + score_dst[dst])       # Eq. (2) e_ij: (E, H)
        alpha = self.attn_drop(scatter_softmax(e, dst, N))         # α_ij: (E, H)
        msg = z[src] * alpha.unsqueeze(-1)                         # α_ij W x_j: (E, H, F)
        out = z.new_zeros(N, H, Fo).index_add_(0, dst, msg)        # Σ_j: (N, H, F)
        if self.res_fc is not None:
            out = out + self.res_fc(x).view(N, -1, Fo)            # (N, H or 1, F) broadcast
        return out.flatten(1) if self.concat else out.mean(1)      # (N, H*F) or (N, F)


class GAT(nn.Module):
    """Stacked GATConv, ELU between layers, the output layer averaging its heads.

    Paper teacher:  GAT(50, [256, 256], [4, 4, 6], 121)            3,640,748 parameters
    Paper student:  GAT(50, [68] * 4, [2] * 5, 121)                  185,172 parameters
    The first layer has no residual, later ones do (as the official code).

    Self-loops: the graph is used exactly as given (like DGL 0.4 and the official code; PPI
    has none), so a node does not attend to itself. self_loops=True adds one loop per node
    first (what PyG's GATConv does by default).
    """

    def __init__(self, in_dim, hidden_dims, heads, out_dim, residual=True, self_loops=False,
                 negative_slope=0.2, feat_drop=0.0, attn_drop=0.0):
        super().__init__()
        if len(heads) != len(hidden_dims) + 1:
            raise ValueError(f"need one head count per layer: {len(hidden_dims) + 1} layers, "
                             f"got heads={list(heads)}")
        self.self_loops = self_loops
        dims = [in_dim] + [h * d for h, d in zip(heads, hidden_dims)]  # layer input widths
        kw = dict(negative_slope=negative_slope, feat_drop=feat_drop, attn_drop=attn_drop)
        self.layers = nn.ModuleList(
            [GATConv(dims[l], hidden_dims[l], heads[l], residual=residual and l > 0, **kw)
             for l in range(len(hidden_dims))]
            + [GATConv(dims[-1], out_dim, heads[-1], residual=residual, concat=False, **kw)])

    def forward(self, x, edge_index, return_feats=False):
        """x (N, F_in), edge_index (2, E) -> logits (N, out_dim); with return_feats, also the
        output of every hidden layer before its ELU, a list of (N, H*F)."""
        if self.self_loops:
            edge_index = add_self_loops(edge_index, x.size(0))
        feats = []
        for layer in self.layers[:-1]:
            x = layer(x, edge_index)                               # (N, H*F)
            feats.append(x)
            x = F.elu(x)
        logits = self.layers[-1](x, edge_index)                    # (N, out_dim)
        return (feats, logits) if return_feats else logits


def gat_teacher(**kw):
    """The paper's PPI teacher: 3 layers, heads 4,4,6, hidden 256,256, 121 outputs."""
    return GAT(50, [256, 256], [4, 4, 6], 121, **kw)


def gat_student(**kw):
    """The paper's PPI student: 5 layers, 2 heads each, hidden 68, 121 outputs."""
    return GAT(50, [68, 68, 68, 68], [2, 2, 2, 2, 2], 121, **kw)


# ----------------------------------------------------------------------------------------
# DGCNN: kNN graph and EdgeConv

@torch.no_grad()
def knn_graph(x, k):
    """kNN graph of every cloud in feature space, as DGCNN builds it (the point itself counts).

    x: (B, P, F). Returns edge_index (2, B*P*k) over global ids b*P + p: row 1 is each point
    repeated k times, row 0 its k nearest points of the same cloud (squared Euclidean).
    One (B, P, P) distance block, never a (B*P, B*P) matrix.
    """
    B, P, _ = x.shape
    if not 0 < k <= P:
        raise ValueError(f"k must be in [1, P={P}], got k={k}")
    # ||x_i - x_j||² = ||x_i||² - 2 x_i·x_j + ||x_j||², and ||x_i||² is the same along row i,
    # so it does not change which j are nearest: rank by ||x_j||² - 2 x_i·x_j, one fused
    # baddbmm (32 × 1024 points: 1.4x faster than the three-term sum on one CPU thread)
    sq = x.pow(2).sum(-1)                                          # (B, P)
    rank = torch.baddbmm(sq.unsqueeze(1), x, x.transpose(1, 2), alpha=-2)  # (B, P, P)
    nbr = rank.topk(k, dim=-1, largest=False).indices              # (B, P, k)
    offset = torch.arange(B, device=x.device).view(B, 1, 1) * P
    src = (nbr + offset).reshape(-1)                               # (B*P*k,) j
    return torch.stack([src, _knn_targets(B * P, k, x.device)])


def _knn_targets(N, k, device):
    """Row 1 of a kNN graph: 0,..,0, 1,..,1, ..., every node id repeated k times. (N*k,)"""
    return torch.arange(N, device=device).repeat_interleave(k)


class EdgeConv(nn.Module):
    """EdgeConv: x_i' = max_{j:(j,i)∈E} LeakyReLU(BN(W [x_j - x_i || x_i])).

    An instance of Eq. (1): g_φ is the identity, h_θ the 1×1 conv (bias-free Linear) + BN +
    LeakyReLU(0.2) on the edge feature, and the aggregation A is the max.
    """

    def __init__(self, in_dim, out_dim):
        super().__init__()
        self.fc = nn.Linear(2 * in_dim, out_dim, bias=False)
        self.bn = nn.BatchNorm1d(out_dim)

    def forward(self, x, edge_index):
        src, dst = edge_index                                      # j, i: (E,)
        # W [x_j - x_i || x_i] = W_a x_j + (W_b - W_a) x_i with W = [W_a | W_b]: the same
        # numbers as DGCNN's 1×1 conv on the (E, 2F) edge features, but the matmuls run on
        # the N points instead of the E = k·N edges: k times fewer multiply-adds.
        w_a, w_b = self.fc.weight.chunk(2, dim=1)                 # (F', F) each
        h_j = x @ w_a.t()                                          # (N, F')
        h_i = x @ (w_b - w_a).t()                                  # (N, F')
        N, E = x.size(0), dst.numel()
        # knn_graph's layout (each target repeated k times, in order): the max over
        # neighbours is a reshape, whose backward is far cheaper than scatter_max's
        # (a DGCNN teacher step on 32 × 256 points: 15 s -> 6 s on one CPU thread)
        knn_layout = E % N == 0 and torch.equal(dst, _knn_targets(N, E // N, dst.device))
        if knn_layout and not self.bn.training:
            # Eval mode (the frozen teacher, inference): BN is a fixed per-channel affine map
            # a·e + b and LeakyReLU is increasing, so with h_i the same for all of i's edges
            #   max_j LeakyReLU(a·(h_j + h_i) + b) = LeakyReLU(max_j (a·h_j) + a·h_i + b):
            # the same numbers, with only a max over gathered rows on the E edges, which
            # embedding_bag(mode="max") does without materialising the (E, F') gather
            # (the teacher's four EdgeConvs on 32 × 1024 points, one CPU thread: 6.2 s -> 1.1 s).
            a = self.bn.weight * (self.bn.running_var + self.bn.eps).rsqrt()  # (F',)
            b = self.bn.bias - a * self.bn.running_mean                        # (F',)
            nbr_max = F.embedding_bag(src.view(N, E // N), h_j * a, mode="max")  # (N, F')
            return F.leaky_relu(nbr_max + h_i * a + b, 0.2)                    # (N, F')
        edge = h_j[src] + h_i[dst]                                 # (E, F')
        edge = F.leaky_relu(self.bn(edge), 0.2)                    # (E, F')
        if knn_layout:
            return edge.view(N, E // N, -1).max(dim=1).values      # (N, F')
        return scatter_max(edge, dst, N)                           # (N, F')


class DGCNN(nn.Module):
    """Dynamic Graph CNN (Wang et al., 2019) for point-cloud classification.

    Paper teacher: DGCNN((64, 64, 128, 256), emb_dim=1024, pool="maxavg", mlp=(512, 256), k=20)
        = 1,809,576 parameters.
    Paper student: DGCNN((32, 32, 64, 128), emb_dim=0, pool="max", mlp=(256,), k=10)
        = 99,560 parameters.
    The kNN graph is rebuilt from the input features of every EdgeConv (dynamic graph).
    """

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
                                     nn.BatchNorm1d(emb_dim), nn.LeakyReLU(0.2))
            width = emb_dim
        width *= 2 if pool == "maxavg" else 1
        head = []
        for l, w in enumerate(mlp):  # as DGCNN: only the first MLP Linear is bias-free
            head += [nn.Linear(width, w, bias=l > 0), nn.BatchNorm1d(w), nn.LeakyReLU(0.2),
                     nn.Dropout(dropout)]
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
            x = conv(x, edge_index)                                # (B*P, F)
            feats.append((x, edge_index))
        return feats

    def forward(self, pts, return_feats=False):
        """pts (B, P, 3) -> logits (B, num_classes); with return_feats, also edge_features."""
        B, P, _ = pts.shape
        feats = self.edge_features(pts)
        x = torch.cat([f for f, _ in feats], dim=-1)              # (B*P, ΣF)
        if self.emb is not None:
            x = self.emb(x)                                        # (B*P, emb_dim)
        x = x.view(B, P, -1)                                       # (B, P, F)
        pooled = x.max(dim=1).values                               # (B, F)
        if self.pool == "maxavg":
            pooled = torch.cat([pooled, x.mean(dim=1)], dim=-1)    # (B, 2F)
        logits = self.head(pooled)                                 # (B, num_classes)
        return (feats, logits) if return_feats else logits


def dgcnn_teacher(**kw):
    """The paper's ModelNet40 teacher (1.81M parameters)."""
    return DGCNN((64, 64, 128, 256), emb_dim=1024, pool="maxavg", mlp=(512, 256), k=20, **kw)


def dgcnn_student(**kw):
    """The paper's ModelNet40 student (0.1M parameters)."""
    return DGCNN((32, 32, 64, 128), emb_dim=0, pool="max", mlp=(256,), k=10, **kw)


def num_params(model):
    return sum(p.numel() for p in model.parameters())
