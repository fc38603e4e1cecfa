"""Tests of data.py and synthetic.py: the loaders on tiny fake releases written in the real
formats against slow references, zips fetched offline from file:// URLs, the failure
messages, the real data fragments (skipped when absent), batching and DGCNN's augmentation,
and the synthetic stand-ins."""
import json
import os
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import data
import synthetic

REAL_DATA = Path(os.environ.get("LSP_REAL_DATA",
                                Path(__file__).resolve().parent.parent.parent / "shared" / "data"))


def need_real(sub):
    if not (REAL_DATA / sub).is_dir():
        pytest.skip(f"real data not found in {REAL_DATA / sub}")
    return REAL_DATA / sub


# ----------------------------------------------------------------------------------------
# Fake releases in the real file formats

FAKE_PPI_SIZES = {"train": (5, 4, 6), "valid": (3, 4), "test": (4, 3)}


def write_fake_ppi(folder, graph_ids=None):
    """Write the 12 PPI files: graphs interleaved in node order, nodes listed shuffled, a
    duplicate link, a self-loop and a link across graphs; the test split under the "edges"
    key of newer networkx. graph_ids: {split: (N,) ids} instead of FAKE_PPI_SIZES.
    Returns {split: (graph_id, links)} for the slow reference."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    first_id, truth = 1, {}
    for split, sizes in FAKE_PPI_SIZES.items():
        if graph_ids is None:
            gid = rng.permutation(np.repeat(np.arange(len(sizes)) + first_id, sizes))
            first_id += len(sizes)
        else:
            gid = graph_ids[split]
        N, links = len(gid), []
        for g in np.unique(gid):                      # two links from each node, both ways
            nodes = np.flatnonzero(gid == g)
            a, b = np.repeat(nodes, 2), nodes[rng.integers(len(nodes), size=2 * len(nodes))]
            a, b = a[a != b].tolist(), b[a != b].tolist()
            links += list(zip(a, b)) + list(zip(b, a))
        links += [links[0], (1, 1), (0, int(np.flatnonzero(gid != gid[0])[0]))]
        graph = {"directed": True, "multigraph": False, "graph": {},
                 "nodes": [{"id": int(i), "test": False, "val": False} for i in rng.permutation(N)],
                 "edges" if split == "test" else "links":
                     [{"source": j, "target": i} for j, i in links]}
        (folder / f"{split}_graph.json").write_text(json.dumps(graph))
        np.save(folder / f"{split}_feats.npy", rng.normal(size=(N, 50)))
        np.save(folder / f"{split}_labels.npy", rng.integers(0, 2, size=(N, 121)))
        np.save(folder / f"{split}_graph_id.npy", gid)
        truth[split] = gid, links
    return truth


def write_fake_modelnet(folder, train=(3, 2, 1, 2, 1), test=(2, 1), P=64, compression=None):
    """h5 files in the release layout (train0-4, test0-1), labels in a random order; returns
    the points and labels of each split in loading order."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "shape_names.txt").write_text("".join(f"class{c}\n" for c in range(40)))
    out = {}
    for split, counts in (("train", train), ("test", test)):
        pts, lab = [], []
        for i, n in enumerate(counts):
            pts.append(rng.normal(size=(n, P, 3)).astype(np.float32))
            lab.append(rng.integers(0, 40, size=(n, 1)).astype(np.uint8))
            with h5py.File(folder / f"ply_data_{split}{i}.h5", "w") as f:
                f.create_dataset("data", data=pts[-1], compression=compression)
                f.create_dataset("label", data=lab[-1], compression=compression)
        out[split] = np.concatenate(pts), np.concatenate(lab).reshape(-1)
    return out


LOADERS = {"ppi": (data.load_ppi, write_fake_ppi),
           "modelnet": (data.load_modelnet40, write_fake_modelnet)}


def zip_folder(folder, zip_path, top="release"):
    """A zip of folder's files under a top folder, with a stray file besides; its URL."""
    with zipfile.ZipFile(zip_path, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"{top}/{f.name}")
        zf.writestr(f"{top}/README.txt", "not a data file")
    return zip_path.as_uri()


