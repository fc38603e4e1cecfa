"""SYNTHETIC stand-ins for the paper's two datasets (Sec. 4.1, 4.2), to run everything offline.
Not the paper's data (data.py reads that): generated with the real shapes, deterministic by
seed, labelled synthetic everywhere ('synthetic': True, class names 'synthetic_...').
- synthetic_ppi: 24 graphs with PPI's real node counts, 50 features, 121 labels that need
  several hops of the graph (degree-corrected community graphs, multi-hop labels).
- synthetic_modelnet40: 40 shape classes, points sampled on triangle meshes.
Dimensions: N nodes, E edges, F features (50), L labels (121), K communities, P points per
cloud, T triangles of a mesh, (U, V) a grid of surface points."""
import itertools

import numpy as np
import scipy.sparse as sp
import torch

from data import PPI_FEATURES, PPI_LABELS, PPI_SPLITS, Graph

PPI_GRAPH_SIZES = {  # nodes of each graph of the real release, by split
    "train": (1767, 1377, 2263, 2339, 1578, 1021, 1823, 2488, 591, 3312,
              2401, 1878, 1819, 3480, 2794, 2326, 2650, 2815, 3163, 3021),
    "valid": (3230, 3284), "test": (3224, 2300)}
MIN_NODES = 32                        # the smallest graph, whatever the scale
COMMUNITY_STD = 0.5                   # features: a community mean of this std + N(0, 1) noise
HOP_WEIGHTS = (0.5, 1.0, 0.8, 0.6)    # weights of x, Āx, Ā²x, Ā³x in the labels' linear part
GROUP_SHARE = 0.7                     # weight of the direction a label shares with its group
LABEL_RATE = (0.15, 0.45)             # range of each label's rate of positives (PPI: ~0.3)


