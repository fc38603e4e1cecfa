"""Tests of data.py and synthetic.py: the loaders on tiny fake releases written in the real
formats, the download failure path (offline, with file:// URLs), the real data fragments
(skipped when absent), DGCNN's batching and augmentation, and the synthetic stand-ins."""
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import data  # noqa: E402
import synthetic  # noqa: E402

REAL_DATA = Path(os.environ.get("LSP_REAL_DATA",
                                Path(__file__).resolve().parent.parent.parent / "shared" / "data"))
LOADERS = {"ppi": (data.load_ppi, data.PPI_URL),
           "modelnet": (data.load_modelnet40, data.MODELNET_URL)}


def need_real(sub):
    if not (REAL_DATA / sub).is_dir():
        pytest.skip(f"real data fragments not found in {REAL_DATA / sub}")
    return REAL_DATA / sub


# ----------------------------------------------------------------------------------------
# Fake releases in the real file formats

FAKE_PPI_SIZES = {"train": (5, 4, 6), "valid": (3, 4), "test": (4, 3)}


def write_fake_ppi(folder, feat_dim=50):
    """Write the 12 PPI files; graphs interleaved in node order, a duplicate link and a link
    across graphs. Returns {split: (graph_id, links)} for the slow reference."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    first_id, truth = 1, {}
    for split, sizes in FAKE_PPI_SIZES.items():
        gid = rng.permutation(np.repeat(np.arange(len(sizes)) + first_id, sizes))
        first_id += len(sizes)
        N = len(gid)
        links = []
        for g in np.unique(gid):
            nodes = np.flatnonzero(gid == g)
            for a in nodes:
                for b in rng.choice(nodes, size=2, replace=False):
                    if a != b:
                        links += [(int(a), int(b)), (int(b), int(a))]
        links += [links[0], (0, int(np.flatnonzero(gid != gid[0])[0]))]
        graph = {"directed": True, "multigraph": False, "graph": {},
                 "nodes": [{"id": int(i), "test": False, "val": False} for i in rng.permutation(N)],
                 "links": [{"source": j, "target": i} for j, i in links]}
        (folder / f"{split}_graph.json").write_text(json.dumps(graph))
        np.save(folder / f"{split}_feats.npy", rng.normal(size=(N, feat_dim)))
        np.save(folder / f"{split}_labels.npy", rng.integers(0, 2, size=(N, 121)))
        np.save(folder / f"{split}_graph_id.npy", gid)
        truth[split] = gid, links
    return truth


def write_fake_modelnet(folder, train=(3, 2, 1, 2, 1), test=(2, 1), P=64):
    """h5 files in the release layout (train0-4, test0-1; one file per split for a subset);
    returns the points and labels in loading order."""
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
                f["data"], f["label"] = pts[-1], lab[-1]
        out[split] = np.concatenate(pts), np.concatenate(lab).reshape(-1)
    return out


def zip_folder(folder, zip_path, top):
    import zipfile
    with zipfile.ZipFile(zip_path, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"{top}/{f.name}")
    return zip_path.as_uri()


# ----------------------------------------------------------------------------------------
# PPI loader

def test_load_ppi_matches_slow_reference(tmp_path):
    truth = write_fake_ppi(tmp_path)
    d = data.load_ppi(tmp_path, download=False)
    assert d["synthetic"] is False and [len(d[s]) for s in data.PPI_SPLITS] == [3, 2, 2]
    for split, (gid, links) in truth.items():
        feats = np.load(tmp_path / f"{split}_feats.npy")
        for g, graph in zip(np.unique(gid), d[split]):
            nodes = np.flatnonzero(gid == g)                      # local id = rank of global id
            local = {int(v): k for k, v in enumerate(nodes)}
            expected = {(local[j], local[i]) for j, i in links if j in local and i in local}
            pairs = list(zip(*graph.edge_index.tolist()))
            assert set(pairs) == expected and len(pairs) == len(expected)
            assert pairs == sorted(pairs, key=lambda e: (e[1], e[0]))
            assert all((i, j) in expected for j, i in pairs)     # both directions present
            assert graph.x.dtype == graph.y.dtype == torch.float32
            assert graph.edge_index.dtype == graph.batch.dtype == torch.int64
            assert graph.x.shape == (len(nodes), 50) and graph.y.shape == (len(nodes), 121)
            assert torch.equal(graph.x, torch.tensor(feats[nodes], dtype=torch.float32))
            assert not graph.batch.any()


def test_load_ppi_from_zip_with_top_folder(tmp_path):
    write_fake_ppi(tmp_path / "release")
    url = zip_folder(tmp_path / "release", tmp_path / "ppi.zip", "ppi")
    d = data.load_ppi(tmp_path / "ppi", url=url)
    assert [len(d[s]) for s in data.PPI_SPLITS] == [3, 2, 2]
    assert sorted(p.name for p in (tmp_path / "ppi").iterdir()) == sorted(data.PPI_FILES)


def test_load_modelnet40_release_layout(tmp_path):
    truth = write_fake_modelnet(tmp_path)
    d = data.load_modelnet40(tmp_path, download=False)
    assert d["synthetic"] is False and d["class_names"] == [f"class{c}" for c in range(40)]
    for split in ("train", "test"):
        assert d[f"{split}_points"].dtype == np.float32 and d[f"{split}_labels"].dtype == np.int64
        np.testing.assert_array_equal(d[f"{split}_points"], truth[split][0])
        np.testing.assert_array_equal(d[f"{split}_labels"], truth[split][1])


def test_load_modelnet40_from_zip_with_top_folder(tmp_path):
    truth = write_fake_modelnet(tmp_path / "release")
    url = zip_folder(tmp_path / "release", tmp_path / "m.zip", "modelnet40_ply_hdf5_2048")
    d = data.load_modelnet40(tmp_path / "mn", url=url)
    np.testing.assert_array_equal(d["train_labels"], truth["train"][1])
    assert sorted(p.name for p in (tmp_path / "mn").iterdir()) == sorted(data.MODELNET_FILES)


def test_load_modelnet40_subset_of_one_file_per_split(tmp_path):
    truth = write_fake_modelnet(tmp_path, train=(3,), test=(2,))
    d = data.load_modelnet40(tmp_path, download=False)
    for split in ("train", "test"):
        np.testing.assert_array_equal(d[f"{split}_points"], truth[split][0])
        np.testing.assert_array_equal(d[f"{split}_labels"], truth[split][1])


# ----------------------------------------------------------------------------------------
# Failure path: one DataError with what, the URL, where and --data synthetic; nothing left

def assert_helpful(err, url, folder):
    msg = str(err.value)
    assert url in msg and "--data synthetic" in msg and str(folder.resolve()) in msg
    assert "--url (the scripts) or the loader's url argument" in msg


@pytest.mark.parametrize("name", LOADERS)
def test_missing_without_download(tmp_path, name):
    load, url = LOADERS[name]
    with pytest.raises(data.DataError) as err:
        load(tmp_path / "x", download=False)
    assert_helpful(err, url, tmp_path / "x")
    assert ("train_graph.json" if name == "ppi" else "ply_data_train0.h5") in str(err.value)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("name", LOADERS)
def test_unreachable_url(tmp_path, name):
    url = (tmp_path / "nowhere.zip").as_uri()
    with pytest.raises(data.DataError) as err:
        LOADERS[name][0](tmp_path / "x", url=url)
    assert_helpful(err, url, tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("name", LOADERS)
def test_bad_zip_leaves_nothing(tmp_path, name):
    (tmp_path / "bad.zip").write_bytes(b"not a zip" * 100)
    (tmp_path / "x").mkdir()
    with pytest.raises(data.DataError) as err:
        LOADERS[name][0](tmp_path / "x", url=(tmp_path / "bad.zip").as_uri())
    assert_helpful(err, (tmp_path / "bad.zip").as_uri(), tmp_path / "x")
    assert list((tmp_path / "x").iterdir()) == []


def test_wrong_shapes_in_zip_install_nothing(tmp_path):
    write_fake_ppi(tmp_path / "release", feat_dim=49)
    url = zip_folder(tmp_path / "release", tmp_path / "ppi.zip", "ppi")
    (tmp_path / "x").mkdir()
    with pytest.raises(data.DataError, match="feats"):
        data.load_ppi(tmp_path / "x", url=url)
    assert list((tmp_path / "x").iterdir()) == []


# ----------------------------------------------------------------------------------------
# Malformed files: one DataError whose first line names the file and what is wrong with it

def headline(err):
    return str(err.value).splitlines()[0]


def edit_npy(name, edit):
    """A mutation of a fake release: edit(array) -> the array to save in its place."""
    def mutate(folder):
        np.save(folder / name, edit(np.load(folder / name)))
    return mutate


def edit_links(split, edit):
    """A mutation: edit(links) changes the node-link JSON's list of links in place."""
    def mutate(folder):
        g = json.loads((folder / f"{split}_graph.json").read_text())
        edit(g["links"])
        (folder / f"{split}_graph.json").write_text(json.dumps(g))
    return mutate