def assert_same(a, b):
    """Two loaded datasets are equal: dicts of lists of Graph, or of arrays and names."""
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            np.testing.assert_array_equal(a[k], b[k])
        elif a[k] and isinstance(a[k][0], data.Graph):
            assert len(a[k]) == len(b[k])
            assert all(torch.equal(u, v) for ga, gb in zip(a[k], b[k]) for u, v in zip(ga, gb))
        else:
            assert a[k] == b[k]


# ----------------------------------------------------------------------------------------
# Loaders against slow references

def test_load_ppi_matches_slow_reference(tmp_path):
    truth = write_fake_ppi(tmp_path)
    d = data.load_ppi(tmp_path)
    assert set(d) == set(data.PPI_SPLITS) and [len(d[s]) for s in data.PPI_SPLITS] == [3, 2, 2]
    for split, (gid, links) in truth.items():
        feats = np.load(tmp_path / f"{split}_feats.npy")
        labels = np.load(tmp_path / f"{split}_labels.npy")
        for g, graph in zip(np.unique(gid), d[split]):
            nodes = np.flatnonzero(gid == g)                      # local id = rank of global id
            local = {int(v): k for k, v in enumerate(nodes)}
            expected = {(local[j], local[i]) for j, i in links if j in local and i in local}
            pairs = list(zip(*graph.edge_index.tolist()))
            assert set(pairs) == expected and len(pairs) == len(expected)
            assert pairs == sorted(pairs, key=lambda e: (e[1], e[0]))
            assert graph.x.dtype == graph.y.dtype == torch.float32
            assert graph.edge_index.dtype == graph.batch.dtype == torch.int64
            assert torch.equal(graph.x, torch.tensor(feats[nodes], dtype=torch.float32))
            assert torch.equal(graph.y, torch.tensor(labels[nodes], dtype=torch.float32))
            assert torch.equal(graph.batch, torch.zeros(len(nodes), dtype=torch.long))


@pytest.mark.parametrize("train, test, P, compression", [
    ((3, 2, 1, 2, 1), (2, 1), 64, None), ((3,), (2,), 64, None),
    ((4, 3, 5, 2, 3), (3, 4), 1024, "gzip")])  # as the 1024-point copy of the release
def test_load_modelnet40_every_file_in_name_order(tmp_path, train, test, P, compression):
    truth = write_fake_modelnet(tmp_path, train, test, P, compression)
    d = data.load_modelnet40(tmp_path)
    assert d["class_names"] == [f"class{c}" for c in range(40)]
    for split in ("train", "test"):
        assert d[f"{split}_points"].dtype == np.float32 and d[f"{split}_labels"].dtype == np.int64
        np.testing.assert_array_equal(d[f"{split}_points"], truth[split][0])
        np.testing.assert_array_equal(d[f"{split}_labels"], truth[split][1])


@pytest.mark.parametrize("name", LOADERS)
def test_zip_downloaded_is_removed_placed_zip_kept(tmp_path, name):
    """From a zip with a top folder: only the release's files come out, the same data as the
    folder itself; a downloaded zip is removed, one placed in the folder by hand is kept (and
    used without downloading: its URL points nowhere)."""
    load, write_fake = LOADERS[name]
    write_fake(tmp_path / "release")
    files = sorted(os.listdir(tmp_path / "release"))
    url = zip_folder(tmp_path / "release", tmp_path / "release.zip")
    expected = load(tmp_path / "release")
    assert_same(load(tmp_path / "fetched", url=url), expected)
    assert sorted(os.listdir(tmp_path / "fetched")) == files
    (tmp_path / "by_hand").mkdir()
    shutil.copy(tmp_path / "release.zip", tmp_path / "by_hand")
    assert_same(load(tmp_path / "by_hand", url=(tmp_path / "nowhere" / "release.zip").as_uri()),
                expected)
    assert sorted(os.listdir(tmp_path / "by_hand")) == sorted(files + ["release.zip"])


# ----------------------------------------------------------------------------------------
# Download and unpack failures: one DataError naming the URL, the folder, --data synthetic

FAILURES = {"unreachable URL": lambda tmp: None,
            "not a zip": lambda tmp: (tmp / "nowhere.zip").write_bytes(b"not a zip" * 100),
            "folder is a file": lambda tmp: (tmp / "x").write_text("")}