def _synthetic_edges(n, rng, avg_degree=14, community_size=100, p_in=0.75, tail=1.5,
                     hub_cap=10, max_rounds=20):
    """Edges (2, E) of a degree-corrected community graph: exactly avg_degree * n / 2
    undirected edges (when reachable), both directions, no self-loops or duplicates; and the
    community of each node (n,).

    Each node has a community and a Pareto weight θ (tail index `tail`, so degrees are
    heavy-tailed; θ at most n / hub_cap). An edge picks its first end ∝ θ and its second end
    ∝ θ within the first end's community (probability p_in) or anywhere (1 - p_in)."""
    K = max(1, round(n / community_size))
    comm = rng.integers(K, size=n)
    theta = np.minimum(rng.pareto(tail, n) + 1, n / hub_cap)
    order = np.argsort(comm, kind="stable")                        # (n,) nodes by community
    cum = np.cumsum(theta[order])                                  # (n,)
    cum0 = np.concatenate([[0.0], cum])
    # (K,) start and end of each community on the line of cumulated θ
    lo, hi = (cum0[np.searchsorted(comm[order], np.arange(K), side)] for side in ("left", "right"))

    def pick(u):  # points u of the θ-mass line -> nodes
        return order[np.minimum(np.searchsorted(cum, u, "right"), n - 1)]

    m = round(avg_degree * n / 2)
    pairs = np.empty(0, dtype=np.int64)
    for _ in range(max_rounds):  # until m distinct pairs exist (one or two rounds at real sizes)
        a = pick(rng.random(2 * m) * cum[-1])
        c = comm[a]
        inside = rng.random(2 * m) < p_in
        b = pick(np.where(inside, lo[c] + rng.random(2 * m) * (hi[c] - lo[c]),
                          rng.random(2 * m) * cum[-1]))
        keep = a != b
        pairs = np.union1d(pairs, np.minimum(a, b)[keep] * n + np.maximum(a, b)[keep])
        if len(pairs) >= m:
            break
    pairs = rng.choice(pairs, size=min(m, len(pairs)), replace=False)
    a, b = pairs // n, pairs % n
    key = np.sort(np.concatenate([b * n + a, a * n + b]))          # both directions, by target
    return np.stack([key % n, key // n]), comm                     # (2, E) rows (j, i)


def _standardise(z, eps=1e-8):
    return (z - z.mean(0)) / (z.std(0) + eps)


def _synthetic_labels(hops, rng, num_labels, num_groups=12):
    """Labels (N, L) from the hop features hops[k] = Āᵏx (N, F), k = 0..3:
    score_l = Σ_k w_k hops[k] (u_kl + 0.7 v_k,group(l))        linear, shared within a group
            + (hops[a_l] p_l) (hops[b_l] q_l)                 a product: needs a non-linear model
    y_l = score_l above its (1 - rate_l) quantile, rate_l ~ U[0.15, 0.45]
    (w = HOP_WEIGHTS, 0.7 = GROUP_SHARE, [0.15, 0.45] = LABEL_RATE)."""
    (N, F), L = hops[0].shape, num_labels
    group = rng.integers(num_groups, size=L)
    hop_a, hop_b = rng.integers(len(hops), size=(2, L))
    linear, prod_a, prod_b = np.zeros((N, L)), np.zeros((N, L)), np.zeros((N, L))
    for k, z in enumerate(hops):
        u, v = rng.normal(size=(F, L)), rng.normal(size=(F, num_groups))
        linear += HOP_WEIGHTS[k] * (z @ (u + GROUP_SHARE * v[:, group]))   # (N, L)
        p, q = rng.normal(size=(2, F, L))
        prod_a[:, hop_a == k] = (z @ p)[:, hop_a == k]
        prod_b[:, hop_b == k] = (z @ q)[:, hop_b == k]
    score = _standardise(linear) + _standardise(prod_a * prod_b)  # (N, L)
    rate = rng.uniform(*LABEL_RATE, size=L)
    threshold = np.sort(score, 0)[((1 - rate) * N).astype(int), np.arange(L)]  # (L,)
    return score > threshold


def synthetic_ppi(seed=0, scale=1.0):
    """A synthetic stand-in for PPI -> {'train', 'valid', 'test': [data.Graph], 'synthetic':
    True}, by seed: 24 graphs of the real node counts × scale (at least MIN_NODES), 50
    features (community mean + noise), 121 labels that need three hops (_synthetic_labels)."""
    # NOTE: the paper's PPI is real; scores on this stand-in say nothing about its numbers
    rng = np.random.default_rng(seed)
    sizes = [max(MIN_NODES, round(n * scale)) for s in PPI_SPLITS for n in PPI_GRAPH_SIZES[s]]
    xs, edges, hops = [], [], [[] for _ in HOP_WEIGHTS]
    for n in sizes:
        edge_index, comm = _synthetic_edges(n, rng)
        x = COMMUNITY_STD * rng.normal(size=(comm.max() + 1, PPI_FEATURES))[comm] \
            + rng.normal(size=(n, PPI_FEATURES))                       # (n, F)
        A = sp.csr_matrix((np.ones(edge_index.shape[1]), (edge_index[1], edge_index[0])),
                          shape=(n, n))                                    # A[i, j] = 1
        A_mean = sp.diags(1 / np.maximum(A.sum(1).A1, 1)) @ A              # Ā, rows sum to 1
        z = x
        for hop in hops:
            hop.append(z)
            z = A_mean @ z                                                 # (n, F)
        xs.append(x)
        edges.append(edge_index)
    y = _synthetic_labels([_standardise(np.concatenate(h)) for h in hops], rng,
                          PPI_LABELS)                                  # (ΣN, L)
    graphs = [Graph(torch.as_tensor(x, dtype=torch.float32),
                    torch.as_tensor(y_g, dtype=torch.float32), torch.as_tensor(e),
                    torch.zeros(len(x), dtype=torch.long))
              for x, e, y_g in zip(xs, edges, np.split(y, np.cumsum(sizes)[:-1]))]
    counts = np.cumsum([0] + [len(PPI_GRAPH_SIZES[s]) for s in PPI_SPLITS])
    return {**{s: graphs[counts[i]:counts[i + 1]] for i, s in enumerate(PPI_SPLITS)},
            "synthetic": True}


# Synthetic ModelNet40: 40 shape classes sampled on triangle meshes
RELEASE_POINTS = 2048                       # points per cloud in modelnet40_ply_hdf5_2048
MAX_TILT = 0.15                             # a cloud's pose: any turn about z, this tilt (rad)
STRETCH = (0.8, 1.25)                       # range of the per-axis stretch of a cloud
NOISE_STD = 0.01                            # Gaussian noise on the points

_SEGMENTS = 32                              # around a surface of revolution or a torus
_PROFILE_T = np.linspace(0, 1, 17)          # (V,) parameter along a profile or a ring
_CURVE_T = np.linspace(0, 1, 129)[:, None]  # (U, 1) parameter along a curve
_TUBE_SIDES = 8                             # around a tube
_SHEET_POINTS = 25                          # per side of a height field's grid
_NO_CAPS = (False, False)                   # an open cylinder
_TETRAHEDRON = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1.0]])  # (4, 3)
_OCTAHEDRON = np.concatenate([np.eye(3), -np.eye(3)])                       # (6, 3) ±x, ±y, ±z
_LEG_SIGNS = list(itertools.product((-1, 1), repeat=2))   # (±x, ±y) corner of each leg