def write_bytes(name, content):
    return lambda folder: (folder / name).write_bytes(content)


def set_at(row, col, value, dtype=None):
    def edit(a):
        a = a.astype(dtype or a.dtype)
        a[row, col] = value
        return a
    return edit


N_TRAIN = sum(FAKE_PPI_SIZES["train"])   # 15 nodes, ids 0..14
PPI_BAD = {  # case: (file, mutation, what the first line says after the file's path)
    "link past the last node": (
        "train_graph.json", edit_links("train", lambda l: l.append({"source": 0,
                                                                    "target": N_TRAIN + 3})),
        f"whose target is node {N_TRAIN + 3}, but the train nodes are 0..{N_TRAIN - 1}"),
    "negative link end": ("valid_graph.json",
                          edit_links("valid", lambda l: l.insert(2, {"source": -1, "target": 0})),
                          "has a link (number 2) whose source is node -1"),
    "fractional node id": ("test_graph.json",
                           edit_links("test", lambda l: l.append({"source": 1.5, "target": 0})),
                           "is not networkx node-link JSON"),
    "not JSON": ("train_graph.json", write_bytes("train_graph.json", b"{nodes"),
                 "is not networkx node-link JSON"),
    "label 2": ("train_labels.npy", edit_npy("train_labels.npy", set_at(3, 7, 2)),
                "holds 2 at row 3, column 7; PPI's labels are 0 or 1"),
    "label 0.5": ("test_labels.npy", edit_npy("test_labels.npy", set_at(0, 0, 0.5, float)),
                  "holds 0.5 at row 0, column 0"),
    "NaN feature": ("valid_feats.npy", edit_npy("valid_feats.npy", set_at(1, 2, np.nan)),
                    "holds nan at row 1, column 2; PPI's features are finite"),
    "49 features": ("train_feats.npy", edit_npy("train_feats.npy", lambda a: a[:, :49]),
                    f"has shape ({N_TRAIN}, 49), expected ({N_TRAIN}, 50)"),
    "a row short": ("test_labels.npy", edit_npy("test_labels.npy", lambda a: a[:-1]),
                    "has shape (6, 121), expected (7, 121)"),
    "float graph ids": ("valid_graph_id.npy", edit_npy("valid_graph_id.npy", lambda a: a * 1.0),
                        "holds float64 of shape (7,), expected integers"),
    "empty file": ("train_feats.npy", write_bytes("train_feats.npy", b""),
                   "is not a .npy file (it does not start with NumPy's header)"),
    "not an array": ("valid_graph_id.npy", write_bytes("valid_graph_id.npy", b"x" * 99),
                     "is not a .npy file"),
    "truncated": ("train_feats.npy", write_bytes("train_feats.npy", b"\x93NUMPY\x01\x00"),
                  "cannot be read: "),
    "object array": ("test_labels.npy", lambda folder: np.save(
        folder / "test_labels.npy", np.array([{"a": 1}] * 7), allow_pickle=True),
        "cannot be read: "),
}