@pytest.mark.parametrize("failure", FAILURES)
@pytest.mark.parametrize("name", LOADERS)
def test_fetch_failure(tmp_path, name, failure):
    FAILURES[failure](tmp_path)
    url = (tmp_path / "nowhere.zip").as_uri()
    with pytest.raises(data.DataError) as err:
        LOADERS[name][0](tmp_path / "x", url=url)
    msg = str(err.value)
    assert url in msg and str((tmp_path / "x").resolve()) in msg and "--data synthetic" in msg
    assert not (tmp_path / "x").is_dir() or os.listdir(tmp_path / "x") == []  # nothing left


def test_a_corrupt_zip_is_a_data_error_and_leaves_nothing(tmp_path):
    """Bytes flipped in a deflated member: a bad CRC or a zlib error, each a DataError."""
    import zipfile
    with zipfile.ZipFile(tmp_path / "good.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("top/a.txt", "".join(f"line {i}\n" for i in range(2000)))
    good = (tmp_path / "good.zip").read_bytes()
    for at in range(40, 80):
        bad = bytearray(good)
        bad[at] ^= 0xFF
        (tmp_path / "bad.zip").write_bytes(bytes(bad))
        with pytest.raises(data.DataError):
            data.fetch(tmp_path / "x", lambda name: name == "a.txt",
                       (tmp_path / "bad.zip").as_uri())
        assert os.listdir(tmp_path / "x") == []                 # no half-written file


@pytest.mark.parametrize("name", LOADERS)
def test_zip_without_the_release(tmp_path, name):
    """A zip at the URL without the release's files: DataError naming the URL and a file."""
    (tmp_path / "release").mkdir()
    url = zip_folder(tmp_path / "release", tmp_path / "other.zip")
    with pytest.raises(data.DataError) as err:
        LOADERS[name][0](tmp_path / "x", url=url)
    assert url in str(err.value)
    assert ("train_graph.json" if name == "ppi" else "shape_names.txt") in str(err.value)


# ----------------------------------------------------------------------------------------
# Malformed files: one DataError naming the file and what is wrong with it. Each case:
# (file, mutate(path of the file), what the message says besides the file's path)

def edit_npy(edit):
    """edit(array) -> the array to save in its place."""
    return lambda path: np.save(path, edit(np.load(path)))


def edit_graph(edit):
    """edit(node-link dict) changes the graph JSON in place."""
    def mutate(path):
        g = json.loads(path.read_text())
        edit(g)
        path.write_text(json.dumps(g))
    return mutate


def write_bytes(content):
    return lambda path: path.write_bytes(content)


def set_at(row, col, value, dtype=None):
    def edit(a):
        a = a.astype(dtype or a.dtype)
        a[row, col] = value
        return a
    return edit


def drop_graph_links(path):
    """Every link within the train split's first graph (id 1) gone."""
    gid, g = np.load(path.parent / "train_graph_id.npy"), json.loads(path.read_text())
    g["links"] = [e for e in g["links"] if gid[e["source"]] != 1 or gid[e["target"]] != 1]
    path.write_text(json.dumps(g))


N_TRAIN, N_TEST = sum(FAKE_PPI_SIZES["train"]), sum(FAKE_PPI_SIZES["test"])  # 15, 7
PPI_BAD = {  # what a GAT cannot learn from comes last
    "empty split": ("test_graph_id.npy", edit_npy(lambda a: a[:0]), "holds no node"),
    "a graph without links": ("train_graph.json", drop_graph_links, "has no link within graph 1"),
    "every label 0": ("train_labels.npy", edit_npy(lambda a: 0 * a), "holds no label 1"),
    "huge feature": ("valid_feats.npy", edit_npy(set_at(1, 2, 1e30)),
                     "holds 1e+30 at row 1, column 2; PPI's features are finite and below 1e+06"),
    "link past the last node": (
        "train_graph.json",
        edit_graph(lambda g: g["links"].append({"source": 0, "target": N_TRAIN + 3})),
        f"has a link to a node outside 0..{N_TRAIN - 1}"),
    "negative link end": ("valid_graph.json",
                          edit_graph(lambda g: g["links"].insert(2, {"source": -1, "target": 0})),
                          "has a link to a node outside 0..6"),
    "fractional link end": ("test_graph.json",
                            edit_graph(lambda g: g["edges"].append({"source": 1.5, "target": 0})),
                            "link"),
    "a node missing": ("train_graph.json", edit_graph(lambda g: g["nodes"].pop()),
                       f"does not hold the nodes 0..{N_TRAIN - 1}, the rows of train_feats.npy"),
    "no links": ("valid_graph.json", edit_graph(lambda g: g.pop("links")),
                 "is not networkx node-link JSON"),
    "not JSON": ("train_graph.json", write_bytes(b"{nodes"), "is not networkx node-link JSON"),
    "label 2": ("train_labels.npy", edit_npy(set_at(3, 7, 2)),
                "holds 2 at row 3, column 7; PPI's labels are 0 or 1"),
    "label 0.5": ("test_labels.npy", edit_npy(set_at(0, 0, 0.5, float)),
                  "holds 0.5 at row 0, column 0"),
    "NaN feature": ("valid_feats.npy", edit_npy(set_at(1, 2, np.nan)),
                    "holds nan at row 1, column 2; PPI's features are finite"),
    "49 features": ("train_feats.npy", edit_npy(lambda a: a[:, :49]),
                    f"of shape ({N_TRAIN}, 49), expected numbers of shape ({N_TRAIN}, 50)"),
    "a row short": ("test_labels.npy", edit_npy(lambda a: a[:-1]),
                    f"of shape ({N_TEST - 1}, 121), expected numbers of shape ({N_TEST}, 121)"),
    "2-d graph ids": ("valid_graph_id.npy", edit_npy(lambda a: a[:, None]),
                      "of shape (7, 1), expected numbers of shape ('N',)"),
    "text features": ("test_feats.npy", edit_npy(lambda a: a.astype(str)),
                      "expected numbers of shape"),
    "empty file": ("train_feats.npy", write_bytes(b""), "is not a .npy file"),
    "truncated": ("train_feats.npy", write_bytes(b"\x93NUMPY\x01\x00"), "cannot be read"),
    "object array": ("test_labels.npy",
                     lambda path: np.save(path, np.array([{}] * N_TEST), allow_pickle=True),
                     "cannot be read"),
}


@pytest.mark.parametrize("case", PPI_BAD)
def test_ppi_malformed_file_is_named(tmp_path, case):
    name, mutate, says = PPI_BAD[case]
    write_fake_ppi(tmp_path)
    mutate(tmp_path / name)
    with pytest.raises(data.DataError) as err:
        data.load_ppi(tmp_path, url=(tmp_path / "nowhere.zip").as_uri())
    assert str(tmp_path / name) in str(err.value) and says in str(err.value)


def edit_h5(edit):
    """edit(data, label) -> (data, label) to write in place of the file's (None: left out)."""
    def mutate(path):
        with h5py.File(path, "r") as f:
            d, lab = f["data"][:], f["label"][:]
        with h5py.File(path, "w") as f:
            for key, a in zip(("data", "label"), edit(d, lab)):
                if a is not None:
                    f[key] = a
    return mutate


def label_at(cloud, value, dtype=np.uint8):
    def edit(d, lab):
        lab = lab.astype(dtype)
        lab[cloud] = value
        return d, lab
    return edit


OUTSIDE = "holds labels outside 0..39, or coordinates not below 1e+06"
MODELNET_BAD = {
    "label 40": ("ply_data_train1.h5", edit_h5(label_at(1, 40)), OUTSIDE),
    "label -1": ("ply_data_train0.h5", edit_h5(label_at(2, -1, np.int8)), OUTSIDE),
    "NaN point": ("ply_data_train2.h5",
                  edit_h5(lambda d, lab: (np.where(d > 1, np.nan, d), lab)), OUTSIDE),
    "fractional labels": ("ply_data_train3.h5", edit_h5(lambda d, lab: (d, lab + 0.5)), "label"),
    "39 class names": ("shape_names.txt",
                       write_bytes("".join(f"c{i}\n" for i in range(39)).encode()),
                       "lists 39 classes, not 40"),
    "2-d points": ("ply_data_test0.h5", edit_h5(lambda d, lab: (d[..., :2], lab)),
                   "holds data (2, 64, 2) and labels (2, 1), expected (n, P, 3) and (n, 1)"),
    "a label short": ("ply_data_test0.h5", edit_h5(lambda d, lab: (d, lab[:1])),
                      "holds data (2, 64, 3) and labels (1, 1)"),
    "fewer points": ("ply_data_test0.h5", edit_h5(lambda d, lab: (d[:, :32], lab)), "points"),
    "no labels": ("ply_data_train4.h5", edit_h5(lambda d, lab: (d, None)),
                  "cannot be read as the release's 'data' and 'label'"),
    "not HDF5": ("ply_data_test1.h5", write_bytes(b"x" * 99),
                 "cannot be read as the release's 'data' and 'label'"),
    "huge coordinates": ("ply_data_train1.h5", edit_h5(lambda d, lab: (d * 1e30, lab)), OUTSIDE),
}


@pytest.mark.parametrize("case", MODELNET_BAD)
def test_modelnet_malformed_file_is_named(tmp_path, case):
    name, mutate, says = MODELNET_BAD[case]
    write_fake_modelnet(tmp_path)
    mutate(tmp_path / name)
    with pytest.raises(data.DataError) as err:
        data.load_modelnet40(tmp_path, url=(tmp_path / "nowhere.zip").as_uri())
    assert str(tmp_path / name) in str(err.value) and says in str(err.value)


def test_modelnet_split_without_clouds(tmp_path):
    write_fake_modelnet(tmp_path, test=(0, 0))
    with pytest.raises(data.DataError, match="the ply_data_test.*.h5 files in .* hold no cloud"):
        data.load_modelnet40(tmp_path, url=(tmp_path / "nowhere.zip").as_uri())


def test_modelnet_split_without_files(tmp_path):
    write_fake_modelnet(tmp_path)
    for f in tmp_path.glob("ply_data_test*.h5"):
        f.unlink()
    with pytest.raises(data.DataError) as err:
        data.load_modelnet40(tmp_path, url=(tmp_path / "nowhere.zip").as_uri())
    assert f"{tmp_path.resolve()} has no ply_data_test*.h5 file" in str(err.value)


# ----------------------------------------------------------------------------------------
# Real data (skipped when ../shared/data is absent)

def test_real_ppi_graph_ids_and_valid_feats(tmp_path):
    """The loader on the real graph membership and validation features (the graph JSON and
    the labels are fake): the real graph sizes, each graph's features its real rows."""
    folder = need_real("ppi_fragments")
    gids = {s: np.load(folder / f"{s}_graph_id.npy") for s in data.PPI_SPLITS}
    write_fake_ppi(tmp_path, graph_ids=gids)
    feats = np.load(folder / "valid_feats.npy")
    np.save(tmp_path / "valid_feats.npy", feats)
    d = data.load_ppi(tmp_path)
    assert {s: tuple(len(g.x) for g in d[s]) for s in data.PPI_SPLITS} == synthetic.PPI_GRAPH_SIZES
    for g, graph in zip(np.unique(gids["valid"]), d["valid"]):
        assert torch.equal(graph.x, torch.tensor(feats[gids["valid"] == g], dtype=torch.float32))


def test_real_modelnet40_subset():
    d = data.load_modelnet40(need_real("modelnet40_subset"))
    assert d["train_points"].shape == (849, 2048, 3) and d["test_points"].shape == (178, 2048, 3)
    assert len(d["class_names"]) == 40 and d["class_names"][0] == "airplane"
    assert (d["train_labels"] == 0).sum() == 626 and (d["test_labels"] == 0).sum() == 100


def test_real_modelnet40_1024_labels_match_shape_ids():
    """Every cloud's label names the class of its ModelNet40 shape id, file by file in the
    release's order, and the per-class counts are the official split's."""
    folder = need_real("modelnet40_1024")
    d = data.load_modelnet40(folder)
    counts = [line.split("\t") for line in (folder / "per_class_counts.tsv").read_text()
              .splitlines()[1:]]
    assert d["class_names"] == [c for _, c, _, _ in counts]
    for split, column in (("train", 2), ("test", 3)):
        ids = sum((json.loads(f.read_text())
                   for f in sorted(folder.glob(f"ply_data_{split}_*_id2file.json"))), [])
        assert [d["class_names"][c] for c in d[f"{split}_labels"]] == [i.split("/")[0]
                                                                        for i in ids]
        assert np.bincount(d[f"{split}_labels"], minlength=40).tolist() == [
            int(row[column]) for row in counts]
        assert d[f"{split}_points"].shape == ({"train": 9843, "test": 2468}[split], 1024, 3)
        assert len(ids) == len(d[f"{split}_points"])
        assert np.isfinite(d[f"{split}_points"]).all()
        assert np.linalg.norm(d[f"{split}_points"], axis=2).max() <= 1 + 1e-5


# ----------------------------------------------------------------------------------------
# Batching

def toy_graph(n, seed):
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n, (2, 3 * n), generator=g)
    return data.Graph(torch.randn(n, 50, generator=g), torch.rand(n, 121, generator=g).round(),
                      ei, torch.zeros(n, dtype=torch.long))


