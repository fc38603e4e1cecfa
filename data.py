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
                raise DataError(f"{zip_name} is not the expected release: "
                                f"{'; '.join(f'{n} {why}' for n, why in problems)}")
            for f in Path(tmp).iterdir():
                os.replace(f, data_dir / f.name)
    finally:
        if downloaded:
            zip_path.unlink(missing_ok=True)


MISSING = "not found"         # a check's complaint about a file that is not there


def _headline(what, data_dir, problems, files):
    """The first line of a DataError from a check's [(file name, complaint)]: what is wrong
    with each file that is there, else the files of the release (files) not found."""
    missing = [n for n, why in problems if why == MISSING]
    wrong = [f"{data_dir / n} {why.rstrip('.')}" for n, why in problems if why != MISSING]
    if wrong:
        return "; ".join(wrong + ([f"{', '.join(missing)} {MISSING}"] if missing else [])) + "."
    where = data_dir.resolve()
    if any((data_dir / n).is_file() for n in files):
        return f"{what} data in {where} is incomplete: {', '.join(missing)} {MISSING}."
    return f"{what} data {MISSING} in {where}: missing {', '.join(missing)}."


def _ensure_release(what, data_dir, download, url, zip_name, manual_files, wanted, check):
    """Return when check(data_dir) finds no problem, downloading first if allowed; otherwise
    raise one DataError whose first line says what is wrong (the files not found, or what is
    wrong with a file), then why no download mended it, the URL, where to put the files by
    hand and how to run without them. Nothing half-written is left behind."""
    if data_dir.exists() and not data_dir.is_dir():
        raise DataError(f"{data_dir} is not a folder: give the {what} data folder, or remove "
                        f"{data_dir} to download the release into it.")
    problems = check(data_dir)
    if not problems:
        return
    if not download:
        reason = "Downloading is switched off (download=False)."
    else:
        created = [p for p in (data_dir, *data_dir.parents) if not p.exists()]  # deepest first
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
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
        f"{_headline(what, data_dir, problems, manual_files)}\n"
        f"{reason}\n"
        f"The release is {url}; another URL can be given with --url (the scripts) or the "
        f"loader's url argument.\n"
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


def _check_ppi(folder):
    """Problems with the PPI files in folder, [(file name, complaint)], [] if none: files not
    found, or arrays that cannot be read or have the wrong shape or type (read without
    loading them)."""
    problems = [(n, MISSING) for n in PPI_FILES if not (folder / n).is_file()]
    for split in PPI_SPLITS if not problems else ():
        arrays = {}
        for n in ("graph_id", "feats", "labels"):
            path = folder / f"{split}_{n}.npy"
            try:
                with open(path, "rb") as f:  # else np.load takes it for a pickle
                    if f.read(6) != b"\x93NUMPY":
                        problems.append((path.name, "is not a .npy file (it does not start "
                                                    "with NumPy's header)"))
                        continue
                arrays[n] = np.load(path, mmap_mode="r")
            except (OSError, EOFError) as e:
                problems.append((path.name, f"cannot be read: {e}"))
            except ValueError as e:  # a broken header, Python objects: its first sentence
                problems.append((path.name, f"cannot be read: {str(e).split('. ')[0]}"))
        if len(arrays) < 3:
            continue
        gid = arrays.pop("graph_id")
        if gid.ndim != 1 or gid.dtype.kind not in "iu":
            problems.append((f"{split}_graph_id.npy", f"holds {gid.dtype} of shape {gid.shape}, "
                                                      f"expected integers of shape (N,)"))
            continue
        for (n, a), width in zip(arrays.items(), (PPI_NUM_FEATURES, PPI_NUM_LABELS)):
            if a.shape != (len(gid), width):
                problems.append((f"{split}_{n}.npy", f"has shape {a.shape}, expected "
                                 f"({len(gid)}, {width}): N = {len(gid)} nodes as in "
                                 f"{split}_graph_id.npy"))
            elif a.dtype.kind not in "biuf":
                problems.append((f"{split}_{n}.npy", f"holds {a.dtype}, expected numbers"))
    return problems