def _grid_tris(p):
    """Triangles (T, 3, 3) of a grid of surface points p (U, V, 3)."""
    a, b, c, d = p[:-1, :-1], p[1:, :-1], p[1:, 1:], p[:-1, 1:]    # (U-1, V-1, 3) cell corners
    return np.concatenate([np.stack([a, b, c], -2), np.stack([a, c, d], -2)]).reshape(-1, 3, 3)


def _revolve(rho, z, shift=(0, 0, 0), segments=_SEGMENTS):
    """Triangles of the surface of revolution about z of the profile (rho(v), z(v))."""
    t = np.linspace(0, 2 * np.pi, segments + 1)[:, None]                      # (U, 1)
    p = np.stack(np.broadcast_arrays(rho * np.cos(t), rho * np.sin(t), z + 0 * t), -1)  # (U, V, 3)
    return _grid_tris(p) + shift


def _sphere(r, shift=(0, 0, 0), top=np.pi):
    """Triangles of a sphere of radius r, or of its cap down to the polar angle top."""
    return _revolve(r * np.sin(top * _PROFILE_T), r * np.cos(top * _PROFILE_T), shift)


def _disc(r, z=0.0, shift=(0, 0, 0)):
    return _revolve(r * _PROFILE_T, z + 0 * _PROFILE_T, shift)


def _cylinder(r, h, shift=(0, 0, 0), r_top=None, caps=(True, True)):
    """Side of a cylinder (or a frustum up to radius r_top) from z = -h/2 to h/2, with caps."""
    r_top = r if r_top is None else r_top
    parts = [_revolve(r + (r_top - r) * _PROFILE_T, h * (_PROFILE_T - 0.5), shift)]
    ends = ((r, -h / 2, caps[0]), (r_top, h / 2, caps[1]))
    parts += [_disc(rc, zc, shift) for rc, zc, cap in ends if cap and rc > 0]
    return np.concatenate(parts)


def _torus(R, r, shift=(0, 0, 0)):
    t = np.linspace(0, 2 * np.pi, _SEGMENTS + 1)[:, None]                    # (U, 1)
    ring = np.stack([np.cos(t), np.sin(t), 0 * t], -1)                        # (U, 1, 3)
    phi = 2 * np.pi * _PROFILE_T[None, :, None]                               # (1, V, 1)
    p = ring * (R + r * np.cos(phi)) + np.array([0, 0, 1.0]) * r * np.sin(phi)  # (U, V, 3)
    return _grid_tris(p) + shift