def test_batch_graphs_offsets():
    graphs = [toy_graph(n, n) for n in (3, 5, 2)]
    b = data.batch_graphs(graphs)
    assert torch.equal(b.batch, torch.tensor([0] * 3 + [1] * 5 + [2] * 2))
    assert torch.equal(b.edge_index, torch.cat([graphs[0].edge_index, graphs[1].edge_index + 3,
                                                graphs[2].edge_index + 8], 1))
    assert torch.equal(b.x, torch.cat([g.x for g in graphs]))
    assert torch.equal(b.y, torch.cat([g.y for g in graphs]))
    assert torch.equal(b.batch[b.edge_index[0]], b.batch[b.edge_index[1]])


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_graph_to_and_batch_graphs_keep_the_device(device):
    graphs = [toy_graph(n, n) for n in (3, 5)]
    moved = [g.to(device) for g in graphs]
    assert all(isinstance(g, data.Graph) for g in moved)
    for g, m in zip(graphs, moved):
        for u, v in zip(g, m):
            assert v.device.type == device and v.dtype == u.dtype and torch.equal(v.cpu(), u)
    b = data.batch_graphs(moved)
    assert all(t.device.type == device for t in b)
    assert all(torch.equal(u.cpu(), v) for u, v in zip(b, data.batch_graphs(graphs)))


