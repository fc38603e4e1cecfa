"""The paper's datasets (Sec. 4), read from their published files, downloaded when missing:

- PPI node classification (Sec. 4.1): ppi.zip as DGL and PyG release it, one Graph per tissue
  (20 train, 2 valid, 2 test graphs).
- ModelNet40 recognition (Sec. 4.2): modelnet40_ply_hdf5_2048, with DGCNN's point sampling and
  training augmentation.
The synthetic stand-ins for machines without them are in synthetic.py.
Graphs: edge_index (2, E), column e = (j, i), source j, target (centre) i.
N nodes, E edges, F features (50), L labels (121), B clouds, P points per cloud."""
import contextlib
import http.client
import json
import os
import shutil
import sys
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import h5py
import numpy as np
import torch

PPI_URL = "https://data.dgl.ai/dataset/ppi.zip"  # where DGL and PyG download it from
PPI_SPLITS = ("train", "valid", "test")
PPI_FILES = [f"{s}_{f}" for s in PPI_SPLITS
             for f in ("graph.json", "feats.npy", "labels.npy", "graph_id.npy")]
PPI_FEATURES, PPI_LABELS = 50, 121
# The original host (shapenet.cs.stanford.edu) is gone; this is the mirror PyG downloads from
MODELNET_URL = ("https://huggingface.co/datasets/Msun/modelnet40/resolve/main/"
                "modelnet40_ply_hdf5_2048.zip")
MODELNET_CLASSES = 40
MAX_VALUE = 1e6  # bound on a feature or coordinate: the real data lie far below it,
                 # and values near 1e19 overflow float32 once squared
AUG_SCALE, AUG_SHIFT = (2 / 3, 3 / 2), 0.2  # DGCNN's augmentation: scale U[2/3, 3/2], shift


class DataError(Exception):
    """Data missing or malformed; the message is the whole explanation for the user."""