def _box(sx, sy, sz, shift=(0, 0, 0)):
    c = np.array(list(itertools.product([-0.5, 0.5], repeat=3))) * (sx, sy, sz) + shift  # (8, 3)
    quads = [(0, 1, 3, 2), (4, 5, 7, 6), (0, 1, 5, 4), (2, 3, 7, 6), (0, 2, 6, 4), (1, 3, 7, 5)]
    return np.concatenate([c[[[a, b, d], [a, d, e]]] for a, b, d, e in quads])  # (12, 3, 3)


def _pyramid(h, half_base=1.0, shift=(0, 0, 0)):
    """Triangles of a pyramid: square base of half-width half_base at z = 0, apex at z = h."""
    c = np.array([[1, 1, 0], [-1, 1, 0], [-1, -1, 0], [1, -1, 0.0]]) * half_base  # (4, 3) cyclic
    sides = np.stack([c, np.roll(c, -1, 0), np.broadcast_to([0, 0, h], (4, 3))], 1)  # (4, 3, 3)
    return np.concatenate([sides, c[[[0, 1, 2], [0, 2, 3]]]]) + shift


def _tube(c, r):
    """Triangles of a tube of radius r around the polyline c (U, 3)."""
    t = np.gradient(c, axis=0)
    t /= np.linalg.norm(t, axis=1, keepdims=True)                             # (U, 3) tangents
    # a normal: t × z, or t × x where t is nearly vertical
    n1 = np.cross(t, np.where(np.abs(t[:, 2:]) < 0.9, [0, 0, 1.0], [1.0, 0, 0]))
    n1 /= np.linalg.norm(n1, axis=1, keepdims=True)
    n2 = np.cross(t, n1)
    phi = 2 * np.pi * np.linspace(0, 1, _TUBE_SIDES + 1)[None, :, None]      # (1, V, 1)
    return _grid_tris(c[:, None] + r * (np.cos(phi) * n1[:, None] + np.sin(phi) * n2[:, None]))


def _height_field(f):
    """Triangles of the sheet z = f(x, y) over [-1, 1]²."""
    side = np.linspace(-1, 1, _SHEET_POINTS)
    x, y = np.meshgrid(side, side, indexing="ij")
    return _grid_tris(np.stack([x, y, f(x, y)], -1))                          # (U, V, 3)


def _union(*parts):  # one mesh of several
    return np.concatenate(parts)


# The shapes that use one random draw in two places. u(lo, hi) is a uniform draw.

def _bicone(u):
    h = u(0.6, 0.9)                                                  # height of each cone
    return _union(_cylinder(0.7, h, (0, 0, h / 2), r_top=0.0, caps=_NO_CAPS),
                  _cylinder(0.0, h, (0, 0, -h / 2), r_top=0.7, caps=_NO_CAPS))


def _capsule(u):
    h = u(1.0, 1.4)                                                  # length of the cylinder
    top = _sphere(0.4, (0, 0, h / 2), np.pi / 2)                     # upper half-sphere
    return _union(_cylinder(0.4, h, caps=_NO_CAPS), top, top * (1, 1, -1))


def _two_spheres(u):
    r = u(0.35, 0.5)                                                 # the lower one's radius
    return _union(_sphere(0.5, (0, 0, 0.5)), _sphere(r, (0, 0, -r)))


def _helix(u):
    angle = 2 * np.pi * u(2.5, 3.5) * _CURVE_T                       # (U, 1), 2.5-3.5 turns
    return _tube(np.hstack([np.cos(angle), np.sin(angle), 2 * _CURVE_T - 1]), 0.1)


def _spiral(u):
    angle = 2 * np.pi * u(2, 3) * _CURVE_T                           # (U, 1), 2-3 turns
    radius = 0.2 + _CURVE_T                                          # (U, 1)
    return _tube(np.hstack([radius * np.cos(angle), radius * np.sin(angle), 0 * _CURVE_T]), 0.06)