def test_ppi_batches_cover_every_graph_once():
    graphs = [toy_graph(n, n) for n in (3, 4, 5, 6, 7)]

    def sizes(batches):
        out = []
        for idx, b in batches:
            assert [graphs[i].x.size(0) for i in idx] == torch.bincount(b.batch).tolist()
            assert torch.equal(b.x, torch.cat([graphs[i].x for i in idx]))
            out.append(torch.bincount(b.batch).tolist())
        return out

    runs = [sizes(data.ppi_batches(graphs, 2, generator=torch.Generator().manual_seed(s)))
            for s in (1, 1, 2)]
    assert runs[0] == runs[1] != runs[2]
    assert [len(b) for b in runs[0]] == [2, 2, 1]
    assert sorted(sum(runs[0], [])) == [3, 4, 5, 6, 7]
    assert sorted(sum(sizes(data.ppi_batches(graphs, 5)), [])) == [3, 4, 5, 6, 7]


def test_balanced_subset_is_fixed_and_balanced():
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(40), 3 + np.arange(40)))
    labels = labels[labels != 5]                         # class 5: none; class 0: 3 clouds
    ds = {"class_names": [f"c{c}" for c in range(40)], "train_labels": labels,
          "train_points": np.arange(len(labels)), "test_labels": np.arange(7)}
    sub, fewer = data.balanced_subset(ds, 4)
    keep = sub["train_points"]                           # the indices of the clouds kept
    assert fewer == ["c0", "c5"] and np.array_equal(keep, np.unique(keep))  # file order, once
    assert np.array_equal(sub["train_labels"], labels[keep]) and sub["test_labels"] is ds[
        "test_labels"] and sub["class_names"] is ds["class_names"]
    assert np.bincount(labels[keep], minlength=40).tolist() == [3, 4, 4, 4, 4, 0] + [4] * 34
    assert np.array_equal(keep, data.balanced_subset(ds, 4)[0]["train_points"])  # every time
    assert keep[:8].tolist() == [4, 6, 17, 20, 25, 27, 38, 53]  # and in every version
    assert not np.array_equal(keep, data.balanced_subset(ds, 4, seed=1)[0]["train_points"])


