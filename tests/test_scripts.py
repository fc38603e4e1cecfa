"""The two scripts end to end, in-process (`main(argv)`): every method on tiny synthetic data,
what a run writes, its one-line errors, a seeded run repeating bit for bit, a stopped run
resuming to the same results, a finished run's results kept, the teacher trained once and
reused only for its own settings and data, checkpoints read as weights only, the inert-LSP
warning; each script's training step against Eq. (7) of the lsp_kd losses, and the scripts'
metrics against hand-computed values."""
import glob
import itertools
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

import common
import data
import lsp_kd
import models
import structure
import synthetic
import train_modelnet
import train_ppi
from test_data import need_real, write_fake_modelnet

SCRIPTS = {"ppi": train_ppi, "modelnet": train_modelnet}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Every test in its own folder: checkpoints/ and runs/ land there."""
    monkeypatch.chdir(tmp_path)


def run(script, *argv, capsys=None):
    """main(argv) of a script -> its results.json (the one run under --out-dir, or under
    runs/ when none is given)."""
    SCRIPTS[script].main(list(argv))
    out = argv[argv.index("--out-dir") + 1] if "--out-dir" in argv else "runs"
    (path,) = glob.glob(os.path.join(out, "**", "results.json"), recursive=True)
    with open(path) as f:
        return json.load(f)


def error_line(capsys, call, status=None, lines=1):
    """call() must end with SystemExit and one `error:` line on stderr (a data error's
    explanation takes more lines); -> what it printed."""
    with pytest.raises(SystemExit) as exit_:
        call()
    err = capsys.readouterr().err.strip() or str(exit_.value.code)
    assert exit_.value.code not in (0, None) and (status is None or exit_.value.code == status)
    assert "Traceback" not in err and len(err.splitlines()) == lines, err
    assert err.startswith("error: "), err
    return err


# ----------------------------------------------------------------------------------------
# Every method, what a run writes

TERM = {"--lsp": "lsp", "--official": "lsp", "--kd": "kd", "--at": "at", "--fitnet": "fitnet",
        "--hkd": "hkd"}


@pytest.mark.parametrize("script, flags, method", [
    ("ppi", [], "Student_Full"),
    ("ppi", ["--lsp"], "Student_lsp_rbf"),
    ("ppi", ["--lsp", "--sigma", "auto"], "Student_lsp_rbf-sigmaauto"),
    ("ppi", ["--lsp", "--kernel", "poly"], "Student_lsp_poly"),
    ("ppi", ["--official"], "Student_lsp_official"),
    ("ppi", ["--kd", "--at", "--fitnet", "--hkd"], "Student_kd+at+fitnet+hkd"),
    ("modelnet", [], "Student_Full"),
    ("modelnet", ["--lsp", "--kernel", "l2"], "Student_lsp_l2"),
    ("modelnet", ["--lsp", "--sigma", "auto", "--variant", "layers"],
     "Student[layers]_lsp_rbf-sigmaauto"),
    ("modelnet", ["--kd", "--at", "--fitnet", "--hkd"], "Student_kd+at+fitnet+hkd"),
])
def test_dry_run(script, flags, method, capsys):
    res = run(script, "--dry-run", "--out-dir", "out", *flags)
    out = capsys.readouterr().out
    assert res["method"] == method and res["synthetic"] is True and res["seed"] == 0
    assert res["data"] == {"ppi": "synthetic-scale0.03", "modelnet": "synthetic-1x1"}[script]
    assert all(line.startswith("[synthetic] ") for line in out.splitlines())
    (run_dir,) = glob.glob("out/*")
    assert sorted(os.listdir(run_dir)) == ["args.json", "ckpt.pt", "log.txt", "results.json",
                                           "teacher.pt"]
    with open(os.path.join(run_dir, "log.txt")) as f:              # all that was printed
        assert [line for line in f.read().splitlines() if "warning: " not in line] == \
            out.splitlines()
    terms = {TERM[f] for f in flags if f in TERM}
    for term in TERM.values():                                     # a column per term
        assert (f"| {term} " in out) == (term in terms)
    score = "test_f1" if script == "ppi" else "acc"
    for metrics in (res, res["structure_by_epoch"]["0"], res["structure_by_epoch"]["1"]):
        assert 0 <= metrics[score] <= 1 and metrics["ls_kl"] >= 0 and metrics["ls_kl_auto"] > 0
        assert -1 <= metrics["rank_corr"] <= 1
    assert (res["teacher"]["structure"] is None) == ("lsp" not in method)


def test_help_shows_every_flag_with_its_default(capsys):
    for script in SCRIPTS.values():
        with pytest.raises(SystemExit):
            script.main(["--help"])
        text = capsys.readouterr().out
        flags = [w for w in text.split() if w.startswith("--")]
        assert len(set(flags)) <= 26 and "(default: 100.0)" in text  # λ = 100, the paper's


LSP_AT_FITNET = ["--lsp", "--sigma", "2", "--lsp-weight", "7", "--at", "--fitnet"]
ALL_TERMS = [*LSP_AT_FITNET, "--kd", "--hkd"]


def eq7(terms, task):
    """Eq. (7) with the flags above and the scripts' weights: KD mixes with the task loss as
    (1 - α) and α = 0.1, λ = 7, AT weighs 1000, FitNet 1, HKD 0.1."""
    return ((0.9 if "kd" in terms else 1.0) * terms[task] + 0.1 * terms.get("kd", 0)
            + 7 * terms["lsp"] + 1000 * terms["at"] + terms["fitnet"] + 0.1 * terms.get("hkd", 0))


def check_step(step, want, task, modules):
    """step() runs train_step; its terms, loss and gradients (of every parameter in modules)
    must be those of want, the terms computed here with autograd on the same inputs."""
    params = [p for m in modules for p in m.parameters()]
    grads = torch.autograd.grad(eq7(want, task), params)
    got = step(torch.optim.SGD(params, lr=0.0))                # lr 0: the weights stay
    assert set(got) == {"loss", *want}
    for k, v in want.items():
        assert got[k] == pytest.approx(v.item(), rel=1e-5, abs=1e-7), k
    assert got["loss"] == pytest.approx(eq7(want, task).item(), rel=1e-5)
    for p, g in zip(params, grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


def test_a_ppi_training_step_is_eq7_of_the_losses_it_names():
    """train_step's terms are the lsp_kd losses on the step's inputs, taken from the teacher's
    per-graph outputs as the script caches and stacks them (LSP from the cached log LS^t);
    its loss is Eq. (7) of them, and it back-propagates that loss."""
    args = train_ppi.get_args(ALL_TERMS)
    graphs = synthetic.synthetic_ppi(scale=0.03)["train"]
    (idx, g), = itertools.islice(data.ppi_batches(graphs, 2), 1)
    torch.manual_seed(0)
    student, teacher = models.gat_student(), models.GAT(50, [8], [2, 2], 121).eval()
    out_t = train_ppi.stack(train_ppi.teacher_outputs(teacher, graphs, args), idx)
    F_s = student.layers[-2].heads * student.layers[-2].out_dim
    learned = {"regressor": torch.nn.Linear(F_s, 16), "hkd": lsp_kd.HolisticMaps(F_s, 16)}
    with torch.no_grad():
        feats_t, logits_t = teacher(g.x, g.edge_index, return_feats=True)   # on the batch
    feats, logits = student(g.x, g.edge_index, return_feats=True)
    f_s, f_t = feats[-1], feats_t[-1]
    want = {"bce": F.binary_cross_entropy_with_logits(logits, g.y),
            "kd": lsp_kd.kd_loss(logits, logits_t, T=4.0, multilabel=True),
            "lsp": lsp_kd.lsp_loss(f_s, f_t, g.edge_index, "rbf", 2.0),
            "at": lsp_kd.at_loss(f_s, f_t, g.batch),
            "fitnet": lsp_kd.fitnet_loss(f_s, f_t, learned["regressor"]),
            "hkd": lsp_kd.hkd_loss(f_s, f_t, learned["hkd"])}
    check_step(lambda opt: train_ppi.train_step(student, g, out_t, args, opt, learned, 0),
               want, "bce", [student, *learned.values()])


@pytest.mark.parametrize("flags", [LSP_AT_FITNET, ALL_TERMS])   # without KD and HKD, the
def test_a_modelnet_training_step_is_eq7_of_the_losses_it_names(flags):  # teacher's head idles
    """The same for ModelNet40, where LSP runs over E^u = E^s ∪ E^t (Sec. 3.5) and HKD on
    the pooled features."""
    args = train_modelnet.get_args(flags)
    torch.manual_seed(0)
    small = {"emb_dim": 32, "mlp": (16,), "k": 4, "num_classes": 5}
    student = models.DGCNN(edge_dims=(8, 8), **small)
    teacher = models.DGCNN(edge_dims=(8, 12), **small).eval().requires_grad_(False)
    pts, labels = torch.randn(9, 24, 3), torch.arange(9) % 5
    learned = {"regressor": torch.nn.Linear(8, 12)}
    if args.hkd:
        learned["hkd"] = lsp_kd.HolisticMaps(student.global_dim, teacher.global_dim)
    torch.manual_seed(1)                                      # the head's dropout
    feats, pooled = student.embed(pts)
    logits = student.head(pooled)
    feats_t, pooled_t = teacher.embed(pts)
    (f_s, ei_s), (f_t, ei_t) = feats[-1], feats_t[-1]         # the last EdgeConv of each
    want = {"ce": F.cross_entropy(logits, labels, label_smoothing=0.2),
            "lsp": lsp_kd.lsp_loss(f_s, f_t, lsp_kd.union_graph(ei_s, ei_t, 9 * 24), "rbf", 2.0),
            "at": lsp_kd.at_loss(f_s, f_t, torch.arange(9).repeat_interleave(24)),
            "fitnet": lsp_kd.fitnet_loss(f_s, f_t, learned["regressor"])}
    if args.hkd:
        want["kd"] = lsp_kd.kd_loss(logits, teacher.head(pooled_t), T=4.0)
        want["hkd"] = lsp_kd.hkd_loss(pooled, pooled_t, learned["hkd"])

    def step(opt):
        torch.manual_seed(1)
        return train_modelnet.train_step(student, teacher, pts, labels, args, opt, learned, 0)
    check_step(step, want, "ce", [student, *learned.values()])


def test_micro_f1_hand_computed():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3], [-3.0, 0.0]])
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # TP (0,0), (1,1); FP (1,0); FN (2,0), (2,1) (a logit of 0 is not > 0): 4 / (4 + 1 + 2)
    assert train_ppi.micro_f1(logits, y) == pytest.approx(4 / 7)
    assert train_ppi.micro_f1(torch.ones(2, 3), torch.ones(2, 3)) == 1.0
    assert train_ppi.micro_f1(-torch.ones(2, 3), torch.ones(2, 3)) == 0.0


def test_accuracy_and_mean_class_accuracy():
    pred, labels = torch.tensor([0, 0, 1, 2, 2, 2]), torch.tensor([0, 1, 1, 2, 2, 0])
    acc, macc = train_modelnet.accuracy(pred, labels)
    assert acc == pytest.approx(4 / 6) and macc == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    labels, pred = torch.zeros(160, dtype=torch.long), (torch.arange(160) >= 133).long()
    assert train_modelnet.accuracy(pred, labels) == (133 / 160, 133 / 160)  # exact fractions


def test_every_batch_is_trained_and_its_progress_shown(monkeypatch, capsys):
    seen = []

    def spy(batches, total, what):  # every batch of the epoch, and no more, is passed on
        batches = list(batches)
        seen.append((len(batches), total))
        return progress(iter(batches), total, what)
    progress = common.progress
    monkeypatch.setattr(common, "progress", spy)
    run("ppi", "--data", "synthetic", "--scale", "0.03", "--teacher-epochs", "1", "--epochs", "1",
        "--out-dir", "a")
    run("modelnet", *MODELNET_SHORT[:8], "--teacher-epochs", "1", "--epochs", "1", "--out-dir", "b")
    assert seen == [(10, 10), (10, 10), (1, 1), (1, 1)]  # 20 graphs by 2; 40 clouds by 32
    monkeypatch.setattr(common, "PROGRESS_EVERY", 0)   # a log file: plain lines
    monkeypatch.setattr(common, "LOG", {"file": None, "tag": ""})
    capsys.readouterr()
    assert list(progress(iter(range(5)), 3, "epoch 007")) == [0, 1, 2]
    assert [line.split(",")[0] for line in capsys.readouterr().out.splitlines()] == [
        "epoch 007: 1/3 batches", "epoch 007: 2/3 batches"]
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)  # a terminal: one line redrawn
    list(progress(iter(range(3)), 3, "epoch 008"))
    out = capsys.readouterr().out
    assert out.startswith("\r\033[Kepoch 008: 1/3 batches, ") and out.endswith("\r\033[K")
    assert out.count("\r\033[K") == 4 and "\n" not in out  # 3 lines, then wiped


def test_a_balanced_draw_of_the_real_training_clouds(tmp_path, capsys):
    truth = write_fake_modelnet(tmp_path / "d", (40, 39), (40,), P=32)  # the release's layout
    short = ["--data", "modelnet40", "--data-dir", str(tmp_path / "d"), "--num-points", "32",
             "--teacher-epochs", "1", "--epochs", "1"]
    res = run("modelnet", *short, "--train-per-class", "1", "--out-dir", "a")
    out, present = capsys.readouterr().out, set(truth["train"][1].tolist())
    assert res["data"] == "modelnet40-1perclass" and res["synthetic"] is False
    assert "[synthetic]" not in out and f"train {len(present)} clouds (of 79), test 40" in out
    missing = ", ".join(f"class{c}" for c in range(40) if c not in present)
    assert f"--train-per-class 1: fewer in {missing}; all taken" in out
    err = error_line(capsys, lambda: train_modelnet.main([*short, "--train-per-class", "0"]))
    assert "--train-per-class must be >= 1" in err
    write_fake_modelnet(tmp_path / "e", train=(20,), test=(4,), P=32)
    err = error_line(capsys, lambda: train_modelnet.main([*short[:3], str(tmp_path / "e"),
                                                          *short[4:]]))
    assert "20 training clouds, fewer than a batch (32)" in err


def test_a_dry_run_on_the_real_modelnet40_bears_its_name(capsys):
    res = run("modelnet", "--data", "modelnet40", "--data-dir",  # the real folder, when here
              str(need_real("modelnet40_1024")), "--dry-run", "--out-dir", "c")
    assert res["data"] == "modelnet40-1perclass" and res["synthetic"] is False
    assert "train 40 clouds (of 9843), test 2468; 128 of each cloud's 1024 points" in \
        capsys.readouterr().out


# ----------------------------------------------------------------------------------------
# One line for a bad input

@pytest.mark.parametrize("script, flags, says", [
    ("ppi", ["--epochs", "0"], "--epochs must be >= 1"),
    ("ppi", ["--lr", "0"], "--lr must be in (0, 100]"),
    ("ppi", ["--lr", "nan"], "--lr must be"),
    ("ppi", ["--lsp", "--lsp-weight", "-1"], "--lsp-weight must be"),
    ("ppi", ["--lsp", "--sigma", "0"], "--sigma must be"),
    ("ppi", ["--lsp", "--sigma", "inf"], "--sigma must be"),
    ("ppi", ["--lsp", "--sigma", "big"], "--sigma"),
    ("ppi", ["--sigma", "auto"], "would do nothing without --lsp"),
    ("ppi", ["--kernel", "poly"], "would do nothing without --lsp"),
    ("ppi", ["--lsp", "--kernel", "poly", "--sigma", "2"], "--sigma would do nothing"),
    ("ppi", ["--official", "--kernel", "l2"], "--official sets"),
    ("ppi", ["--scale", "0"], "--scale must be in (0, 1]"),
    ("ppi", ["--seed", "-1"], "--seed must be"),
    ("ppi", ["--kernel", "cosine"], "invalid choice"),
    ("modelnet", ["--num-points", "20"], "--num-points must be > 20"),
    ("modelnet", ["--save-epochs", "2"], "--save-epochs must be epochs in [1, --epochs = 1]"),
    ("modelnet", ["--official"], "unrecognized arguments: --official"),
    ("modelnet", ["--data", "modelnet40", "--test-per-class", "3"],
     "--test-per-class must be in [1, 1000] with synthetic data, left out with real data"),
    ("ppi", ["--lr", "1e38"], "--lr must be in (0, 100]"),                # odd values
    ("ppi", ["--lsp", "--lsp-weight", "1e38"], "--lsp-weight must be in [0, 1e6]"),
    ("modelnet", ["--lsp", "--sigma", "1e-30"], "--sigma must be in [1e-15, 1e15], or auto"),
    ("modelnet", ["--train-per-class", "100000000"],                     # sizes that cannot fit
     "--train-per-class must be >= 1, and at most 1000 with synthetic data"),
    ("modelnet", ["--num-points", "1000000000"], "at most 2048 with synthetic data"),
])
def test_bad_flags_end_in_one_error_line(script, flags, says, capsys):
    err = error_line(capsys, lambda: SCRIPTS[script].main(["--dry-run", *flags]), status=2)
    assert says in err
    assert not os.path.exists("runs")                          # refused before any run


@pytest.mark.parametrize("error", [MemoryError("Unable to allocate 30 GiB"), MemoryError(),
                                   RuntimeError("[enforce fail] DefaultCPUAllocator: can't "
                                                "allocate memory: you tried to allocate 9 GB")])
def test_a_failed_allocation_ends_in_one_error_line(error, capsys):
    def main():
        raise error
    assert "out of memory" in error_line(capsys, lambda: common.main_guard(main))
    with pytest.raises(RuntimeError, match="a bug"):                   # other errors stay
        common.main_guard(lambda: (_ for _ in ()).throw(RuntimeError("a bug")))


def test_a_second_ctrl_c_while_exiting_is_ignored(monkeypatch, capsys):
    def interrupt():
        raise KeyboardInterrupt
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):
            common.main_guard(interrupt)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, handler)


@pytest.mark.parametrize("script", ["train_ppi.py", "train_modelnet.py", "bench.py",
                                    "visualize.py"])
def test_ctrl_c_while_torch_loads_is_one_line(script):
    """Ctrl-C while the script imports (made here by an import of torch that raises it)."""
    code = ("import builtins, runpy, sys; real = builtins.__import__\n"
            "def fake(name, *a, **k):\n"
            "    if name == 'torch' or name == 'numpy': raise KeyboardInterrupt\n"
            "    return real(name, *a, **k)\n"
            f"builtins.__import__ = fake; sys.argv = ['{script}']\n"
            f"runpy.run_path({os.path.join(ROOT, script)!r}, run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode != 0 and out.stderr.strip() == "interrupted", out.stderr


def test_a_long_teacher_file_name_is_refused_before_training(capsys):
    err = error_line(capsys, lambda: train_ppi.main(["--dry-run", "--teacher-ckpt",
                                                     "t" * 250 + ".pt"]))
    assert "the file name is 253 characters long; at most 240" in err
    assert not glob.glob("runs/**/*.pt", recursive=True)                   # nothing trained


def test_a_killed_save_leaves_no_temp_file_behind():
    """A save's temp file whose process is gone is removed by the next save of that file;
    a live process's (this one's parent) is left alone."""
    for pid in (2 ** 22 + 12345, 2 ** 22 + 12346, os.getppid(), 10 ** 30):  # gone; alive
        with open(f"r.json.tmp{pid}", "w") as f:
            f.write("{")
    old = time.time() - 120                     # written 2 minutes ago: not being written
    for pid in (2 ** 22 + 12345, os.getppid(), 10 ** 30):
        os.utime(f"r.json.tmp{pid}", (old, old))
    common.save({"a": 1}, "r.json")
    assert sorted(glob.glob("r.json*")) == sorted(["r.json", f"r.json.tmp{os.getppid()}",
                                                   f"r.json.tmp{2 ** 22 + 12346}",
                                                   f"r.json.tmp{10 ** 30}"])


def test_a_diverged_model_refused_by_the_losses_is_one_line(capsys):
    def main():                                 # the student's features overflow the kernel
        lsp_kd.lsp_loss(torch.linspace(-1e30, 1e30, 12).view(4, 3), torch.ones(4, 3),
                        torch.tensor([[0, 1], [1, 0]]), "l2")
    assert "overflows" in error_line(capsys, lambda: common.main_guard(main))
    with pytest.raises(ValueError, match="mine"):                        # not the losses'
        common.main_guard(lambda: (_ for _ in ()).throw(ValueError("mine")))


def test_nan_is_written_as_null(capsys):
    common.save({"rank_corr": float("nan"), "by_epoch": {"1": [1.0, float("inf")]}}, "r.json")
    with open("r.json") as f:
        assert json.load(f) == {"rank_corr": None, "by_epoch": {"1": [1.0, None]}}


def test_a_student_run_under_another_lr_starts_anew(capsys):
    for lr in ("0.005", "0.01"):                     # the second: not a resume of the first
        train_ppi.main(["--dry-run", "--teacher-ckpt", "t.pt", "--out-dir", "a", "--lr", lr])
    lrs = []
    for path in glob.glob("a/*/results.json"):                              # two run folders
        with open(path) as f:
            lrs.append(json.load(f)["args"]["lr"])
    assert sorted(lrs) == [0.005, 0.01] and "resuming" not in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")
def test_cuda_without_a_gpu(capsys):
    assert "--device cuda" in error_line(capsys, lambda: train_ppi.main(["--dry-run",
                                                                           "--device", "cuda"]))


@pytest.mark.parametrize("script, folder, release", [
    ("ppi", "--data-dir", "ppi.zip"),
    ("modelnet", "--data-dir", "modelnet40_ply_hdf5_2048.zip")])
def test_broken_data_ends_in_one_error_line(script, folder, release, capsys):
    os.makedirs("d")
    with open(os.path.join("d", release), "wb") as f:         # a release zip that is not one
        f.write(b"not a zip" * 10)
    data = "ppi" if script == "ppi" else "modelnet40"
    err = error_line(capsys, lambda: SCRIPTS[script].main(["--data", data, folder, "d"]),
                     lines=3)
    assert release in err and "--data synthetic" in err
    assert not glob.glob("runs/**/results.json", recursive=True)


def test_a_diverged_student_ends_in_one_error_line(capsys, monkeypatch):
    def diverge(opt, *args):                                  # every weight becomes inf
        for group in opt.param_groups:
            for p in group["params"]:
                p.data.fill_(float("inf"))
    run("ppi", "--dry-run", "--teacher-ckpt", "t.pt")          # the teacher, trained well
    monkeypatch.setattr(torch.optim.Adam, "step", diverge)
    err = error_line(capsys, lambda: train_ppi.main(["--dry-run", "--teacher-ckpt", "t.pt",
                                                     "--seed", "1"]))
    assert "the student's" in err
    assert "diverged" in err
    (log,) = glob.glob("runs/ppi/*seed1*/log.txt")
    with open(log) as f:
        assert f.read().splitlines()[-1].endswith(err)       # also the log's last line
    assert len(glob.glob("runs/**/results.json", recursive=True)) == 1  # the first run's


def test_ctrl_c_ends_in_one_line_and_status_130(monkeypatch, capsys):
    def interrupt(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(train_ppi, "train_step", interrupt)
    with pytest.raises(SystemExit) as exit_:
        common.main_guard(lambda: train_ppi.main(["--dry-run"]))
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 130 and err.startswith("interrupted: rerun the same command")


def test_a_long_run_says_so_after_its_first_epoch(monkeypatch, capsys):
    clock = iter(range(0, 10 ** 9, 4000))                     # 4000 s between two readings
    monkeypatch.setattr(common.time, "time", lambda: next(clock))
    run("ppi", "--dry-run", "--teacher-epochs", "1")
    err = capsys.readouterr().err
    assert "warning: at this pace the teacher needs" in err and "hours" in err


# ----------------------------------------------------------------------------------------
# Repeats, resumes, keeps its results

def strip(res):
    """results.json without the names of the files it was written to."""
    return {**{k: v for k, v in res.items() if k not in ("args", "command")},
            "teacher": {k: v for k, v in res["teacher"].items() if k != "file"}}


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_seeded_command_repeats_bit_for_bit(script):
    a = run(script, "--dry-run", "--lsp", "--fitnet", "--out-dir", "a")
    b = run(script, "--dry-run", "--lsp", "--fitnet", "--out-dir", "b")
    assert strip(a) == strip(b)
    assert run(script, "--dry-run", "--seed", "1", "--out-dir", "c")["seed"] == 1


@pytest.mark.parametrize("flags", [["--lsp", "--sigma", "auto", "--at", "--kd", "--fitnet"],
                                   ["--lsp", "--kernel", "poly", "--hkd"]])
@pytest.mark.parametrize("script", SCRIPTS)
def test_no_read_of_uninitialised_memory(script, flags, monkeypatch):
    """pick_device turns off deterministic mode's NaN-filling of new tensors (for speed): with
    it on, where a read of uninitialised memory would show, a seeded run gives the same."""
    monkeypatch.setattr(torch.utils.deterministic, "fill_uninitialized_memory", False)
    a = run(script, "--dry-run", "--device", "cpu", *flags, "--out-dir", "a")
    assert torch.utils.deterministic.fill_uninitialized_memory is False
    pick_device = common.pick_device

    def filling(name):
        device = pick_device(name)
        torch.utils.deterministic.fill_uninitialized_memory = True
        return device
    monkeypatch.setattr(common, "pick_device", filling)
    assert strip(a) == strip(run(script, "--dry-run", "--device", "cpu", *flags, "--out-dir", "b"))


PPI_SHORT = ["--data", "synthetic", "--scale", "0.03", "--teacher-epochs", "6", "--epochs", "7",
             "--lsp", "--sigma", "auto", "--fitnet"]
MODELNET_SHORT = ["--data", "synthetic", "--train-per-class", "1", "--test-per-class", "1",
                  "--num-points", "32", "--teacher-epochs", "6", "--epochs", "7", "--kd",
                  "--lsp", "--hkd"]


@pytest.mark.parametrize("script, argv", [("ppi", PPI_SHORT), ("modelnet", MODELNET_SHORT)])
def test_a_stopped_run_resumes_to_the_same_results(script, argv, monkeypatch, capsys):
    """Stopped in the teacher's 6th epoch, then in the student's 7th: each rerun goes on from
    the checkpoint saved after epoch 5, and the results are those of a run never stopped."""
    whole = run(script, *argv, "--out-dir", "whole", "--teacher-ckpt", "whole.pt")
    module, step = SCRIPTS[script], SCRIPTS[script].train_step
    for stop_in in ("teacher", "student"):
        def stopping_step(model, *args):
            teacher = sum(p.numel() for p in model.parameters()) > 10 ** 6  # the paper's: 1.8M+
            if args[-1] == 5 and teacher == (stop_in == "teacher"):     # epoch 5 (from 0)
                raise KeyboardInterrupt
            return step(model, *args)
        monkeypatch.setattr(module, "train_step", stopping_step)
        with pytest.raises(KeyboardInterrupt):
            module.main([*argv, "--out-dir", "parts", "--teacher-ckpt", "parts.pt"])
    monkeypatch.setattr(module, "train_step", step)
    capsys.readouterr()
    parts = run(script, *argv, "--out-dir", "parts", "--teacher-ckpt", "parts.pt")
    out = capsys.readouterr().out
    assert "resuming the student from" in out and "5 of 7 epochs done" in out
    assert "teacher epoch" not in out                       # the teacher was complete
    assert strip(parts) == strip(whole)
    teachers = [torch.load(f)["modules"]["model"] for f in ("parts.pt", "whole.pt")]
    assert all(torch.equal(teachers[0][k], teachers[1][k]) for k in teachers[0])


def test_a_finished_run_keeps_its_results(monkeypatch, capsys):
    first = run("ppi", "--dry-run", "--lsp")
    (path,) = glob.glob("runs/**/results.json", recursive=True)
    before = open(path, "rb").read()

    def interrupt(*args):
        raise KeyboardInterrupt
    evaluate = train_ppi.evaluate
    monkeypatch.setattr(train_ppi, "evaluate", interrupt)  # a rerun stopped at once
    with pytest.raises(KeyboardInterrupt):
        train_ppi.main(["--dry-run", "--lsp"])
    assert open(path, "rb").read() == before
    monkeypatch.setattr(train_ppi, "evaluate", evaluate)
    capsys.readouterr()
    again = run("ppi", "--dry-run", "--lsp")                 # nothing left to train
    assert "epoch 000" not in capsys.readouterr().out and again == first


# ----------------------------------------------------------------------------------------
# The teacher: trained once, reused only for its settings and data, read as weights only

def test_the_teacher_is_trained_once_and_reused_for_the_same_data(capsys):
    short = ["--data", "synthetic", "--scale", "0.03", "--teacher-epochs", "1", "--epochs", "1"]
    run("ppi", *short, "--out-dir", "a")
    assert "teacher epoch 000" in capsys.readouterr().out
    run("ppi", *short, "--kd", "--seed", "3", "--out-dir", "b")
    out = capsys.readouterr().out
    assert "teacher epoch" not in out and "teacher from checkpoints/ppi_teacher_" in out
    run("ppi", *short[:3], "0.02", *short[4:], "--out-dir", "c")  # other data: another one
    assert "teacher epoch 000" in capsys.readouterr().out
    assert len(glob.glob("checkpoints/*.pt")) == 2


def test_a_teacher_of_other_data_or_settings_is_refused(capsys):
    run("ppi", "--dry-run", "--teacher-ckpt", "t.pt", "--out-dir", "a")
    err = error_line(capsys, lambda: train_ppi.main(["--dry-run", "--scale", "0.02",
                                                     "--teacher-ckpt", "t.pt"]))
    assert "t.pt" in err and "data" in err
    short = ["--data", "synthetic", "--scale", "0.03", "--epochs", "1", "--teacher-ckpt", "u.pt"]
    run("ppi", *short, "--teacher-epochs", "1", "--out-dir", "b")
    err = error_line(capsys, lambda: train_ppi.main([*short, "--teacher-epochs", "2"]))
    assert "u.pt" in err and "epochs" in err
    err = error_line(capsys, lambda: train_modelnet.main(["--dry-run", "--teacher-ckpt",
                                                          "t.pt"]))
    assert "experiment" in err


def test_the_digest_tells_shapes_types_and_splits_apart():
    a = torch.arange(6)
    digests = {common.digest(a.view(2, 3)), common.digest(a.view(3, 2)),
               common.digest(a[:1], a[1:]), common.digest(a[:2], a[2:]),
               common.digest(torch.zeros(2, dtype=torch.int32)),
               common.digest(torch.zeros(1, dtype=torch.int64))}
    assert len(digests) == 6 and common.digest(a.view(2, 3)) == common.digest(a.view(2, 3))


class Payload:
    """Pickled, it would print when loaded: a checkpoint must never run it."""
    def __reduce__(self):
        return print, ("CODE RAN",)


@pytest.mark.parametrize("content", ["code", "truncated", "foreign", "config list"])
def test_a_bad_teacher_checkpoint_is_refused_without_running_its_code(content, capsys):
    if content == "code":
        torch.save({"config": Payload()}, "t.pt")
    elif content == "truncated":
        run("ppi", "--dry-run", "--teacher-ckpt", "t.pt", "--out-dir", "a")
        with open("t.pt", "rb") as f:
            head = f.read(1000)
        with open("t.pt", "wb") as f:
            f.write(head)
    elif content == "foreign":
        with open("t.pt", "wb") as f:
            pickle.dump([1, 2, 3], f, protocol=2)
    else:
        torch.save({"config": [1, 2]}, "t.pt")
    capsys.readouterr()
    err = error_line(capsys, lambda: train_ppi.main(["--dry-run", "--teacher-ckpt", "t.pt"]))
    assert "t.pt" in err and "CODE RAN" not in capsys.readouterr().out


def test_a_student_checkpoint_of_another_teacher_is_refused(capsys):
    run("ppi", "--dry-run", "--teacher-ckpt", "t.pt")
    teacher = torch.load("t.pt")                              # the same settings, other weights
    teacher["modules"]["model"]["layers.0.fc.weight"] += 1
    torch.save(teacher, "t.pt")
    err = error_line(capsys, lambda: train_ppi.main(["--dry-run", "--teacher-ckpt", "t.pt"]))
    assert "ckpt.pt" in err and "teacher" in err


# ----------------------------------------------------------------------------------------
# Is the LSP term alive?

@pytest.mark.parametrize("script, dead_sigma", [("ppi", "1"), ("modelnet", "0.001")])
def test_an_inert_lsp_term_is_warned_of_and_sigma_auto_is_not(script, dead_sigma, capsys):
    dead = run(script, "--dry-run", "--lsp", "--sigma", dead_sigma, "--out-dir", "dead")
    warnings = [w for w in capsys.readouterr().err.splitlines() if w.startswith("warning:")]
    assert len(warnings) == 1 and "--sigma auto" in warnings[0]
    assert dead["teacher"]["structure"] < structure.UNIFORM_KL
    alive = run(script, "--dry-run", "--lsp", "--sigma", "auto", "--out-dir", "alive")
    assert "warning:" not in capsys.readouterr().err
    assert alive["teacher"]["structure"] > structure.UNIFORM_KL
    # before training: the untrained student, the same for every method of a seed
    assert alive["structure_by_epoch"]["0"] == dead["structure_by_epoch"]["0"]
