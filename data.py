"""Datasets of the paper's two experiments (Sec. 4 of "Distilling Knowledge from Graph
Convolutional Networks", Yang et al., CVPR 2020), with offline synthetic stand-ins.

- PPI node classification (Sec. 4.1, Tables 1-2): the files of ppi.zip as DGL and PyG release
  them, read into one Graph per tissue (20 train, 2 valid, 2 test graphs).
- ModelNet40 recognition (Sec. 4.2, Tables 3-6): the modelnet40_ply_hdf5_2048 release, and
  DGCNN's point sampling and training augmentation.
- synthetic_ppi / synthetic_modelnet40: generated data with the real shapes, deterministic by
  seed. Every dataset dict carries 'synthetic': True/False so that scripts can label their
  output; synthetic data never replaces real data silently.

Graphs are edge_index tensors (2, E): edge_index[:, e] = (j, i), source j, target (centre) i.
Dimensions: N nodes, E edges, F features (50), L labels (121), B batch, P points per cloud,
T triangles of a mesh.
"""
import contextlib
import http.client
import itertools
import json
import os
import re
import shutil
import sys
import tempfile
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import h5py
import numpy as np
import scipy.sparse as sp
import torch


class DataError(Exception):
    """Data missing or malformed; the message is a complete explanation for the user."""


# ----------------------------------------------------------------------------------------
# Download: temp file renamed when complete, extraction into a temp folder, check, move in