@pytest.mark.parametrize("case", PPI_BAD)
def test_ppi_malformed_file_named_in_the_first_line(tmp_path, case):
    name, mutate, says = PPI_BAD[case]
    write_fake_ppi(tmp_path)
    mutate(tmp_path)
    with pytest.raises(data.DataError) as err:
        data.load_ppi(tmp_path, download=False)
    assert headline(err).startswith(f"{tmp_path / name} ") and says in headline(err)
    assert "data not found" not in headline(err)


def edit_h5(name, edit):
    """A mutation: edit(data, label) -> (data, label) to write in place of the file's."""
    def mutate(folder):
        with h5py.File(folder / name, "r") as f:
            d, l = f["data"][:], f["label"][:]
        with h5py.File(folder / name, "w") as f:
            for key, a in zip(("data", "label"), edit(d, l)):
                if a is not None:
                    f[key] = a
    return mutate


def label_at(cloud, value, dtype=np.uint8):
    def edit(d, l):
        l = l.astype(dtype)
        l[cloud] = value
        return d, l
    return edit


MODELNET_BAD = {  # case: (file, mutation, what the first line says after the file's path)
    "label 40": ("ply_data_train1.h5", edit_h5("ply_data_train1.h5", label_at(1, 40)),
                 "holds label 40 (cloud 1), but the classes are 0..39"),
    "label 255": ("ply_data_test1.h5", edit_h5("ply_data_test1.h5", label_at(0, 255)),
                  "holds label 255 (cloud 0)"),
    "label -1": ("ply_data_train0.h5", edit_h5("ply_data_train0.h5", label_at(2, -1, np.int8)),
                 "holds label -1 (cloud 2)"),
    "float labels": ("ply_data_train3.h5",
                     edit_h5("ply_data_train3.h5", lambda d, l: (d, l + 0.5)),
                     "has data of type float32 and labels of type float64, expected "
                     "numbers and integer labels"),
    "39 class names": ("shape_names.txt",
                       write_bytes("shape_names.txt",
                                   "".join(f"c{i}\n" for i in range(39)).encode()),
                       "lists 39 class names, expected 40"),
    "2-d points": ("ply_data_test0.h5", edit_h5("ply_data_test0.h5", lambda d, l: (d[..., :2], l)),
                   "has data of shape (2, 64, 2), expected (n, P, 3)"),
    "fewer points": ("ply_data_test0.h5", edit_h5("ply_data_test0.h5", lambda d, l: (d[:, :32], l)),
                     "has 32 points per cloud, ply_data_train0.h5 64"),
    "NaN point": ("ply_data_train2.h5",
                  edit_h5("ply_data_train2.h5", lambda d, l: (np.where(d > 1, np.nan, d), l)),
                  "holds points that are not finite"),
    "no labels": ("ply_data_train4.h5", edit_h5("ply_data_train4.h5", lambda d, l: (d, None)),
                  "lacks the 'data' and 'label' datasets"),
    "not HDF5": ("ply_data_test1.h5", write_bytes("ply_data_test1.h5", b"x" * 99),
                 "cannot be read:"),
}