# class name -> u -> triangles, u(lo, hi) a uniform draw for this cloud's proportions. Some
# pairs are close on purpose (sphere/ellipsoid, cylinder/tube, disc/plate, table/chair, ...).
_SHAPES = {
    "sphere": lambda u: _sphere(1.0),
    "ellipsoid": lambda u: _sphere(1.0) * (1, u(0.55, 0.75), u(0.35, 0.55)),
    "cube": lambda u: _box(1, 1, 1),
    "cuboid": lambda u: _box(1, u(0.5, 0.7), u(0.2, 0.4)),
    "cylinder": lambda u: _cylinder(0.5, u(1.2, 1.6)),
    "tube": lambda u: _cylinder(0.5, u(1.2, 1.6), caps=_NO_CAPS),
    "cone": lambda u: _cylinder(0.6, u(1.2, 1.6), r_top=0.0),
    "frustum": lambda u: _cylinder(0.7, u(0.8, 1.1), r_top=u(0.25, 0.4)),
    "bicone": _bicone,
    "torus": lambda u: _torus(1.0, u(0.3, 0.4)),
    "thin_ring": lambda u: _torus(1.0, u(0.06, 0.1)),
    "hemisphere": lambda u: _union(_sphere(1.0, top=np.pi / 2), _disc(1.0)),
    "bowl": lambda u: _sphere(1.0, top=np.pi / 2) * (1, 1, -u(0.6, 1.0)),
    "capsule": _capsule,
    "disc": lambda u: _disc(1.0),
    "plate": lambda u: _height_field(lambda x, y: 0 * x) * (1, u(0.8, 1.0), 1),
    "tetrahedron": lambda u: _TETRAHEDRON[list(itertools.combinations(range(4), 3))],
    "octahedron": lambda u: _OCTAHEDRON[[[i, j + 1, k + 2]
                                         for i, j, k in itertools.product((0, 3), repeat=3)]],
    "pyramid": lambda u: _pyramid(u(1.2, 1.6)),
    "dumbbell": lambda u: _union(_sphere(0.4, (0, 0, 0.9)), _sphere(0.4, (0, 0, -0.9)),
                                 _cylinder(u(0.08, 0.12), 1.8, caps=_NO_CAPS)),
    "two_spheres": _two_spheres,
    "snowman": lambda u: _union(_sphere(0.5), _sphere(0.37, (0, 0, 0.8)),
                                _sphere(0.26, (0, 0, u(1.35, 1.45)))),
    "cube_on_cylinder": lambda u: _union(_cylinder(u(0.25, 0.4), 1.0, (0, 0, -0.5)),
                                         _box(1, 1, 1, (0, 0, 0.5))),
    "house": lambda u: _union(_box(1, 1, 1), _pyramid(u(0.5, 0.7), 0.6, (0, 0, 0.5))),
    "l_shape": lambda u: _union(_box(1.2, 0.3, 0.3), _box(0.3, 0.3, u(0.9, 1.2), (-0.45, 0, 0.5))),
    "t_shape": lambda u: _union(_box(1.2, 0.3, 0.3, (0, 0, 0.6)), _box(0.3, 0.3, u(1.0, 1.3))),
    "cross": lambda u: _union(_box(1.6, 0.25, 0.25), _box(0.25, 1.6, 0.25), _box(0.25, 0.25, 1.6)),
    "plus": lambda u: _union(_box(1.6, 0.25, 0.25), _box(0.25, u(1.2, 1.6), 0.25)),
    "ring_of_spheres": lambda u: _union(*[
        _sphere(0.25, (np.cos(a), np.sin(a), 0))
        for a in np.linspace(0, 2 * np.pi, int(u(6, 9)), endpoint=False)]),
    "helix": _helix,
    "spiral": _spiral,
    "table": lambda u: _union(_box(1.6, 1.0, 0.08, (0, 0, 0.5)), *[
        _box(0.08, 0.08, 1.0, (0.7 * sx, 0.4 * sy, 0)) for sx, sy in _LEG_SIGNS]),
    "chair": lambda u: _union(_box(1.0, 1.0, 0.08), _box(1.0, 0.08, u(0.8, 1.1), (0, 0.46, 0.5)), *[
        _box(0.08, 0.08, 1.0, (0.45 * sx, 0.45 * sy, -0.5)) for sx, sy in _LEG_SIGNS]),
    "stairs": lambda u: _union(*[_box(0.25, 1.0, h, (0.25 * i, 0, h / 2))
                                 for i, h in enumerate(0.25 * np.arange(1, int(u(4, 6))))]),
    "arch": lambda u: _tube(np.hstack([np.cos(np.pi * _CURVE_T), 0 * _CURVE_T,
                                       u(0.8, 1.2) * np.sin(np.pi * _CURVE_T)]), 0.15),
    "mushroom": lambda u: _union(_sphere(0.7, (0, 0, 0.3), np.pi / 2), _disc(0.7, 0.3),
                                 _cylinder(u(0.12, 0.2), 0.8, (0, 0, -0.1))),
    "cup": lambda u: _union(_cylinder(0.5, 1.0, caps=(True, False)), _tube(np.hstack(
        [0.5 + u(0.2, 0.3) * np.sin(np.pi * _CURVE_T), 0 * _CURVE_T,
         0.25 * np.cos(np.pi * _CURVE_T)]), 0.05)),
    "saddle": lambda u: _height_field(lambda x, y: u(0.3, 0.5) * (x ** 2 - y ** 2)),
    "wave": lambda u: _height_field(lambda x, y: 0.2 * np.sin(2 * np.pi * u(1.0, 1.5) * x)),
    "planet": lambda u: _union(_sphere(0.6), _torus(u(1.0, 1.2), 0.05)),
}


