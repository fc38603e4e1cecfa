"""visualize.py on the outputs of --dry-run runs (subprocesses): the PNGs it writes (their
header, pixel size and the command in their metadata), the runs it refuses; and that the
core modules and both training scripts run without matplotlib, while visualize.py then
says in one line what is missing."""
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_MATPLOTLIB = "error: visualize.py needs matplotlib: pip install matplotlib"

# Run a script or statement in a python whose imports of matplotlib fail, as without it.
BLOCKER = """
import importlib.abc, os, runpy, sys
class NoMatplotlib(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoMatplotlib())
sys.path.insert(0, ROOT)
"""


def run(script, *args, cwd=ROOT):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def run_without_matplotlib(code, cwd=ROOT):
    return subprocess.run([sys.executable, "-c", f"ROOT = {ROOT!r}\n{BLOCKER}\n{code}"],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def png_info(path):
    """(width, height, {tEXt key: value}) of a PNG file, read from its chunks; fails the
    test when the file is not a PNG or a chunk's CRC is wrong."""
    with open(path, "rb") as f:
        blob = f.read()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pos, size, text = 8, None, {}
    while pos < len(blob):
        length, kind = struct.unpack(">I4s", blob[pos:pos + 8])
        body = blob[pos + 8:pos + 8 + length]
        assert struct.unpack(">I", blob[pos + 8 + length:pos + 12 + length])[0] == \
            zlib.crc32(kind + body), f"bad CRC in {kind} of {path}"
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"tEXt":
            key, value = body.split(b"\0", 1)
            text[key.decode("latin-1")] = value.decode("latin-1")
        pos += 12 + length
        if kind == b"IEND":
            break
    assert size is not None and kind == b"IEND", f"{path} has no IHDR or is truncated"
    return size[0], size[1], text


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Dry runs: ModelNet40 without and with LSP (--save-epochs 1), PPI without and with."""
    out = tmp_path_factory.mktemp("runs")
    for script, flags in (("train_modelnet.py", []), ("train_modelnet.py", ["--lsp"]),
                          ("train_ppi.py", []), ("train_ppi.py", ["--lsp", "--sigma", "auto"])):
        folder = out / ("modelnet" if script == "train_modelnet.py" else "ppi")
        p = run(script, "--dry-run", "--save-epochs", "1", "--out-dir", str(folder), *flags)
        assert p.returncode == 0, p.stderr
    return out


def modelnet_run(runs, lsp):
    (path,) = [p for p in (runs / "modelnet").iterdir() if ("lsp" in p.name) == lsp]
    return path


def copy_pair(runs, to, remove=None, teacher_file=None, older=False):
    """Copies of the ModelNet40 dry runs without and with LSP in `to`, without the file
    `remove`; teacher_file: what their results give as the teacher's file; older: their
    arguments without the teacher's optimiser flags, as runs made before those existed."""
    copies = []
    for lsp in (False, True):
        copy = to / modelnet_run(runs, lsp).name
        shutil.copytree(modelnet_run(runs, lsp), copy)
        if remove:
            os.remove(copy / remove)
        res = json.loads((copy / "results.json").read_text())
        if teacher_file:
            res["teacher"]["file"] = teacher_file
        if older:
            res["args"] = {k: v for k, v in res["args"].items() if k not in (
                "teacher_lr", "teacher_lr_min", "teacher_weight_decay", "teacher_batch_size",
                "teacher_smoothing")}
        (copy / "results.json").write_text(json.dumps(res))
        copies.append(str(copy))
    return copies


def test_structure_draws_fig4(runs, tmp_path):
    pytest.importorskip("matplotlib")
    import visualize
    out = tmp_path / "figures"
    p = run("visualize.py", "structure", str(runs / "modelnet"), "--objects", "2", "--out",
            str(out))
    assert p.returncode == 0, p.stderr
    width, height, text = png_info(out / "fig4_structure.png")
    # 2 objects x 2 runs rows; 1 saved epoch + the teacher columns
    w, h = visualize.fig4_size(objects=2, runs=2, columns=2)
    assert (width, height) == (round(w * visualize.DPI), round(h * visualize.DPI))
    command = (out / "fig4_structure.txt").read_text().strip()
    assert command.startswith("python visualize.py structure ") and "--objects 2" in command
    assert text["Description"] == command


def test_curves_one_png_per_experiment(runs, tmp_path):
    pytest.importorskip("matplotlib")
    import visualize
    out = tmp_path / "figures"
    p = run("visualize.py", "curves", str(runs), "--out", str(out))  # found recursively
    assert p.returncode == 0, p.stderr
    for experiment in ("ppi", "modelnet"):
        width, height, text = png_info(out / f"curves_{experiment}.png")
        assert (width, height) == tuple(round(v * visualize.DPI) for v in visualize.CURVES_SIZE)
        command = (out / f"curves_{experiment}.txt").read_text().strip()
        assert command == f"python visualize.py curves {runs} --out {out}"
        assert text["Description"] == command


@pytest.mark.parametrize("case, message", [
    ("ppi", "is a run of ppi; structure draws ModelNet40 runs"),
    ("only_full", "one run without LSP and at least one with it; got 1 without and 0 with"),
    ("no_snapshots", "has no saved epochs: run train_modelnet.py with --save-epochs"),
    ("no_teacher", "give its path with --teacher-ckpt"),
])
def test_structure_refuses_in_one_line(runs, tmp_path, case, message):
    pytest.importorskip("matplotlib")
    given = {"ppi": lambda: [runs / "ppi"],
             "only_full": lambda: [modelnet_run(runs, lsp=False)],
             "no_snapshots": lambda: copy_pair(runs, tmp_path, remove="student_epoch001.pt"),
             "no_teacher": lambda: copy_pair(runs, tmp_path, remove="teacher.pt",
                                             teacher_file="checkpoints/missing.pt")}[case]()
    p = run("visualize.py", "structure", *map(str, given), "--out", str(tmp_path / "out"))
    assert p.returncode != 0
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("error: "), p.stderr
    assert message in p.stderr
    assert not (tmp_path / "out").exists()


def test_teacher_ckpt_override(runs, tmp_path):
    pytest.importorskip("matplotlib")
    given = copy_pair(runs, tmp_path, remove="teacher.pt", teacher_file="checkpoints/missing.pt")
    teacher = modelnet_run(runs, lsp=False) / "teacher.pt"
    p = run("visualize.py", "structure", *given, "--objects", "1", "--out",
            str(tmp_path / "out"), "--teacher-ckpt", str(teacher))
    assert p.returncode == 0, p.stderr
    assert png_info(tmp_path / "out" / "fig4_structure.png")[0] > 0


def test_without_matplotlib(tmp_path):
    """The core modules import and both training scripts run a --dry-run with every import
    of matplotlib failing; visualize.py then exits with the one line."""
    p = run_without_matplotlib(
        "import lsp_kd, models, data, synthetic, experiment, train_ppi, train_modelnet\n"
        "assert not any(m.split('.')[0] == 'matplotlib' for m in sys.modules)")
    assert p.returncode == 0, p.stderr
    for script in ("train_ppi.py", "train_modelnet.py"):
        p = run_without_matplotlib(
            f"sys.argv = [{script!r}, '--dry-run', '--out-dir', {str(tmp_path)!r}]\n"
            f"runpy.run_path(os.path.join(ROOT, {script!r}), run_name='__main__')")
        assert p.returncode == 0, p.stderr
    p = run_without_matplotlib(
        f"sys.argv = ['visualize.py', 'curves', {str(tmp_path)!r}]\n"
        "runpy.run_path(os.path.join(ROOT, 'visualize.py'), run_name='__main__')")
    assert p.returncode != 0
    assert p.stderr == NO_MATPLOTLIB + "\n"


def test_blocker_blocks():
    """The test above could fail: under the blocker, importing matplotlib raises."""
    p = run_without_matplotlib("import matplotlib.pyplot")
    assert p.returncode != 0 and "ModuleNotFoundError" in p.stderr


def test_no_core_file_imports_matplotlib():
    """Also an import that a dry run would not reach: only visualize.py imports matplotlib."""
    for name in ("lsp_kd.py", "models.py", "data.py", "synthetic.py", "experiment.py",
                 "train_ppi.py", "train_modelnet.py", "bench.py"):
        with open(os.path.join(ROOT, name)) as f:
            assert not re.search(r"^\s*(import|from)\s+matplotlib", f.read(), re.M), name


def test_distances_and_rank_corr_against_references():
    """Fig. 4's numbers: distances against a loop over the points; ρ against SciPy."""
    import scipy.stats
    import torch
    import visualize
    from models import dgcnn_student
    torch.manual_seed(0)
    model, pts, red = dgcnn_student().eval(), torch.randn(2, 32, 3), torch.tensor([3, 17])
    d = visualize.distances(model, pts, red, -1)                               # (B, P)
    with torch.no_grad():
        feat = model.edge_features(pts)[-1][0].view(2, 32, -1)                  # (B, P, F)
    for b in range(2):
        ref = torch.stack([(feat[b, i] - feat[b, red[b]]).norm() for i in range(32)])
        torch.testing.assert_close(d[b], ref / ref.max())
        assert d[b, red[b]] == 0 and d[b].max() == 1
    a, b = torch.rand(50), torch.rand(50)
    assert abs(visualize.rank_corr(a, b) - scipy.stats.spearmanr(a, b)[0]) < 1e-9


def test_mean_std_by_epoch():
    """The curves' numbers: over seeds, per epoch; ModelNet40's last epoch from the results;
    a non-finite value left out and counted."""
    import visualize
    runs = [{"experiment": "modelnet", "args": {"epochs": 15}, "rank_corr": r15,
             "structure_by_epoch": {"0": {"rank_corr": 0.1}, "1": {"rank_corr": r1},
                                    "5": {"rank_corr": r5}}}
            for r1, r5, r15 in ((0.2, 0.4, 0.5), (0.4, float("nan"), 0.7))]
    epochs, mean, std, bad = visualize.mean_std_by_epoch(runs, "rank_corr")
    assert epochs.tolist() == [0, 1, 5, 15] and bad == 1  # 0: before training
    assert mean.tolist() == pytest.approx([0.1, 0.3, 0.4, 0.6])
    assert std.tolist() == pytest.approx([0.0, 0.1, 0.0, 0.1])
    ppi = [{**run, "experiment": "ppi"} for run in runs]  # PPI's results: best-validation epoch
    assert visualize.mean_std_by_epoch(ppi, "rank_corr")[0].tolist() == [0, 1, 5]


def test_a_run_found_twice_counts_once(runs):
    pytest.importorskip("matplotlib")
    import visualize
    once = visualize.find_runs([str(runs)])
    assert len(once) > 1
    assert visualize.find_runs([str(runs), once[0][0]]) == once  # a run folder, and above it


def test_structure_draws_runs_made_before_the_teachers_own_flags(runs, tmp_path):
    pytest.importorskip("matplotlib")
    given = copy_pair(runs, tmp_path, older=True)
    p = run("visualize.py", "structure", *given, "--objects", "1", "--out",
            str(tmp_path / "out"))
    assert p.returncode == 0, p.stderr
    assert png_info(tmp_path / "out" / "fig4_structure.png")[0] > 0