@pytest.mark.parametrize("case", MODELNET_BAD)
def test_modelnet_malformed_file_named_in_the_first_line(tmp_path, case):
    name, mutate, says = MODELNET_BAD[case]
    write_fake_modelnet(tmp_path)
    mutate(tmp_path)
    with pytest.raises(data.DataError) as err:
        data.load_modelnet40(tmp_path, download=False)
    assert headline(err).startswith(f"{tmp_path / name} ") and says in headline(err)
    assert "data not found" not in headline(err)


@pytest.mark.parametrize("absent, subset", [
    (["ply_data_train3.h5", "ply_data_train4.h5"], False),  # an unpacking stopped half-way
    (["ply_data_test1.h5"], False),
    (["ply_data_train2.h5", "ply_data_train3.h5", "ply_data_train4.h5", "ply_data_test1.h5"],
     False),
    (["shape_names.txt"], True),                             # a subset without class names
])
def test_modelnet_part_of_the_release_names_the_missing_files(tmp_path, absent, subset):
    write_fake_modelnet(tmp_path, *([(3,), (2,)] if subset else []))
    for name in absent:
        (tmp_path / name).unlink()
    with pytest.raises(data.DataError) as err:
        data.load_modelnet40(tmp_path, download=False)
    assert headline(err) == (f"ModelNet40 data in {tmp_path.resolve()} is incomplete: "
                             f"{', '.join(absent)} not found.")