def _bad_file(path, what):
    return DataError(f"{path} {what}. Delete it and load again to download a fresh copy.")


def _ids(values):
    """Node ids from JSON -> (n,) int64; ValueError unless they are all integers."""
    ids = np.array(values)
    if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
        raise ValueError(f"node ids must be integers, got {ids.dtype} of shape {ids.shape}")
    return ids.astype(np.int64)


def _read_ppi_split(data_dir, split):
    """One split of the release -> list of Graph, one per graph id in ascending order.

    Local node ids follow the global ids; edges across graphs and duplicate edges are
    dropped; self-loops are kept if the file has them (the real files have none); edges are
    sorted by target, then source. DataError for links to nodes that do not exist, labels
    other than 0/1 and features that are not finite."""
    path = data_dir / f"{split}_graph.json"
    try:
        with open(path) as f:
            g = json.load(f)
        node_ids = _ids([n["id"] for n in g["nodes"]])
        links = g["links"] if "links" in g else g["edges"]  # newer networkx writes "edges"
        src, dst = (_ids([e[end] for e in links]) for end in ("source", "target"))
    except OSError as e:
        raise DataError(f"{path} cannot be read: {e}") from e
    except (ValueError, KeyError, TypeError) as e:
        raise _bad_file(path, f"is not networkx node-link JSON ({e!r})") from e
    x, y, gid = (np.load(data_dir / f"{split}_{n}.npy") for n in ("feats", "labels", "graph_id"))
    N = len(gid)
    if not np.array_equal(np.sort(node_ids), np.arange(N)):
        raise DataError(f"{path}: node ids must be 0..{N - 1}, the rows of {split}_feats.npy.")
    for end, ids in (("source", src), ("target", dst)):
        outside = np.flatnonzero((ids < 0) | (ids >= N))
        if outside.size:
            raise _bad_file(path, f"has a link (number {outside[0]}) whose {end} is node "
                                  f"{ids[outside[0]]}, but the {split} nodes are 0..{N - 1}")
    for name, a, bad, expected in (("labels", y, (y != 0) & (y != 1), "labels are 0 or 1"),
                                   ("feats", x, ~np.isfinite(x), "features are finite")):
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise _bad_file(data_dir / f"{split}_{name}.npy",
                            f"holds {a[r, c]} at row {r}, column {c}; PPI's {expected}")
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
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
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
# a subset laid out as the release, one file per split (as the tests' and derived subsets are)
MODELNET_SUBSET = ["ply_data_train0.h5", "ply_data_test0.h5", "shape_names.txt"]
MODELNET_NUM_CLASSES = 40
AUG_SCALE = (2 / 3, 3 / 2)   # DGCNN's training augmentation: per-axis scale U[2/3, 3/2]
AUG_SHIFT = 0.2              # and shift U[-0.2, 0.2]


def _modelnet_h5(folder, split):
    """The split's h5 files of the release that are in folder, in the release's order."""
    return [folder / n for n in MODELNET_FILES
            if n.startswith(f"ply_data_{split}") and (folder / n).is_file()]


