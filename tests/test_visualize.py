"""visualize.py on --dry-run runs of both training scripts, made in this process: the two
figures (a PNG of a sane size, the command in its metadata, no absolute path),
the summarize table, the runs each refuses in one `error:` line; and, in a python whose
imports of matplotlib fail, that visualize imports, train_ppi.py runs and --summarize prints,
while drawing ends with one line."""
import json
import os
import shutil
import subprocess
import sys

import pytest

import common
import train_modelnet
import train_ppi
import visualize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_MATPLOTLIB = "error: visualize.py needs matplotlib: pip install matplotlib"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder with runs/modelnet (without and with LSP, --save-epochs 1, one teacher in
    checkpoints/) and runs/ppi, all --dry-run and smaller still (the test's time), made from
    inside it."""
    work = tmp_path_factory.mktemp("work")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        for flags in ([], ["--lsp"]):
            train_modelnet.main(["--dry-run", "--num-points", "32", "--save-epochs", "1",
                                 "--out-dir", "runs/modelnet",
                                 "--teacher-ckpt", "checkpoints/teacher.pt", *flags])
        train_ppi.main(["--dry-run", "--scale", "0.01", "--out-dir", "runs/ppi"])
    common.LOG["file"].close()  # as at the end of a process: later errors go to no run's log
    common.LOG["file"] = None
    return work


def check_png(path, command, size, work):
    """A PNG of `size` pixels holding `command` in its metadata, and no absolute path of
    this machine."""
    from PIL import Image  # a dependency of matplotlib
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == size
        assert im.text["Description"] == command
        assert not any(str(work) in v or ROOT in v for v in im.text.values())
    assert 20_000 < os.path.getsize(path) < 2_000_000


def copy_runs(work, to, lsp=(False, True), teacher=None):
    """Copies of the ModelNet40 runs (their teacher file replaced by `teacher`) -> folders."""
    copies = []
    for i, run in enumerate(sorted((work / "runs" / "modelnet").iterdir())):
        if ("lsp" in run.name) in lsp:
            copy = shutil.copytree(run, to / f"copy{i}_{run.name}")
            res = json.loads((copy / "results.json").read_text())
            res["teacher"]["file"] = teacher or res["teacher"]["file"]
            (copy / "results.json").write_text(json.dumps(res))
            copies.append(str(copy))
    return copies


def test_curves_one_png_per_experiment(work, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(work)
    visualize.main(["curves", "runs", "--out", "figures"])  # found under runs/ recursively
    for experiment in ("ppi", "modelnet"):
        check_png(work / "figures" / f"curves_{experiment}.png",
                  "python visualize.py curves runs --out figures", (1300, 900), work)


def test_structure_draws_fig4(work, monkeypatch):
    """With an absolute path, written relative in the PNG's command."""
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(work)
    visualize.main(["structure", str(work / "runs" / "modelnet"), "--out", "figures"])
    command = "python visualize.py structure runs/modelnet --out figures"
    # 3 objects x 2 students by 1 saved epoch and the teacher: 8 x 10.5 inches at 100 dpi
    check_png(work / "figures" / "fig4_structure.png", command, (800, 1050), work)
    visualize.main(["structure", "runs/modelnet", "--out", "f", "--classes",
                    "synthetic_cube,synthetic_sphere"])  # 2 objects: 7.75 inches high
    check_png(work / "f" / "fig4_structure.png", "python visualize.py structure runs/modelnet "
              "--out f --classes synthetic_cube,synthetic_sphere", (800, 775), work)


def test_summarize_each_method_and_seed(work, capsys):
    train_modelnet.main(["--summarize", str(work / "runs" / "modelnet")])
    train_ppi.main(["--summarize", str(work / "runs" / "ppi")])
    out = capsys.readouterr().out
    for method in ("Student_Full", "Student_lsp_rbf"):
        assert f"\n{method} " in out and f"\n{method}: on the test data by epoch" in out
    assert out.count("seeds [0]") == 3
    assert [line[:6] for line in out.splitlines()].count("    1 ") == 3  # after epoch 1
    assert " macc " in out and "test_f1" in out
    assert len([line for line in out.splitlines() if line.startswith("teacher ")]) == 2


@pytest.mark.parametrize("case, message", [
    ("other experiment", "holds a run of modelnet: summarize it with its own script"),
    ("empty folder", "no results.json in or under"),
])
def test_summarize_refuses_in_one_line(work, tmp_path, capsys, case, message):
    folder = work / "runs" / "modelnet" if case == "other experiment" else tmp_path
    with pytest.raises(SystemExit) as e:
        visualize.summarize(str(folder), "ppi")
    assert str(e.value.code).startswith("error: ") and "\n" not in str(e.value.code)
    assert message in str(e.value.code)
    assert capsys.readouterr().out == ""


def malformed(work, folder, case):
    """A copy of a PPI run whose results.json is made malformed: -> its folder."""
    run = next((work / "runs" / "ppi").iterdir())
    res = json.loads((run / "results.json").read_text())
    edits = {"a list": lambda: [], "no method": lambda: res.pop("method"),
             "older version": lambda: res.pop("structure_by_epoch"),
             "a text score": lambda: res.update(test_f1="high"),
             "no teacher file": lambda: res["teacher"].pop("file"),
             "an epoch without rank_corr": lambda: next(iter(
                 res["structure_by_epoch"].values())).pop("rank_corr")}
    edited = edits[case]()
    (folder / "run").mkdir(parents=True)
    (folder / "run" / "results.json").write_text(json.dumps(edited if case == "a list" else res))
    return folder


MALFORMED = ["a list", "no method", "older version", "a text score", "no teacher file",
             "an epoch without rank_corr"]


@pytest.mark.parametrize("case", MALFORMED)
@pytest.mark.parametrize("tool", ["summarize", "curves"])
def test_malformed_results_are_refused_before_any_output(work, tmp_path, capsys, tool, case):
    folder = str(malformed(work, tmp_path, case))
    with pytest.raises(SystemExit) as e:
        if tool == "summarize":
            train_ppi.main(["--summarize", folder])
        else:
            visualize.main(["curves", folder, "--out", str(tmp_path / "figures")])
    assert str(e.value.code).startswith("error: cannot read ") and "\n" not in str(e.value.code)
    assert "not the results of a run of this version" in str(e.value.code)
    assert capsys.readouterr().out == "" and not (tmp_path / "figures").exists()


def test_null_metrics_are_shown_as_not_available(work, tmp_path, capsys):
    run = shutil.copytree(next((work / "runs" / "ppi").iterdir()), tmp_path / "run")
    res = json.loads((run / "results.json").read_text())
    res["rank_corr"] = None                                     # NaN, as save writes it
    (run / "results.json").write_text(json.dumps(res))
    train_ppi.main(["--summarize", str(tmp_path)])
    assert " n/a " in capsys.readouterr().out


def test_out_an_existing_file_is_one_line(work, tmp_path):
    pytest.importorskip("matplotlib")
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as e:
        visualize.main(["curves", str(work / "runs"), "--out", str(tmp_path / "file")])
    assert str(e.value.code).startswith("error: cannot write ") and "\n" not in str(e.value.code)


@pytest.mark.parametrize("case, message", [
    ("two without LSP", "one run without LSP and at least one with it; got 2 without and 0"),
    ("two teachers", "the runs differ in data, points per cloud or teacher file"),
    ("no teacher", "cannot read the checkpoint gone.pt"),
    ("unknown class", "--classes: no test cloud is of chair, nope"),
])
def test_structure_refuses_in_one_line(work, tmp_path, case, message):
    pytest.importorskip("matplotlib")
    given = {"two without LSP": lambda: copy_runs(work, tmp_path / "a", (False,)) + copy_runs(
                 work, tmp_path / "b", (False,)),
             "two teachers": lambda: copy_runs(work, tmp_path, (False,)) + copy_runs(
                 work, tmp_path, (True,), teacher="checkpoints/other.pt"),
             "no teacher": lambda: copy_runs(work, tmp_path, teacher="gone.pt"),
             "unknown class": lambda: copy_runs(work, tmp_path) + ["--classes", "nope,chair"]
             }[case]()
    with pytest.raises(SystemExit) as e:
        visualize.main(["structure", *given, "--out", str(tmp_path / "figures")])
    assert str(e.value.code).startswith("error: ") and "\n" not in str(e.value.code)
    assert message in str(e.value.code)
    assert not (tmp_path / "figures").exists()


def test_without_matplotlib(tmp_path):
    """In a fresh python where importing matplotlib fails: visualize imports, a PPI dry run
    and its --summarize work, drawing ends with the one line."""
    code = (f"import sys\nsys.modules['matplotlib'] = None\nsys.path.insert(0, {ROOT!r})\n"
            "import train_ppi, visualize\n"
            "assert visualize.plt is None\n"
            "train_ppi.main(['--dry-run', '--scale', '0.01', '--out-dir', 'runs'])\n"
            "train_ppi.main(['--summarize', 'runs'])\n"
            "visualize.main(['curves', 'runs'])\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.splitlines()[-1] == NO_MATPLOTLIB
    assert "Student_Full" in p.stdout and "seeds [0]" in p.stdout
    assert not (tmp_path / "figures").exists()