def test_part_of_the_release_is_completed_by_the_download(tmp_path):
    truth = write_fake_modelnet(tmp_path / "release")
    url = zip_folder(tmp_path / "release", tmp_path / "m.zip", "modelnet40_ply_hdf5_2048")
    write_fake_modelnet(tmp_path / "mn")
    for name in ("ply_data_train3.h5", "ply_data_train4.h5"):
        (tmp_path / "mn" / name).unlink()
    d = data.load_modelnet40(tmp_path / "mn", url=url)
    np.testing.assert_array_equal(d["train_points"], truth["train"][0])
    np.testing.assert_array_equal(d["train_labels"], truth["train"][1])


def test_ppi_part_of_the_release_names_the_missing_files(tmp_path):
    write_fake_ppi(tmp_path)
    (tmp_path / "valid_labels.npy").unlink()
    with pytest.raises(data.DataError) as err:
        data.load_ppi(tmp_path, download=False)
    assert headline(err) == (f"PPI data in {tmp_path.resolve()} is incomplete: "
                             f"valid_labels.npy not found.")


@pytest.mark.parametrize("name", LOADERS)
def test_data_dir_that_is_a_file(tmp_path, name):
    (tmp_path / "x").write_text("")
    with pytest.raises(data.DataError, match="is not a folder"):
        LOADERS[name][0](tmp_path / "x")


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
    assert torch.equal(b.batch[b.edge_index[0]], b.batch[b.edge_index[1]])


def test_ppi_batches_cover_every_graph_once():
    graphs = [toy_graph(n, n) for n in (3, 4, 5, 6, 7)]
    def sizes(batches):
        out = []
        for idx, b in batches:
            assert [graphs[i].x.size(0) for i in idx] == torch.bincount(b.batch).tolist()
            out.append(torch.bincount(b.batch).tolist())
        return out

    runs = [sizes(data.ppi_batches(graphs, 2, generator=torch.Generator().manual_seed(s)))
            for s in (1, 1, 2)]
    assert runs[0] == runs[1] != runs[2]
    assert [len(b) for b in runs[0]] == [2, 2, 1]
    assert sorted(sum(runs[0], [])) == [3, 4, 5, 6, 7]
    assert sizes(data.ppi_batches(graphs, 2, shuffle=False)) == [[3, 4], [5, 6], [7]]


# ----------------------------------------------------------------------------------------
# Synthetic PPI