def _check_modelnet(folder):
    """Problems with the ModelNet40 files in folder, [(file name, complaint)], [] if none.
    The whole release is needed, or a one-file-per-split subset (MODELNET_SUBSET); then each
    file's shapes and types are read, without loading the points."""
    present = {n for n in MODELNET_FILES if (folder / n).is_file()}
    subset = {n for n in present if n.endswith(".h5")} == set(MODELNET_SUBSET[:2])
    problems = [(n, MISSING) for n in (MODELNET_SUBSET if subset else MODELNET_FILES)
                if n not in present]
    if problems:
        return problems
    try:
        names = (folder / "shape_names.txt").read_text().split()
    except (OSError, ValueError) as e:
        problems.append(("shape_names.txt", f"cannot be read: {e}"))
    else:
        if len(names) != MODELNET_NUM_CLASSES:
            problems.append(("shape_names.txt", f"lists {len(names)} class names, expected "
                                                f"{MODELNET_NUM_CLASSES}"))
    points = {}                                           # file name -> P
    for path in _modelnet_h5(folder, "train") + _modelnet_h5(folder, "test"):
        try:
            with h5py.File(path, "r") as f:
                found = {k: (f[k].shape, f[k].dtype) for k in ("data", "label")
                         if isinstance(f.get(k), h5py.Dataset)}
        except OSError as e:
            problems.append((path.name, f"cannot be read: {e}"))
            continue
        if len(found) < 2:
            problems.append((path.name, "lacks the 'data' and 'label' datasets of the release"))
            continue
        (d, d_type), (l, l_type) = found["data"], found["label"]
        if len(d) != 3 or d[2] != 3:
            problems.append((path.name, f"has data of shape {d}, expected (n, P, 3)"))
        elif l not in ((d[0],), (d[0], 1)):
            problems.append((path.name, f"has labels of shape {l} for {d[0]} clouds, expected "
                                        f"({d[0]}, 1)"))
        elif d_type.kind not in "iuf" or l_type.kind not in "iu":
            problems.append((path.name, f"has data of type {d_type} and labels of type "
                                        f"{l_type}, expected numbers and integer labels"))
        else:
            points[path.name] = d[1]
    if len(set(points.values())) > 1:
        first, *_ = points
        problems += [(n, f"has {P} points per cloud, {first} {points[first]}")
                     for n, P in points.items() if P != points[first]]
    return problems


def load_modelnet40(data_dir="data/modelnet40_ply_hdf5_2048", download=True, url=MODELNET_URL):
    """The real ModelNet40 release -> {'train_points': (N, 2048, 3) float32, 'train_labels':
    (N,) int64, 'test_points', 'test_labels', 'class_names': 40 str, 'synthetic': False,
    'subset': bool, 'files': the h5 files read}, the h5 files of each split concatenated in
    order. data_dir holds the whole release
    (MODELNET_FILES) or a subset of one file per split (MODELNET_SUBSET); anything else, labels
    outside 0..39 and points that are not finite raise DataError."""
    data_dir = Path(data_dir)
    wanted = re.compile(r"ply_data_(train|test)\d*\.h5|shape_names\.txt").fullmatch
    _ensure_release("ModelNet40", data_dir, download, url, "modelnet40_ply_hdf5_2048.zip",
                    MODELNET_FILES, wanted, _check_modelnet)
    files = [p.name for s in ("train", "test") for p in _modelnet_h5(data_dir, s)]
    out = {"class_names": (data_dir / "shape_names.txt").read_text().split(), "synthetic": False,
           "subset": len(files) < len(MODELNET_FILES) - 1, "files": files}
    for split in ("train", "test"):
        points, labels = [], []
        for path in _modelnet_h5(data_dir, split):
            with h5py.File(path, "r") as f:
                points.append(f["data"][:].astype(np.float32))                 # (n, P, 3)
                labels.append(f["label"][:].reshape(-1).astype(np.int64))     # (n,)
            outside = np.flatnonzero((labels[-1] < 0) | (labels[-1] >= len(out["class_names"])))
            if outside.size:
                raise _bad_file(path, f"holds label {labels[-1][outside[0]]} (cloud "
                                      f"{outside[0]}), but the classes are 0.."
                                      f"{len(out['class_names']) - 1}, the lines of "
                                      f"shape_names.txt")
            if not np.isfinite(points[-1]).all():
                raise _bad_file(path, "holds points that are not finite (NaN or inf)")
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
    if points.dim() != 3 or len(labels) != len(points):
        raise ValueError(f"points must be (N, P, 3) with N labels, got {tuple(points.shape)} "
                         f"and {len(labels)} labels")
    if not 0 < num_points <= points.size(1):
        raise ValueError(f"num_points={num_points}, but the clouds have {points.size(1)} points")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
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