def _download(url, dest):
    """Stream url to dest, printing progress to stderr; dest appears only when complete."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=30) as response:
            total, done = int(response.headers.get("Content-Length") or 0), 0
            while chunk := response.read(1 << 20):
                f.write(chunk)
                done += len(chunk)
                size = f"{done / 2**20:.1f} MiB" + (
                    f" / {total / 2**20:.1f} MiB ({100 * done / total:.0f}%)" if total else "")
                print(f"\rdownloading {url}: {size}", end="", file=sys.stderr, flush=True)
            print(file=sys.stderr)
        if total and done != total:
            raise OSError(f"download stopped after {done} of {total} bytes")
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def _install_zip(url, data_dir, zip_name, wanted, check):
    """Put the wanted files of the release zip into data_dir. A zip_name already in data_dir
    (placed by hand) is used as is; otherwise it is downloaded, and removed after. Members
    are found by file name anywhere in the zip, so any top folder layout works."""
    zip_path = data_dir / zip_name
    downloaded = not zip_path.is_file()
    if downloaded:
        _download(url, zip_path)
    try:
        with tempfile.TemporaryDirectory(dir=data_dir, prefix=".extract.") as tmp:
            with zipfile.ZipFile(zip_path) as zf:
                for info in zf.infolist():
                    name = PurePosixPath(info.filename).name
                    if not info.is_dir() and wanted(name):
                        with zf.open(info) as src, open(Path(tmp) / name, "wb") as dst:
                            shutil.copyfileobj(src, dst)
            problems = check(Path(tmp))
            if problems:
                raise DataError(f"{zip_name} is not the expected release: {'; '.join(problems)}")
            for f in Path(tmp).iterdir():
                os.replace(f, data_dir / f.name)
    finally:
        if downloaded:
            zip_path.unlink(missing_ok=True)


def _ensure_release(what, data_dir, download, url, zip_name, manual_files, wanted, check):
    """Return when check(data_dir) finds no problem, downloading first if allowed; otherwise
    raise one DataError saying what is missing, the URL, where to put the files by hand and
    how to run without them. Nothing half-written is left behind."""
    problems = check(data_dir)
    if not problems:
        return
    if not download:
        reason = "Downloading is switched off (download=False)."
    else:
        created = [p for p in (data_dir, *data_dir.parents) if not p.exists()]  # deepest first
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            _install_zip(url, data_dir, zip_name, wanted, check)
            return
        except (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile,
                http.client.HTTPException, DataError) as e:
            reason = f"Downloading or unpacking it failed: {e}"
            with contextlib.suppress(OSError):
                for p in created:
                    p.rmdir()
    where = data_dir.resolve()
    raise DataError(
        f"{what} data not found in {where} ({'; '.join(problems)}).\n"
        f"{reason}\n"
        f"The release is {url} (another URL can be given with the loader's url argument).\n"
        f"To install it by hand, download that zip and either put it at {where / zip_name}\n"
        f"or unpack these files into {where}:\n    {' '.join(manual_files)}\n"
        f"To run without the real data, use the synthetic stand-in: --data synthetic")


# ----------------------------------------------------------------------------------------
# PPI (Sec. 4.1)

class Graph(NamedTuple):
    x: torch.Tensor           # (N, F) float32 node features
    y: torch.Tensor           # (N, L) float32 0/1 labels
    edge_index: torch.Tensor  # (2, E) int64, row 0 = source j, row 1 = target i, local ids
    batch: torch.Tensor       # (N,) int64 graph index within a batch (zeros for one graph)


PPI_URL = "https://data.dgl.ai/dataset/ppi.zip"  # the URL DGL and PyG download from
PPI_SPLITS = ("train", "valid", "test")
PPI_FILES = [f"{s}_{f}" for s in PPI_SPLITS
             for f in ("graph.json", "feats.npy", "labels.npy", "graph_id.npy")]
PPI_NUM_FEATURES, PPI_NUM_LABELS = 50, 121


def _check_ppi(data_dir):
    """Problems with the PPI files in data_dir, [] if none (shapes read without loading)."""
    missing = [n for n in PPI_FILES if not (data_dir / n).is_file()]
    problems = [f"missing {', '.join(missing)}"] if missing else []
    for split in PPI_SPLITS if not problems else ():
        try:
            f, l, g = (np.load(data_dir / f"{split}_{n}.npy", mmap_mode="r").shape
                       for n in ("feats", "labels", "graph_id"))
        except (OSError, ValueError) as e:
            problems.append(f"unreadable {split} arrays ({e})")
            continue
        if (len(g) != 1 or f != (g[0], PPI_NUM_FEATURES) or l != (g[0], PPI_NUM_LABELS)):
            problems.append(f"{split} feats {f}, labels {l}, graph_id {g}: expected "
                            f"(N, {PPI_NUM_FEATURES}), (N, {PPI_NUM_LABELS}), (N,)")
    return problems


def _read_ppi_split(data_dir, split):
    """One split of the release -> list of Graph, one per graph id in ascending order.

    Local node ids follow the global ids; edges across graphs and duplicate edges are
    dropped; self-loops are kept if the file has them (the real files have none); edges are
    sorted by target, then source."""
    path = data_dir / f"{split}_graph.json"
    try:
        with open(path) as f:
            g = json.load(f)
        node_ids = np.array([n["id"] for n in g["nodes"]], dtype=np.int64)
        links = g["links"] if "links" in g else g["edges"]  # newer networkx writes "edges"
        src = np.array([e["source"] for e in links], dtype=np.int64).reshape(-1)
        dst = np.array([e["target"] for e in links], dtype=np.int64).reshape(-1)
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path} is not networkx node-link JSON ({e!r}). "
                        f"Delete it and load again to download a fresh copy.") from e
    x, y, gid = (np.load(data_dir / f"{split}_{n}.npy") for n in ("feats", "labels", "graph_id"))
    N = len(gid)
    if not np.array_equal(np.sort(node_ids), np.arange(N)):
        raise DataError(f"{path}: node ids must be 0..{N - 1}, the rows of {split}_feats.npy.")
    order = np.argsort(gid, kind="stable")                 # (N,) nodes grouped by graph
    _, counts = np.unique(gid, return_counts=True)
    offsets = np.concatenate([[0], np.cumsum(counts)])     # (G+1,) graph starts in order
    pos = np.empty(N, dtype=np.int64)
    pos[order] = np.arange(N)                              # position of each node in order
    same = gid[src] == gid[dst]                            # real files: all True
    key = np.unique(pos[dst[same]] * N + pos[src[same]])   # (E,) sorted by target, no duplicates
    bounds = np.searchsorted(key, offsets * N)             # (G+1,) edge range of each graph
    graphs = []
    for g in range(len(counts)):
        k, o = key[bounds[g]:bounds[g + 1]], offsets[g]
        nodes = order[o:offsets[g + 1]]                    # (N_g,) global ids, ascending
        edge_index = np.stack([k % N - o, k // N - o])     # (2, E_g) local (j, i)
        graphs.append(Graph(torch.as_tensor(x[nodes], dtype=torch.float32),
                            torch.as_tensor(y[nodes], dtype=torch.float32),
                            torch.as_tensor(edge_index), torch.zeros(len(nodes), dtype=torch.long)))
    return graphs


def load_ppi(data_dir="data/ppi", download=True, url=PPI_URL):
    """The real PPI release -> {'train': [20 Graph], 'valid': [2], 'test': [2], 'synthetic':
    False}, one Graph per graph id with local node ids and edges sorted by target, then
    source. Missing files are downloaded from url when download is True; any failure raises
    DataError with instructions."""
    data_dir = Path(data_dir)
    _ensure_release("PPI", data_dir, download, url, "ppi.zip", PPI_FILES,
                    lambda name: name in PPI_FILES, _check_ppi)
    return {**{s: _read_ppi_split(data_dir, s) for s in PPI_SPLITS}, "synthetic": False}


def batch_graphs(graphs):
    """Disjoint union of graphs: nodes stacked, edge ids offset, batch = graph index."""
    counts = torch.tensor([g.x.size(0) for g in graphs])
    offsets = torch.cumsum(counts, 0) - counts                                  # (G,)
    edge_index = torch.cat([g.edge_index + o for g, o in zip(graphs, offsets)], 1)  # (2, ΣE)
    batch = torch.repeat_interleave(torch.arange(len(graphs)), counts)         # (ΣN,)
    return Graph(torch.cat([g.x for g in graphs]), torch.cat([g.y for g in graphs]),
                 edge_index, batch)


def ppi_batches(graphs, batch_size=2, shuffle=True, generator=None):
    """Yield (indices of the graphs, their batch_graphs) for batch_size graphs at a time (2,
    as the official code); the graph order is shuffled with the torch generator when shuffle
    is True; the last batch may be smaller. The indices let a caller fetch per-graph cached
    values (e.g. a frozen teacher's outputs)."""
    order = torch.randperm(len(graphs), generator=generator) if shuffle else range(len(graphs))
    order = list(map(int, order))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield idx, batch_graphs([graphs[i] for i in idx])


# ----------------------------------------------------------------------------------------
# Synthetic PPI: the real graph sizes, degree-corrected community graphs, multi-hop labels

PPI_GRAPH_SIZES = {
    "train": (1767, 1377, 2263, 2339, 1578, 1021, 1823, 2488, 591, 3312,
              2401, 1878, 1819, 3480, 2794, 2326, 2650, 2815, 3163, 3021),
    "valid": (3230, 3284),
    "test": (3224, 2300)}


def _synthetic_edges(n, rng, avg_degree=14, community_size=100, p_in=0.75, tail=1.5):
    """Edges (2, E) of a degree-corrected community graph: exactly avg_degree * n / 2
    undirected edges (when reachable), both directions, no self-loops or duplicates.

    Each node has a community and a Pareto weight θ (tail index `tail`, so degrees are
    heavy-tailed). An edge picks its first end ∝ θ and its second end ∝ θ within the first
    end's community (probability p_in) or anywhere (1 - p_in)."""
    K = max(1, round(n / community_size))
    comm = rng.integers(K, size=n)
    theta = np.minimum(rng.pareto(tail, n) + 1, n / 10)
    order = np.argsort(comm, kind="stable")                        # (n,) nodes by community
    cum = np.cumsum(theta[order])                                  # (n,)
    cum0 = np.concatenate([[0.0], cum])
    # (K,) start and end of each community on the line of cumulated θ
    lo = cum0[np.searchsorted(comm[order], np.arange(K), "left")]
    hi = cum0[np.searchsorted(comm[order], np.arange(K), "right")]

    def pick(u):  # points u of the θ-mass line -> nodes
        return order[np.minimum(np.searchsorted(cum, u, "right"), n - 1)]

    m = round(avg_degree * n / 2)
    pairs = np.empty(0, dtype=np.int64)
    for _ in range(20):  # draw until m distinct pairs exist (one or two rounds at real sizes)
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


def _standardise(z):
    return (z - z.mean(0)) / (z.std(0) + 1e-8)


def _synthetic_labels(hops, rng, num_groups=12):
    """Labels (N, L) from the hop features hops[k] = Āᵏx (N, F), k = 0..3.

    score_l = Σ_k w_k hops[k] (u_kl + 0.7 v_k,group(l))        linear, shared within a group
            + (hops[a_l] p_l) (hops[b_l] q_l)                 a product: needs a non-linear model
    y_l = score_l above its (1 - rate_l) quantile, rate_l ~ U[0.15, 0.45] (PPI: ~0.3)."""
    F, L = hops[0].shape[1], PPI_NUM_LABELS
    group = rng.integers(num_groups, size=L)
    hop_weight = (0.5, 1.0, 0.8, 0.6)
    hop_a, hop_b = rng.integers(len(hops), size=(2, L))
    N = len(hops[0])
    linear, prod_a, prod_b = np.zeros((N, L)), np.zeros((N, L)), np.zeros((N, L))
    for k, z in enumerate(hops):
        u, v = rng.normal(size=(F, L)), rng.normal(size=(F, num_groups))
        linear += hop_weight[k] * (z @ (u + 0.7 * v[:, group]))   # (N, L)
        p, q = rng.normal(size=(2, F, L))
        prod_a[:, hop_a == k] = (z @ p)[:, hop_a == k]
        prod_b[:, hop_b == k] = (z @ q)[:, hop_b == k]
    score = _standardise(linear) + _standardise(prod_a * prod_b)  # (N, L)
    rate = rng.uniform(0.15, 0.45, size=L)
    threshold = np.sort(score, 0)[((1 - rate) * N).astype(int), np.arange(L)]  # (L,)
    return score > threshold


def synthetic_ppi(seed=0, scale=1.0):
    """A synthetic stand-in for PPI -> {'train', 'valid', 'test': lists of Graph, 'synthetic':
    True}, deterministic by seed.

    24 graphs with the real node counts (times scale, at least 32 nodes), 50 features,
    121 labels. Graphs: degree-corrected community graphs, average degree 14 with a heavy
    tail, symmetric, no self-loops. Features: community mean + Gaussian noise. Labels:
    linear and product terms of x, Āx, Ā²x, Ā³x (Ā = mean over neighbours), so they depend
    on three hops and need a non-linear model."""
    rng = np.random.default_rng(seed)
    sizes = [max(32, round(n * scale)) for s in PPI_SPLITS for n in PPI_GRAPH_SIZES[s]]
    xs, edges, hops = [], [], [[] for _ in range(4)]
    for n in sizes:
        edge_index, comm = _synthetic_edges(n, rng)
        x = 0.5 * rng.normal(size=(comm.max() + 1, PPI_NUM_FEATURES))[comm] \
            + rng.normal(size=(n, PPI_NUM_FEATURES))                       # (n, F)
        A = sp.csr_matrix((np.ones(edge_index.shape[1]), (edge_index[1], edge_index[0])),
                          shape=(n, n))                                    # A[i, j] = 1
        A_mean = sp.diags(1 / np.maximum(A.sum(1).A1, 1)) @ A              # Ā, rows sum to 1
        z = x
        for k in range(4):
            hops[k].append(z)
            z = A_mean @ z                                                 # (n, F)
        xs.append(x)
        edges.append(edge_index)
    y = _synthetic_labels([_standardise(np.concatenate(h)) for h in hops], rng)  # (ΣN, L)
    graphs = [Graph(torch.as_tensor(x, dtype=torch.float32),
                    torch.as_tensor(y_g, dtype=torch.float32), torch.as_tensor(e),
                    torch.zeros(len(x), dtype=torch.long))
              for x, e, y_g in zip(xs, edges, np.split(y, np.cumsum(sizes)[:-1]))]
    counts = np.cumsum([0] + [len(PPI_GRAPH_SIZES[s]) for s in PPI_SPLITS])
    return {**{s: graphs[counts[i]:counts[i + 1]] for i, s in enumerate(PPI_SPLITS)},
            "synthetic": True}


# ----------------------------------------------------------------------------------------
# ModelNet40 (Sec. 4.2)

# The original host (shapenet.cs.stanford.edu) is gone; this is the mirror PyG's ModelNet40
# loader downloads from. Pass url= to use another copy.
MODELNET_URL = ("https://huggingface.co/datasets/Msun/modelnet40/resolve/main/"
                "modelnet40_ply_hdf5_2048.zip")
MODELNET_FILES = ([f"ply_data_train{i}.h5" for i in range(5)]
                  + [f"ply_data_test{i}.h5" for i in range(2)] + ["shape_names.txt"])


def _modelnet_h5(data_dir, split):
    return sorted(data_dir.glob(f"ply_data_{split}*.h5"))


def _check_modelnet(data_dir):
    """Problems with the ModelNet40 files in data_dir, [] if none. At least one train and one
    test file are needed (a subset of the release loads too)."""
    problems = [f"no ply_data_{s}*.h5" for s in ("train", "test") if not _modelnet_h5(data_dir, s)]
    names = data_dir / "shape_names.txt"
    if not names.is_file():
        problems.append("missing shape_names.txt")
    elif len(names.read_text().split()) != 40:
        problems.append("shape_names.txt does not list 40 classes")
    for path in _modelnet_h5(data_dir, "train") + _modelnet_h5(data_dir, "test"):
        try:
            with h5py.File(path, "r") as f:
                d, l = f["data"].shape, f["label"].shape
        except (OSError, KeyError) as e:
            problems.append(f"unreadable {path.name} ({e})")
            continue
        if len(d) != 3 or d[2] != 3 or l[0] != d[0] or np.prod(l) != d[0]:
            problems.append(f"{path.name}: data {d}, label {l}; expected (n, P, 3), (n, 1)")
    return problems


def load_modelnet40(data_dir="data/modelnet40_ply_hdf5_2048", download=True, url=MODELNET_URL):
    """The real ModelNet40 release -> {'train_points': (N, 2048, 3) float32, 'train_labels':
    (N,) int64, 'test_points', 'test_labels', 'class_names': 40 str, 'synthetic': False}, all
    ply_data_train*.h5 / ply_data_test*.h5 concatenated in sorted order (numpy arrays)."""
    data_dir = Path(data_dir)
    wanted = re.compile(r"ply_data_(train|test)\d*\.h5|shape_names\.txt").fullmatch
    _ensure_release("ModelNet40", data_dir, download, url, "modelnet40_ply_hdf5_2048.zip",
                    MODELNET_FILES, wanted, _check_modelnet)
    out = {"class_names": (data_dir / "shape_names.txt").read_text().split(), "synthetic": False}
    for split in ("train", "test"):
        points, labels = [], []
        for path in _modelnet_h5(data_dir, split):
            with h5py.File(path, "r") as f:
                points.append(f["data"][:].astype(np.float32))
                labels.append(f["label"][:].reshape(-1).astype(np.int64))
        out[f"{split}_points"] = np.concatenate(points)                       # (N, 2048, 3)
        out[f"{split}_labels"] = np.concatenate(labels)                       # (N,)
    return out


def pointcloud_batches(points, labels, batch_size, num_points=1024, train=False,
                       generator=None, drop_last=None):
    """Yield (points (B, P, 3) float32, labels (B,) int64) tensors, as DGCNN's data loader.

    Each cloud keeps its first num_points points. With train=True the cloud order is shuffled
    and every cloud is augmented (DGCNN): per-axis scale U[2/3, 3/2], shift U[-0.2, 0.2], then
    its points shuffled; all random draws come from the torch generator. drop_last defaults
    to train. Test batches are the clouds unchanged, in order."""
    points, labels = torch.as_tensor(points), torch.as_tensor(labels).long().view(-1)
    if num_points > points.size(1):
        raise ValueError(f"num_points={num_points}, but the clouds have {points.size(1)} points")
    drop_last = train if drop_last is None else drop_last
    n = points.size(0)
    order = torch.randperm(n, generator=generator) if train else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        if drop_last and len(idx) < batch_size:
            return
        pts = points[idx, :num_points].float()                                   # (B, P, 3)
        if train:
            B = len(idx)
            scale = torch.rand(B, 1, 3, generator=generator) * (3 / 2 - 2 / 3) + 2 / 3
            shift = torch.rand(B, 1, 3, generator=generator) * 0.4 - 0.2
            perm = torch.rand(B, num_points, generator=generator).argsort(1)      # (B, P)
            pts = (pts * scale + shift).gather(1, perm.unsqueeze(-1).expand(-1, -1, 3))
        yield pts, labels[idx]


# ----------------------------------------------------------------------------------------
# Synthetic ModelNet40: 40 shape classes sampled on triangle meshes

_V = np.linspace(0, 1, 17)


def _grid_tris(p):
    """Triangles (T, 3, 3) of a grid of surface points p (U, V, 3)."""
    a, b, c, d = p[:-1, :-1], p[1:, :-1], p[1:, 1:], p[:-1, 1:]    # (U-1, V-1, 3) cell corners
    return np.concatenate([np.stack([a, b, c], -2), np.stack([a, c, d], -2)]).reshape(-1, 3, 3)


def _revolve(rho, z, shift=(0, 0, 0), segments=32):
    """Triangles of the surface of revolution about z of the profile (rho(v), z(v))."""
    t = np.linspace(0, 2 * np.pi, segments + 1)[:, None]                      # (U, 1)
    p = np.stack(np.broadcast_arrays(rho * np.cos(t), rho * np.sin(t), z + 0 * t), -1)  # (U, V, 3)
    return _grid_tris(p) + shift


def _sphere(r, shift=(0, 0, 0), top=np.pi):
    return _revolve(r * np.sin(top * _V), r * np.cos(top * _V), shift)


def _disc(r, z=0.0, shift=(0, 0, 0)):
    return _revolve(r * _V, z + 0 * _V, shift)


def _cylinder(r, h, shift=(0, 0, 0), r_top=None, caps=(True, True)):
    """Side of a cylinder (or a frustum up to radius r_top) from z = -h/2 to h/2, with caps."""
    r_top = r if r_top is None else r_top
    parts = [_revolve(r + (r_top - r) * _V, h * (_V - 0.5), shift)]
    ends = ((r, -h / 2, caps[0]), (r_top, h / 2, caps[1]))
    parts += [_disc(rc, zc, shift) for rc, zc, cap in ends if cap and rc > 0]
    return np.concatenate(parts)


def _torus(R, r, shift=(0, 0, 0)):
    t = np.linspace(0, 2 * np.pi, 33)[:, None]                                      # (U, 1)
    ring = np.stack([np.cos(t), np.sin(t), 0 * t], -1)                        # (U, 1, 3)
    phi = 2 * np.pi * _V[None, :, None]                                       # (1, V, 1)
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
    n1 = np.cross(t, np.where(np.abs(t[:, 2:]) < 0.9, [0, 0, 1.0], [1.0, 0, 0]))
    n1 /= np.linalg.norm(n1, axis=1, keepdims=True)
    n2 = np.cross(t, n1)
    phi = 2 * np.pi * np.linspace(0, 1, 9)[None, :, None]                     # (1, V, 1)
    return _grid_tris(c[:, None] + r * (np.cos(phi) * n1[:, None] + np.sin(phi) * n2[:, None]))


def _height_field(f):
    """Triangles of the sheet z = f(x, y) over [-1, 1]²."""
    x, y = np.meshgrid(np.linspace(-1, 1, 25), np.linspace(-1, 1, 25), indexing="ij")
    return _grid_tris(np.stack([x, y, f(x, y)], -1))                          # (25, 25, 3)


_S = np.linspace(0, 1, 129)[:, None]  # curve parameter (U, 1)
_TETRA = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1.0]])
_OCTA = np.concatenate([np.eye(3), -np.eye(3)])