def test_synthetic_module_on_its_own_and_through_data():
    """synthetic.py imports without data.py loaded first (no import cycle), and data.py
    re-exports its generators under the names the scripts use."""
    code = "import synthetic; assert synthetic.synthetic_ppi(0, 0.01)['synthetic']"
    p = subprocess.run([sys.executable, "-c", code], cwd=Path(data.__file__).parent,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert data.synthetic_ppi is synthetic.synthetic_ppi
    assert data.synthetic_modelnet40 is synthetic.synthetic_modelnet40


@pytest.fixture(scope="module")
def ppi_full():
    return data.synthetic_ppi(seed=0, scale=1.0)


def test_synthetic_ppi_deterministic_and_well_formed():
    a, b, c = data.synthetic_ppi(1, 0.05), data.synthetic_ppi(1, 0.05), data.synthetic_ppi(2, 0.05)
    assert a["synthetic"] is True and [len(a[s]) for s in data.PPI_SPLITS] == [20, 2, 2]
    for ga, gb, gc in zip(*(sum((d[s] for s in data.PPI_SPLITS), []) for d in (a, b, c))):
        assert all(torch.equal(u, v) for u, v in zip(ga, gb))
        assert not torch.equal(ga.x, gc.x)
        assert ga.x.dtype == ga.y.dtype == torch.float32 and ga.edge_index.dtype == torch.int64
        j, i = ga.edge_index.tolist()
        pairs = list(zip(j, i))
        assert all(u != v for u, v in pairs) and len(set(pairs)) == len(pairs)
        assert set(pairs) == {(v, u) for u, v in pairs}
        assert pairs == sorted(pairs, key=lambda e: (e[1], e[0]))


def test_synthetic_ppi_sizes_degrees_labels(ppi_full):
    sizes = [[len(g.x) for g in ppi_full[s]] for s in data.PPI_SPLITS]
    assert sizes == [list(synthetic.PPI_GRAPH_SIZES[s]) for s in data.PPI_SPLITS]
    for g in ppi_full["train"] + ppi_full["test"]:
        deg = torch.bincount(g.edge_index[1], minlength=len(g.x)).float()
        assert 12 <= deg.mean() <= 16 and deg.max() > 5 * deg.mean()  # PPI: 14, heavy tail
    rate = torch.cat([g.y for g in ppi_full["train"]]).mean()
    assert 0.2 < rate < 0.4                                               # PPI: ~0.3


def test_synthetic_ppi_sizes_match_real_fragments(ppi_full):
    folder = need_real("ppi_fragments")
    for split in data.PPI_SPLITS:
        _, counts = np.unique(np.load(folder / f"{split}_graph_id.npy"), return_counts=True)
        assert counts.tolist() == [len(g.x) for g in ppi_full[split]]
    assert np.load(folder / "valid_feats.npy").shape == (6514, 50)


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
    d = data.synthetic_ppi(seed=0, scale=0.1)
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
# ModelNet40: real subset, batches and augmentation, synthetic stand-in

def test_real_modelnet40_subset():
    d = data.load_modelnet40(need_real("modelnet40_subset"), download=False)
    assert d["train_points"].shape == (849, 2048, 3) and d["test_points"].shape == (178, 2048, 3)
    assert len(d["class_names"]) == 40 and d["synthetic"] is False
    for split in ("train", "test"):
        assert d[f"{split}_labels"].dtype == np.int64
        assert 0 <= d[f"{split}_labels"].min() and d[f"{split}_labels"].max() < 40


def test_pointcloud_test_batches_are_unaugmented():
    points = np.random.default_rng(0).normal(size=(10, 32, 3)).astype(np.float32)
    batches = list(data.pointcloud_batches(points, np.arange(10), 4, num_points=16))
    assert [len(lab) for _, lab in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([p for p, _ in batches]), torch.from_numpy(points[:, :16]))
    assert torch.equal(torch.cat([lab for _, lab in batches]), torch.arange(10))
    with pytest.raises(ValueError, match="num_points"):
        next(data.pointcloud_batches(points, np.arange(10), 4, num_points=33))


@pytest.mark.parametrize("kwargs, says", [
    ({"num_points": 0}, "num_points=0"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"labels": np.arange(9)}, "with N labels"),
])
def test_pointcloud_batches_errors(kwargs, says):
    args = {"points": np.zeros((10, 32, 3), np.float32), "labels": np.arange(10),
            "batch_size": 4, "num_points": 16, **kwargs}
    with pytest.raises(ValueError, match=says):
        next(data.pointcloud_batches(**args))


def test_ppi_batches_batch_size_error():
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        next(data.ppi_batches([toy_graph(3, 0)], 0))


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


def test_synthetic_modelnet40_deterministic_and_normalised():
    a, b = (data.synthetic_modelnet40(2, 1, seed=3) for _ in range(2))
    c = data.synthetic_modelnet40(2, 1, seed=4)
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
    assert data.synthetic_modelnet40(1, 1, num_points=4096)["test_points"].shape == (40, 4096, 3)


def test_synthetic_modelnet40_classes_are_distinct():
    """A nearest-class-mean classifier on pose-invariant histograms (distance to the centre,
    height) is far above chance (2.5%) but not perfect."""
    d = data.synthetic_modelnet40(seed=0)

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