def test_pointcloud_test_batches_are_unaugmented():
    points = np.random.default_rng(0).normal(size=(10, 32, 3)).astype(np.float32)
    batches = list(data.pointcloud_batches(points, np.arange(10), 4, num_points=16))
    assert [len(lab) for _, lab in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([p for p, _ in batches]), torch.from_numpy(points[:, :16]))
    assert torch.equal(torch.cat([lab for _, lab in batches]), torch.arange(10))


@pytest.mark.parametrize("kwargs", [{"num_points": 0}, {"num_points": 33},
                                    {"labels": np.arange(9)},
                                    {"points": np.zeros((10, 32), np.float32)}])
def test_pointcloud_batches_errors(kwargs):
    args = {"points": np.zeros((10, 32, 3), np.float32), "labels": np.arange(10),
            "batch_size": 4, "num_points": 16, **kwargs}
    with pytest.raises(ValueError, match=r"points must be \(N, P, 3\) with N labels"):
        next(data.pointcloud_batches(**args))


def test_pointcloud_train_augmentation():
    points = np.random.default_rng(0).normal(size=(10, 32, 3)).astype(np.float32)
    run = lambda seed: list(data.pointcloud_batches(  # noqa: E731
        points, np.arange(10), 4, num_points=16, train=True,
        generator=torch.Generator().manual_seed(seed)))
    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(u[0], v[0]) and torch.equal(u[1], v[1]) for u, v in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0])
    labels = torch.cat([lab for _, lab in a])
    assert len(a) == 2 and len(set(labels.tolist())) == 8                  # drop_last
    for pts, lab in zip(torch.cat([p for p, _ in a]).numpy(), labels.tolist()):
        orig = points[lab, :16]                                            # (P, 3)
        scale = pts.std(0) / orig.std(0)                                   # (3,) per axis
        shift = pts.mean(0) - scale * orig.mean(0)
        assert np.all((2 / 3 - 1e-5 <= scale) & (scale <= 3 / 2 + 1e-5))
        assert np.all(np.abs(shift) <= 0.2 + 1e-5)
        back = (pts - shift) / scale                                       # shuffled orig
        np.testing.assert_allclose(back[back[:, 0].argsort()], orig[orig[:, 0].argsort()],
                                   atol=1e-4)
        assert not np.allclose(back, orig)                                 # point order shuffled