def _union(*parts):
    return np.concatenate(parts)


_CORNERS = list(itertools.product((-1, 1), repeat=2))
_OPEN = (False, False)

# class name -> u -> triangles, u(lo, hi) a uniform draw for this cloud's proportions. Some
# pairs are close on purpose (sphere/ellipsoid, cylinder/tube, disc/plate, table/chair, ...).
_SHAPES = {
    "sphere": lambda u: _sphere(1.0),
    "ellipsoid": lambda u: _sphere(1.0) * (1, u(0.55, 0.75), u(0.35, 0.55)),
    "cube": lambda u: _box(1, 1, 1),
    "cuboid": lambda u: _box(1, u(0.5, 0.7), u(0.2, 0.4)),
    "cylinder": lambda u: _cylinder(0.5, u(1.2, 1.6)),
    "tube": lambda u: _cylinder(0.5, u(1.2, 1.6), caps=_OPEN),
    "cone": lambda u: _cylinder(0.6, u(1.2, 1.6), r_top=0.0),
    "frustum": lambda u: _cylinder(0.7, u(0.8, 1.1), r_top=u(0.25, 0.4)),
    "bicone": lambda u: _union(_cylinder(0.7, h := u(0.6, 0.9), (0, 0, h / 2), 0.0, _OPEN),
                               _cylinder(0.0, h, (0, 0, -h / 2), 0.7, _OPEN)),
    "torus": lambda u: _torus(1.0, u(0.3, 0.4)),
    "thin_ring": lambda u: _torus(1.0, u(0.06, 0.1)),
    "hemisphere": lambda u: _union(_sphere(1.0, top=np.pi / 2), _disc(1.0)),
    "bowl": lambda u: _sphere(1.0, top=np.pi / 2) * (1, 1, -u(0.6, 1.0)),
    "capsule": lambda u: _union(_cylinder(0.4, h := u(1.0, 1.4), caps=_OPEN),
                                _sphere(0.4, (0, 0, h / 2), np.pi / 2),
                                _sphere(0.4, (0, 0, h / 2), np.pi / 2) * (1, 1, -1)),
    "disc": lambda u: _disc(1.0),
    "plate": lambda u: _height_field(lambda x, y: 0 * x) * (1, u(0.8, 1.0), 1),
    "tetrahedron": lambda u: _TETRA[list(itertools.combinations(range(4), 3))],
    "octahedron": lambda u: _OCTA[[[i, j + 1, k + 2]
                                   for i, j, k in itertools.product((0, 3), repeat=3)]],
    "pyramid": lambda u: _pyramid(u(1.2, 1.6)),
    "dumbbell": lambda u: _union(_sphere(0.4, (0, 0, 0.9)), _sphere(0.4, (0, 0, -0.9)),
                                 _cylinder(u(0.08, 0.12), 1.8, caps=_OPEN)),
    "two_spheres": lambda u: _union(_sphere(0.5, (0, 0, 0.5)),
                                    _sphere(r := u(0.35, 0.5), (0, 0, -r))),
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
    "helix": lambda u: _tube(np.hstack([np.cos(2 * np.pi * (t := u(2.5, 3.5)) * _S),
                                        np.sin(2 * np.pi * t * _S), 2 * _S - 1]), 0.1),
    "spiral": lambda u: _tube(np.hstack([(0.2 + _S) * np.cos(2 * np.pi * (t := u(2, 3)) * _S),
                                         (0.2 + _S) * np.sin(2 * np.pi * t * _S), 0 * _S]), 0.06),
    "table": lambda u: _union(_box(1.6, 1.0, 0.08, (0, 0, 0.5)), *[
        _box(0.08, 0.08, 1.0, (0.7 * sx, 0.4 * sy, 0)) for sx, sy in _CORNERS]),
    "chair": lambda u: _union(_box(1.0, 1.0, 0.08), _box(1.0, 0.08, u(0.8, 1.1), (0, 0.46, 0.5)), *[
        _box(0.08, 0.08, 1.0, (0.45 * sx, 0.45 * sy, -0.5)) for sx, sy in _CORNERS]),
    "stairs": lambda u: _union(*[_box(0.25, 1.0, h, (0.25 * i, 0, h / 2))
                                 for i, h in enumerate(0.25 * np.arange(1, int(u(4, 6))))]),
    "arch": lambda u: _tube(np.hstack([np.cos(np.pi * _S), 0 * _S,
                                       u(0.8, 1.2) * np.sin(np.pi * _S)]), 0.15),
    "mushroom": lambda u: _union(_sphere(0.7, (0, 0, 0.3), np.pi / 2), _disc(0.7, 0.3),
                                 _cylinder(u(0.12, 0.2), 0.8, (0, 0, -0.1))),
    "cup": lambda u: _union(_cylinder(0.5, 1.0, caps=(True, False)), _tube(np.hstack(
        [0.5 + u(0.2, 0.3) * np.sin(np.pi * _S), 0 * _S, 0.25 * np.cos(np.pi * _S)]), 0.05)),
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
    (any turn about the vertical axis z, tilt up to 0.15 rad), noise σ = 0.01, normalised."""
    tris = shape(rng.uniform)                                                 # (T, 3, 3)
    area = 0.5 * np.linalg.norm(np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0]), axis=1)
    cum = np.cumsum(area)                                                     # (T,)
    t = tris[np.minimum(np.searchsorted(cum, rng.random(num_points) * cum[-1], "right"),
                        len(tris) - 1)]                                       # (P, 3, 3)
    r1, r2 = np.sqrt(rng.random((num_points, 1))), rng.random((num_points, 1))
    p = (1 - r1) * t[:, 0] + r1 * (1 - r2) * t[:, 1] + r1 * r2 * t[:, 2]      # (P, 3)
    a, b = rng.uniform(0, 2 * np.pi), rng.uniform(-0.15, 0.15)
    turn = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    tilt = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    p = _normalise(p * rng.uniform(0.8, 1.25, size=3)) @ (turn @ tilt).T
    return _normalise(p + 0.01 * rng.normal(size=p.shape))


def synthetic_modelnet40(num_train_per_class=20, num_test_per_class=5, num_points=1024, seed=0):
    """A synthetic stand-in for ModelNet40, laid out as load_modelnet40 (numpy arrays) with
    'synthetic': True and class names 'synthetic_<shape>'. Clouds store max(2048, num_points)
    points like the release (2048), so pointcloud_batches picks the first num_points the same
    way; the points of a cloud are in random order. Deterministic by seed."""
    rng = np.random.default_rng(seed)
    shapes = list(_SHAPES.values())
    P = max(2048, num_points)
    out = {"class_names": [f"synthetic_{name}" for name in _SHAPES], "synthetic": True}
    for split, per_class in (("train", num_train_per_class), ("test", num_test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(len(shapes)), per_class))     # (N,)
        out[f"{split}_points"] = np.stack(
            [_synthetic_cloud(shapes[c], P, rng) for c in labels]).astype(np.float32)  # (N, P, 3)
        out[f"{split}_labels"] = labels.astype(np.int64)
    return out