def _normalise(p):
    """Center a cloud (P, 3) and scale it into the unit sphere (max norm 1)."""
    p = p - p.mean(0)
    return p / np.linalg.norm(p, axis=1).max()


def _synthetic_cloud(shape, num_points, rng):
    """One cloud (P, 3): area-uniform points on the shape, proportions jittered, random pose
    (any turn about the vertical axis z, tilt up to MAX_TILT), noise NOISE_STD, normalised."""
    tris = shape(rng.uniform)                                                 # (T, 3, 3)
    area = 0.5 * np.linalg.norm(np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0]), axis=1)
    cum = np.cumsum(area)                                                     # (T,)
    t = tris[np.minimum(np.searchsorted(cum, rng.random(num_points) * cum[-1], "right"),
                        len(tris) - 1)]                                       # (P, 3, 3)
    r1, r2 = np.sqrt(rng.random((num_points, 1))), rng.random((num_points, 1))
    p = (1 - r1) * t[:, 0] + r1 * (1 - r2) * t[:, 1] + r1 * r2 * t[:, 2]      # (P, 3)
    a, b = rng.uniform(0, 2 * np.pi), rng.uniform(-MAX_TILT, MAX_TILT)
    turn = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    tilt = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    p = _normalise(p * rng.uniform(*STRETCH, size=3)) @ (turn @ tilt).T
    return _normalise(p + NOISE_STD * rng.normal(size=p.shape))


def synthetic_modelnet40(num_train_per_class=20, num_test_per_class=5, num_points=1024, seed=0):
    """A synthetic stand-in for ModelNet40, laid out as data.load_modelnet40, class names
    'synthetic_<shape>'; clouds of max(RELEASE_POINTS, num_points) points in random order, as
    the release, so that pointcloud_batches picks the first num_points alike. By seed."""
    # NOTE: not ModelNet40's CAD models: accuracies on these shapes say nothing of the paper's
    rng = np.random.default_rng(seed)
    shapes = list(_SHAPES.values())
    P = max(RELEASE_POINTS, num_points)
    out = {"class_names": [f"synthetic_{name}" for name in _SHAPES], "synthetic": True}
    for split, per_class in (("train", num_train_per_class), ("test", num_test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(len(shapes)), per_class))     # (N,)
        out[f"{split}_points"] = np.stack(
            [_synthetic_cloud(shapes[c], P, rng) for c in labels]).astype(np.float32)  # (N, P, 3)
        out[f"{split}_labels"] = labels.astype(np.int64)
    return out