# ----------------------------------------------------------------------------------------
# Synthetic PPI

@pytest.fixture(scope="module")
def ppi_full():
    return synthetic.synthetic_ppi(seed=0, scale=1.0)


def test_synthetic_ppi_deterministic_and_well_formed():
    a, b, c = (synthetic.synthetic_ppi(s, 0.05) for s in (1, 1, 2))
    assert a["synthetic"] is True and [len(a[s]) for s in data.PPI_SPLITS] == [20, 2, 2]
    for ga, gb, gc in zip(*(sum((d[s] for s in data.PPI_SPLITS), []) for d in (a, b, c))):
        assert all(torch.equal(u, v) for u, v in zip(ga, gb))
        assert not torch.equal(ga.x, gc.x)
        assert ga.x.shape == (len(ga.x), 50) and ga.y.shape == (len(ga.x), 121)
        assert ga.x.dtype == ga.y.dtype == torch.float32 and ga.edge_index.dtype == torch.int64
        assert len(ga.x) >= synthetic.MIN_NODES and not ga.batch.any()
        j, i = ga.edge_index.tolist()
        pairs = list(zip(j, i))
        assert all(u != v for u, v in pairs) and len(set(pairs)) == len(pairs)
        assert set(pairs) == {(v, u) for u, v in pairs}
        assert pairs == sorted(pairs, key=lambda e: (e[1], e[0]))


def test_synthetic_ppi_sizes_degrees_labels(ppi_full):
    sizes = {s: tuple(len(g.x) for g in ppi_full[s]) for s in data.PPI_SPLITS}
    assert sizes == synthetic.PPI_GRAPH_SIZES
    for g in ppi_full["train"] + ppi_full["test"]:
        deg = torch.bincount(g.edge_index[1], minlength=len(g.x)).float()
        assert 12 <= deg.mean() <= 16 and deg.max() > 5 * deg.mean()  # PPI: 14, heavy tail
    rate = torch.cat([g.y for g in ppi_full["train"]]).mean()
    assert 0.2 < rate < 0.4                                               # PPI: ~0.3