def fetch(folder, wanted, url):
    """Download the zip at url into folder (a zip already there is used as it is) and unpack
    the members whose file name wanted(name) accepts, from any folder of the zip. DataError
    with what to do by hand when that fails."""
    folder = Path(folder)
    zip_path = folder / PurePosixPath(url).name
    downloaded = not zip_path.is_file()  # then removed once unpacked
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if downloaded:
            print(f"downloading {url} ...", file=sys.stderr, flush=True)
            part = folder / f".{zip_path.name}.part"
            with urllib.request.urlopen(url, timeout=30) as r, open(part, "wb") as f:
                shutil.copyfileobj(r, f)
            os.replace(part, zip_path)
        with zipfile.ZipFile(zip_path) as zf:
            for info in zf.infolist():
                name = PurePosixPath(info.filename).name
                if not info.is_dir() and wanted(name):  # written whole, then renamed
                    with zf.open(info) as src, open(folder / f".{name}.part", "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    os.replace(folder / f".{name}.part", folder / name)
    except (OSError, zipfile.BadZipFile, EOFError, ValueError, zlib.error,
            http.client.HTTPException) as e:
        raise DataError(
            f"the data is not in {folder.resolve()}, and downloading or unpacking {url} "
            f"failed: {e}\nTo install it by hand, put that zip at {zip_path.resolve()}, or "
            f"unpack its files into {folder.resolve()}.\nTo run without it: --data "
            f"synthetic (a generated stand-in, not the paper's data)") from e
    finally:  # nothing half-written stays, nor a zip downloaded here
        for leftover in [*folder.glob(".*.part"), *([zip_path] if downloaded else [])]:
            with contextlib.suppress(OSError):
                os.remove(leftover)


def _bad(path, what):
    return DataError(f"{path} {what}; delete it to download a fresh copy")


# PPI (Sec. 4.1) --------------------------------------------------------------------------
class Graph(NamedTuple):
    x: torch.Tensor           # (N, F) float32 node features
    y: torch.Tensor           # (N, L) float32 0/1 labels
    edge_index: torch.Tensor  # (2, E) int64 local ids, row 0 = source j, row 1 = target i
    batch: torch.Tensor       # (N,) int64 graph of each node within a batch

    def to(self, device):
        return Graph(*(t.to(device) for t in self))


def _read_npy(path, shape):
    """A .npy file of numbers of the given shape (None: any length)."""
    try:
        with open(path, "rb") as f:  # else np.load takes it for a pickle
            if f.read(6) != b"\x93NUMPY":
                raise _bad(path, "is not a .npy file (no NumPy header)")
        a = np.load(path)
    except (OSError, ValueError, EOFError) as e:
        raise _bad(path, f"cannot be read ({str(e).split('. ')[0]})") from e
    if a.dtype.kind not in "biuf" or len(a.shape) != len(shape) or any(
            n is not None and n != m for n, m in zip(shape, a.shape)):
        raise _bad(path, f"holds {a.dtype} of shape {a.shape}, expected numbers of shape "
                         f"{tuple('N' if n is None else n for n in shape)}")
    return a


def _read_ppi_split(folder, split):
    """One split -> [Graph], one per graph id in ascending order: local node ids in the order
    of the global ids, edges across graphs and duplicates dropped, sorted by target, then
    source (the real files have no self-loops; they are kept if present)."""
    path = folder / f"{split}_graph.json"
    gid = _read_npy(folder / f"{split}_graph_id.npy", (None,)).astype(np.int64)
    N = len(gid)
    if N == 0:
        raise _bad(folder / f"{split}_graph_id.npy", "holds no node: the split is empty")
    x = _read_npy(folder / f"{split}_feats.npy", (N, PPI_FEATURES))
    y = _read_npy(folder / f"{split}_labels.npy", (N, PPI_LABELS))
    try:
        with open(path) as f:
            g = json.load(f)
        links = g["links"] if "links" in g else g["edges"]  # newer networkx writes "edges"
        ids, src, dst = (np.array(v, dtype=np.int64 if len(v) == 0 else None) for v in (
            [n["id"] for n in g["nodes"]], [e["source"] for e in links],
            [e["target"] for e in links]))
        if any(a.ndim != 1 or a.dtype.kind not in "iu" for a in (ids, src, dst)):
            raise ValueError("node ids must be integers")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise _bad(path, f"is not networkx node-link JSON ({e})") from e
    if not np.array_equal(np.sort(ids), np.arange(N)):
        raise _bad(path, f"does not hold the nodes 0..{N - 1}, the rows of {split}_feats.npy")
    if len(src) and not 0 <= min(src.min(), dst.min()) <= max(src.max(), dst.max()) < N:
        raise _bad(path, f"has a link to a node outside 0..{N - 1}")
    for name, a, bad, rule in (("labels", y, (y != 0) & (y != 1), "labels are 0 or 1"),
                               ("feats", x, ~(np.abs(x) < MAX_VALUE), "features are finite "
                                f"and below {MAX_VALUE:g}")):
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise _bad(folder / f"{split}_{name}.npy",
                       f"holds {a[r, c]} at row {r}, column {c}; PPI's {rule}")
    if not y.any():
        raise _bad(folder / f"{split}_labels.npy", "holds no label 1: nothing to learn or score")
    order = np.argsort(gid, kind="stable")                 # (N,) nodes grouped by graph
    _, counts = np.unique(gid, return_counts=True)
    offsets = np.concatenate([[0], np.cumsum(counts)])     # (G+1,) start of each graph
    pos = np.empty(N, dtype=np.int64)
    pos[order] = np.arange(N)                              # position of each node in order
    same = gid[src] == gid[dst]
    key = np.unique(pos[dst[same]] * N + pos[src[same]])   # (E,) sorted by target, unique
    bounds = np.searchsorted(key, offsets * N)             # (G+1,) edge range of each graph
    graphs = []
    for g in range(len(counts)):
        k, o, nodes = key[bounds[g]:bounds[g + 1]], offsets[g], order[offsets[g]:offsets[g + 1]]
        if len(k) == 0:  # a GAT learns nothing from a graph without edges
            raise _bad(path, f"has no link within graph {np.unique(gid)[g]}")
        graphs.append(Graph(torch.as_tensor(x[nodes], dtype=torch.float32),
                            torch.as_tensor(y[nodes], dtype=torch.float32),
                            torch.as_tensor(np.stack([k % N - o, k // N - o])),  # (2, E_g)
                            torch.zeros(len(nodes), dtype=torch.long)))
    return graphs


def load_ppi(data_dir="data/ppi", url=PPI_URL):
    """The real PPI release -> {'train': [20 Graph], 'valid': [2], 'test': [2]}."""
    folder = Path(data_dir)
    if not all((folder / f).is_file() for f in PPI_FILES):
        fetch(folder, set(PPI_FILES).__contains__, url)
    missing = [f for f in PPI_FILES if not (folder / f).is_file()]
    if missing:
        raise DataError(f"{url} did not hold the PPI files {', '.join(missing)}")
    return {s: _read_ppi_split(folder, s) for s in PPI_SPLITS}


def batch_graphs(graphs):
    """Disjoint union of graphs: nodes stacked, edge ids offset, batch = graph index."""
    counts = torch.tensor([len(g.x) for g in graphs], device=graphs[0].x.device)
    offsets = torch.cumsum(counts, 0) - counts                                  # (G,)
    return Graph(torch.cat([g.x for g in graphs]), torch.cat([g.y for g in graphs]),
                 torch.cat([g.edge_index + o for g, o in zip(graphs, offsets)], 1),  # (2, ΣE)
                 torch.repeat_interleave(torch.arange(len(graphs), device=counts.device),
                                         counts))                               # (ΣN,)


def ppi_batches(graphs, batch_size, generator=None):
    """Yield (the graphs' indices, their batch_graphs), batch_size graphs at a time in an
    order shuffled by the torch generator; the last batch may be smaller."""
    order = torch.randperm(len(graphs), generator=generator).tolist()
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield idx, batch_graphs([graphs[i] for i in idx])


# ModelNet40 (Sec. 4.2) -------------------------------------------------------------------
def load_modelnet40(data_dir="data/modelnet40_ply_hdf5_2048", url=MODELNET_URL):
    """The modelnet40_ply_hdf5_2048 release, or a folder laid out like it (every
    ply_data_train*.h5 and ply_data_test*.h5 in it, in name order) -> {'train_points': (N, P,
    3) float32, 'train_labels': (N,) int64, 'test_points', 'test_labels', 'class_names'}."""
    folder = Path(data_dir)
    if not (folder / "shape_names.txt").is_file():
        fetch(folder, lambda n: n == "shape_names.txt" or n.startswith("ply_data_") and
              n.endswith(".h5"), url)
    if not (folder / "shape_names.txt").is_file():
        raise DataError(f"{url} did not hold the release's shape_names.txt")
    names = (folder / "shape_names.txt").read_text().split()
    if len(names) != MODELNET_CLASSES:
        raise _bad(folder / "shape_names.txt", f"lists {len(names)} classes, not 40")
    out, first = {"class_names": names}, None
    for split in ("train", "test"):
        files = sorted(folder.glob(f"ply_data_{split}*.h5"))
        if not files:
            raise DataError(f"{folder.resolve()} has no ply_data_{split}*.h5 file; delete "
                            "shape_names.txt there to download the release again")
        points, labels = [], []
        for path in files:
            try:
                with h5py.File(path, "r") as f:
                    p, lab = f["data"][:].astype(np.float32), f["label"][:]
            except (OSError, KeyError, TypeError, ValueError) as e:
                raise _bad(path, f"cannot be read as the release's 'data' and 'label' ({e})")
            if lab.dtype.kind not in "iu":
                raise _bad(path, f"holds labels of type {lab.dtype}, not integers")
            if p.ndim != 3 or p.shape[2] != 3 or lab.size != len(p):
                raise _bad(path, f"holds data {p.shape} and labels {lab.shape}, expected (n, P, "
                                 "3) and (n, 1)")
            if not ((0 <= lab) & (lab < MODELNET_CLASSES)).all() or not (abs(p) < MAX_VALUE).all():
                raise _bad(path, f"holds labels outside 0..39, or coordinates not below "
                                 f"{MAX_VALUE:g} (the release's lie in the unit sphere)")
            first = first or (path.name, p.shape[1])  # every file: as many points a cloud
            if p.shape[1] != first[1]:
                raise _bad(path, f"holds clouds of {p.shape[1]} points, {first[0]} of {first[1]}")
            points.append(p)
            labels.append(lab.reshape(-1).astype(np.int64))
        if not sum(map(len, points)):
            raise DataError(f"the ply_data_{split}*.h5 files in {folder.resolve()} hold no cloud")
        out[f"{split}_points"] = np.concatenate(points)                   # (N, P, 3)
        out[f"{split}_labels"] = np.concatenate(labels)                   # (N,)
    return out


def balanced_subset(ds, per_class, seed=0):
    """ds with a fixed draw of per_class training clouds of every class (all of a class that
    has fewer), in file order; the test clouds stay. -> (ds, [the classes that have fewer])"""
    rng, picked, fewer = np.random.default_rng(seed), [], []
    for c, name in enumerate(ds["class_names"]):
        idx = np.flatnonzero(ds["train_labels"] == c)
        fewer += [name] if len(idx) < per_class else []
        picked.append(rng.choice(idx, min(per_class, len(idx)), replace=False))
    keep = np.sort(np.concatenate(picked))
    return {**ds, "train_points": ds["train_points"][keep],
            "train_labels": ds["train_labels"][keep]}, fewer


def pointcloud_batches(points, labels, batch_size, num_points=1024, train=False, generator=None):
    """Yield (points (B, P, 3) float32, labels (B,) int64), as DGCNN's loader: each cloud's
    first num_points points. train=True: the clouds shuffled, each augmented (per-axis scale
    U[2/3, 3/2], shift U[-0.2, 0.2], its points shuffled; all drawn from the torch generator),
    and the last incomplete batch dropped. Otherwise the clouds unchanged, in order."""
    points, labels = torch.as_tensor(points), torch.as_tensor(labels).long().view(-1)
    if points.dim() != 3 or len(labels) != len(points) or not 0 < num_points <= points.size(1):
        raise ValueError(f"points must be (N, P, 3) with N labels and P >= num_points = "
                         f"{num_points}, got {tuple(points.shape)} and {len(labels)} labels")
    n = points.size(0)
    order = torch.randperm(n, generator=generator) if train else torch.arange(n)
    for start in range(0, n - batch_size + 1 if train else n, batch_size):
        idx = order[start:start + batch_size]
        pts = points[idx, :num_points].float()                                 # (B, P, 3)
        if train:
            B, (lo, hi) = len(idx), AUG_SCALE
            scale = torch.rand(B, 1, 3, generator=generator) * (hi - lo) + lo    # (B, 1, 3)
            shift = torch.rand(B, 1, 3, generator=generator) * (2 * AUG_SHIFT) - AUG_SHIFT
            perm = torch.rand(B, num_points, generator=generator).argsort(1)     # (B, P)
            pts = (pts * scale + shift).gather(1, perm.unsqueeze(-1).expand(-1, -1, 3))
        yield pts, labels[idx]
