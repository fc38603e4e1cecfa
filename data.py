"""Datasets of the paper's two experiments (Sec. 4 of "Distilling Knowledge from Graph
Convolutional Networks", Yang et al., CVPR 2020): the real releases, and batching.

- PPI node classification (Sec. 4.1, Tables 1-2): the files of ppi.zip as DGL and PyG release
  them, read into one Graph per tissue (20 train, 2 valid, 2 test graphs).
- ModelNet40 recognition (Sec. 4.2, Tables 3-6): the modelnet40_ply_hdf5_2048 release, and
  DGCNN's point sampling and training augmentation.
- synthetic_ppi / synthetic_modelnet40: the offline stand-ins of synthetic.py, re-exported
  here. Every dataset dict carries 'synthetic': True/False so that scripts can label their
  output; synthetic data never replaces real data silently.

Graphs are edge_index tensors (2, E): edge_index[:, e] = (j, i), source j, target (centre) i.
Dimensions: N nodes, E edges, F features (50), L labels (121), B batch, P points per cloud.
"""
import contextlib
import http.client
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
import torch

# the synthetic stand-ins live in synthetic.py; data.synthetic_ppi and
# data.synthetic_modelnet40 are the names the scripts use
from synthetic import synthetic_modelnet40, synthetic_ppi  # noqa: F401


class DataError(Exception):
    """Data missing or malformed; the message is a complete explanation for the user."""


# ----------------------------------------------------------------------------------------
# Download: temp file renamed when complete, extraction into a temp folder, check, move in

MIB = 2 ** 20               # bytes: the download's chunk size and its progress unit
TIMEOUT_S = 30              # seconds without an answer before a download fails


def _download(url, dest):
    """Stream url to dest, printing progress to stderr; dest appears only when complete."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            total, done = int(response.headers.get("Content-Length") or 0), 0
            while chunk := response.read(MIB):
                f.write(chunk)
                done += len(chunk)
                size = f"{done / MIB:.1f} MiB" + (
                    f" / {total / MIB:.1f} MiB ({100 * done / total:.0f}%)" if total else "")
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
# ModelNet40 (Sec. 4.2)

# The original host (shapenet.cs.stanford.edu) is gone; this is the mirror PyG's ModelNet40
# loader downloads from. Pass url= to use another copy.
MODELNET_URL = ("https://huggingface.co/datasets/Msun/modelnet40/resolve/main/"
                "modelnet40_ply_hdf5_2048.zip")
MODELNET_FILES = ([f"ply_data_train{i}.h5" for i in range(5)]
                  + [f"ply_data_test{i}.h5" for i in range(2)] + ["shape_names.txt"])
MODELNET_NUM_CLASSES = 40
AUG_SCALE = (2 / 3, 3 / 2)   # DGCNN's training augmentation: per-axis scale U[2/3, 3/2]
AUG_SHIFT = 0.2              # and shift U[-0.2, 0.2]


def _modelnet_h5(data_dir, split):
    return sorted(data_dir.glob(f"ply_data_{split}*.h5"))


def _check_modelnet(data_dir):
    """Problems with the ModelNet40 files in data_dir, [] if none. At least one train and one
    test file are needed (a subset of the release loads too)."""
    problems = [f"no ply_data_{s}*.h5" for s in ("train", "test") if not _modelnet_h5(data_dir, s)]
    names = data_dir / "shape_names.txt"
    if not names.is_file():
        problems.append("missing shape_names.txt")
    elif len(names.read_text().split()) != MODELNET_NUM_CLASSES:
        problems.append(f"shape_names.txt does not list {MODELNET_NUM_CLASSES} classes")
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
            lo, hi = AUG_SCALE
            scale = torch.rand(B, 1, 3, generator=generator) * (hi - lo) + lo     # (B, 1, 3)
            shift = torch.rand(B, 1, 3, generator=generator) * (2 * AUG_SHIFT) - AUG_SHIFT
            perm = torch.rand(B, num_points, generator=generator).argsort(1)      # (B, P)
            pts = (pts * scale + shift).gather(1, perm.unsqueeze(-1).expand(-1, -1, 3))
        yield pts, labels[idx]