def micro_f1(logits, y):
    pred = (logits > 0).float()
    return (2 * (pred * y).sum() / (pred.sum() + y.sum())).item()


def hop_features(g, hops):
    """[x, Āx, ..., Āᵏx] with Ā the mean over incoming neighbours, by a dense matrix."""
    A = torch.zeros(len(g.x), len(g.x)).index_put_(tuple(g.edge_index.flip(0)), torch.tensor(1.0))
    A = A / A.sum(1, keepdim=True).clamp(min=1)
    feats = [g.x]
    for _ in range(hops):
        feats.append(A @ feats[-1])                                     # (N, F)
    return torch.cat(feats, 1)                                          # (N, (hops+1) F)


@pytest.fixture
def one_thread():
    """One torch thread: small problems gain nothing from more, and threads stall when the
    cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_synthetic_ppi_labels_need_several_hops(one_thread):
    """Logistic regression on x alone is clearly worse than on [x, Āx, Ā²x, Ā³x]."""
    d = synthetic.synthetic_ppi(seed=0, scale=0.1)
    f1 = {}
    for hops in (0, 3):
        x_tr, x_te = (torch.cat([hop_features(g, hops) for g in d[s]]) for s in ("train", "test"))
        y_tr, y_te = (torch.cat([g.y for g in d[s]]) for s in ("train", "test"))
        mu, sd = x_tr.mean(0), x_tr.std(0)
        x_tr, x_te = (x_tr - mu) / sd, (x_te - mu) / sd
        torch.manual_seed(0)
        model = torch.nn.Linear(x_tr.size(1), 121)
        opt = torch.optim.Adam(model.parameters(), lr=0.03)
        for _ in range(150):
            opt.zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(model(x_tr), y_tr).backward()
            opt.step()
        with torch.no_grad():
            f1[hops] = micro_f1(model(x_te), y_te)
    print(f"logistic regression test micro-F1: x {f1[0]:.3f}, x..Ā³x {f1[3]:.3f}")
    assert f1[3] > f1[0] + 0.15


# ----------------------------------------------------------------------------------------
# Synthetic ModelNet40

def test_synthetic_modelnet40_deterministic_and_normalised():
    a, b, c = (synthetic.synthetic_modelnet40(2, 1, seed=s) for s in (3, 3, 4))
    assert a["synthetic"] is True and len(set(a["class_names"])) == 40
    assert all(n.startswith("synthetic_") for n in a["class_names"])
    for split, n in (("train", 80), ("test", 40)):
        pts, lab = a[f"{split}_points"], a[f"{split}_labels"]
        assert pts.shape == (n, 2048, 3) and pts.dtype == np.float32 and lab.dtype == np.int64
        assert sorted(set(lab.tolist())) == list(range(40))
        np.testing.assert_array_equal(pts, b[f"{split}_points"])
        assert not np.array_equal(pts, c[f"{split}_points"])
        np.testing.assert_allclose(pts.mean(1), 0, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(pts, axis=2).max(1), 1, atol=1e-5)
    big = synthetic.synthetic_modelnet40(1, 1, num_points=4096)
    assert big["test_points"].shape == (40, 4096, 3)


def test_synthetic_modelnet40_classes_are_distinct():
    """A nearest-class-mean classifier on pose-invariant histograms (distance to the centre,
    height) is far above chance (2.5%) but not perfect."""
    d = synthetic.synthetic_modelnet40(seed=0)

    def describe(pts):                                                    # (N, P, 3) -> (N, 32)
        r = np.linalg.norm(pts, axis=2)
        h = np.abs(pts[..., 2])
        return np.concatenate([np.stack([np.histogram(v, 16, (0, 1))[0] for v in q])
                               for q in (r, h)], 1) / pts.shape[1]

    f_tr, f_te = describe(d["train_points"]), describe(d["test_points"])
    means = np.stack([f_tr[d["train_labels"] == c].mean(0) for c in range(40)])    # (40, 32)
    pred = np.linalg.norm(f_te[:, None] - means[None], axis=2).argmin(1)
    acc = (pred == d["test_labels"]).mean()
    print(f"nearest-class-mean accuracy on synthetic ModelNet40: {acc:.3f}")
    assert 0.4 < acc < 1.0
