"""The two experiment scripts end to end (`--dry-run` as a subprocess), their error paths,
their command lines, the metrics they report and what they share in experiment.py."""
import argparse
import json
import os
import subprocess
import sys

import pytest
import torch

import bench
import experiment
import lsp_kd
import runs
import train_modelnet
import train_ppi
from models import DGCNN, gat_student

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script, *args, cwd=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def results(out_dir):
    """(the run's folder, its results) of the one run in out_dir."""
    (run_dir,) = [p for p in sorted(os.scandir(out_dir), key=lambda e: e.name) if p.is_dir()]
    with open(os.path.join(run_dir.path, "results.json")) as f:
        return run_dir.path, json.load(f)


# ----------------------------------------------------------------------------------------
# PPI

@pytest.mark.parametrize("flags", [[], ["--lsp"], ["--lsp", "--kernel", "poly"], ["--kd"],
                                   ["--at"], ["--fitnet"], ["--official"],
                                   ["--lsp", "--kd", "--at", "--fitnet", "--kernel", "l2"]])
def test_ppi_dry_run(tmp_path, flags):
    p = run("train_ppi.py", "--data", "synthetic", "--dry-run", "--out-dir", str(tmp_path),
            *flags)
    assert p.returncode == 0, p.stderr
    run_dir, res = results(tmp_path)
    assert "synthetic" in os.path.basename(run_dir) and res["synthetic"] is True
    assert all(line.startswith("[synthetic]") for line in p.stdout.splitlines())
    assert 0.0 <= res["test_f1"] <= 1.0 and res["ls_kl"] >= 0.0
    with open(os.path.join(run_dir, "cost.json")) as f:
        cost = json.load(f)
    assert cost["student"]["memory"] in experiment.MEMORY.values()
    assert cost["student"]["memory"] in p.stdout
    assert res["params"] == 185_172 and res["teacher"]["params"] == 3_640_748
    assert "best-validation epoch" in p.stdout
    if "--lsp" in flags or "--official" in flags:
        assert "lsp" in res["method"] and "| lsp " in p.stdout
    with open(os.path.join(run_dir, "args.json")) as f:
        assert json.load(f)["dry_run"] is True


def test_ppi_offline_error_is_clear(tmp_path):
    data_dir = tmp_path / "ppi"
    p = run("train_ppi.py", "--data", "ppi", "--data-dir", str(data_dir), "--url",
            (tmp_path / "nowhere" / "ppi.zip").as_uri(), "--dry-run", "--out-dir",
            str(tmp_path / "out"))
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    assert "--data synthetic" in p.stderr and "ppi.zip" in p.stderr
    leftovers = [n for n in os.listdir(data_dir)] if data_dir.exists() else []
    assert leftovers == [], leftovers


@pytest.mark.parametrize("flags, message", [
    (["--kernel", "gaussian"], "invalid choice"),
    (["--lsp-weight", "-1"], "--lsp-weight must be >= 0"),
    (["--lsp-layer-s", "7"], "must be a hidden layer"),
    (["--teacher-epochs", "0"], "--teacher-epochs must be >= 1"),
])
def test_ppi_bad_input(tmp_path, flags, message):
    p = run("train_ppi.py", "--data", "synthetic", "--dry-run", "--out-dir", str(tmp_path),
            *flags)
    assert p.returncode != 0 and message in p.stderr and "Traceback" not in p.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_request_without_cuda(tmp_path):
    for script in ("train_ppi.py", "train_modelnet.py"):
        p = run(script, "--data", "synthetic", "--dry-run", "--device", "cuda", "--out-dir",
                str(tmp_path))
        assert p.returncode != 0 and "--device cuda" in p.stderr
        assert "Traceback" not in p.stderr


def test_ppi_teacher_of_another_architecture(tmp_path):
    wrong = gat_student()  # a student where a teacher is expected
    ckpt = tmp_path / "wrong.pt"
    torch.save({"model": wrong.state_dict(), "arch": runs.arch_of(wrong), "config": {},
                "epoch": 0, "best_val": 0.0}, ckpt)
    p = run("train_ppi.py", "--data", "synthetic", "--dry-run", "--teacher-ckpt", str(ckpt),
            "--out-dir", str(tmp_path))
    assert p.returncode != 0 and "another architecture" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("script", ["train_ppi.py", "train_modelnet.py"])
def test_teacher_seed_decides_the_teacher(tmp_path, script):
    """--teacher-seed, not the student's --seed, seeds the teacher's initialisation and batch
    order: runs that train a teacher train the same one whatever --seed, another with
    another --teacher-seed."""
    teachers = []
    for name, flags in (("a", []), ("b", ["--seed", "5"]), ("c", ["--teacher-seed", "7"])):
        p = run(script, "--data", "synthetic", "--dry-run", "--out-dir", str(tmp_path / name),
                *flags)
        assert p.returncode == 0, p.stderr
        run_dir, _ = results(tmp_path / name)
        teachers.append(torch.load(os.path.join(run_dir, "teacher.pt"), weights_only=False))
    a, b, c = (t["model"] for t in teachers)
    for k, v in a.items():
        torch.testing.assert_close(v, b[k], rtol=1e-4, atol=1e-5)
    assert any(not torch.allclose(v, c[k]) for k, v in a.items() if v.is_floating_point())


def test_micro_f1_hand_computed():
    # 3 nodes x 2 labels; predicted positive where logit > 0
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3], [-3.0, 0.0]])
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # TP: (0,0), (1,1) = 2; FP: (1,0) = 1; FN: (2,0), (2,1) = 2 (a logit of exactly 0 is
    # not > 0)  ->  F1 = 2·2 / (2·2 + 1 + 2) = 4/7
    assert train_ppi.micro_f1(logits, y) == pytest.approx(4 / 7)
    assert train_ppi.micro_f1(torch.ones(2, 3), torch.ones(2, 3)) == 1.0
    assert train_ppi.micro_f1(-torch.ones(2, 3), torch.ones(2, 3)) == 0.0


# ----------------------------------------------------------------------------------------
# ModelNet40

@pytest.mark.parametrize("flags", [[], ["--lsp"], ["--kd"], ["--at", "--fitnet"],
                                   ["--lsp", "--kernel", "linear", "--variant", "layers"],
                                   ["--lsp", "--kd", "--teacher-amp"]])
def test_modelnet_dry_run(tmp_path, flags):
    p = run("train_modelnet.py", "--data", "synthetic", "--dry-run", "--out-dir",
            str(tmp_path), *flags)
    assert p.returncode == 0, p.stderr
    run_dir, res = results(tmp_path)
    assert "synthetic" in os.path.basename(run_dir) and res["synthetic"] is True
    assert all(line.startswith("[synthetic]") for line in p.stdout.splitlines())
    assert 0.0 <= res["acc"] <= 1.0 and 0.0 <= res["macc"] <= 1.0 and res["ls_kl"] >= 0.0
    assert res["teacher"]["params"] == 1_809_576
    assert res["params"] == (124_264 if "layers" in flags else 99_560)
    assert "last epoch" in p.stdout


@pytest.mark.parametrize("flags, message", [
    (["--num-points", "16"], "--num-points must be > 20"),
    (["--k-s", "0"], "must be in"),
    (["--lsp-layer", "9"], "must be an EdgeConv layer"),
    (["--epochs", "0"], "must be >= 1"),
])
def test_modelnet_bad_input(tmp_path, flags, message):
    p = run("train_modelnet.py", "--data", "synthetic", "--dry-run", "--out-dir",
            str(tmp_path), *flags)
    assert p.returncode != 0 and message in p.stderr and "Traceback" not in p.stderr


def test_modelnet_more_points_than_the_files_hold(tmp_path):
    import h5py
    import numpy as np
    for split in ("train", "test"):  # a tiny release in the real layout, 64 points a cloud
        with h5py.File(tmp_path / f"ply_data_{split}0.h5", "w") as f:
            f["data"] = np.random.rand(4, 64, 3).astype(np.float32)
            f["label"] = np.arange(4, dtype=np.uint8).reshape(4, 1)
    (tmp_path / "shape_names.txt").write_text("\n".join(f"c{i}" for i in range(40)) + "\n")
    p = run("train_modelnet.py", "--data", "modelnet40", "--data-dir", str(tmp_path),
            "--num-points", "128",
            "--dry-run", "--out-dir", str(tmp_path / "o"))
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "more than the 64 points" in p.stderr


def test_modelnet_offline_error_is_clear(tmp_path):
    data_dir = tmp_path / "mn40"
    p = run("train_modelnet.py", "--data", "modelnet40", "--data-dir", str(data_dir), "--url",
            (tmp_path / "nowhere.zip").as_uri(), "--dry-run", "--out-dir", str(tmp_path / "o"))
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "--data synthetic" in p.stderr
    assert not data_dir.exists() or os.listdir(data_dir) == []


def test_modelnet_teacher_of_another_architecture(tmp_path):
    wrong = DGCNN((8, 8), emb_dim=0, pool="max", mlp=(16,), k=4)
    ckpt = tmp_path / "wrong.pt"
    torch.save({"model": wrong.state_dict(), "arch": runs.arch_of(wrong), "config": {},
                "epoch": 0}, ckpt)
    p = run("train_modelnet.py", "--data", "synthetic", "--dry-run", "--teacher-ckpt",
            str(ckpt), "--out-dir", str(tmp_path))
    assert p.returncode != 0 and "another architecture" in p.stderr


def test_accuracy_and_mean_class_accuracy():
    pred = torch.tensor([0, 0, 1, 2, 2, 2])
    labels = torch.tensor([0, 1, 1, 2, 2, 0])
    acc, macc = train_modelnet.accuracy(pred, labels, num_classes=5)
    assert acc == pytest.approx(4 / 6)
    # classes present: 0 (1 of 2), 1 (1 of 2), 2 (2 of 2); classes 3, 4 absent
    assert macc == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    # exact fractions, not float32 means: 133 of 160 is 0.83125, as are its class means
    labels = torch.zeros(160, dtype=torch.long)
    pred = (torch.arange(160) >= 133).long()
    assert train_modelnet.accuracy(pred, labels, num_classes=2) == (133 / 160, 133 / 160)


# ----------------------------------------------------------------------------------------
# The command lines

@pytest.mark.parametrize("module", [train_ppi, train_modelnet, bench])
def test_every_flag_has_a_help_that_shows_its_default(module):
    parser = module.make_parser()
    text = parser.format_help()
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.help, action.option_strings
        assert "default" not in action.help.lower(), action.help  # argparse adds it once
    assert ("(default: 10)" if module is bench else "(default: 100.0)") in text  # a number


@pytest.mark.parametrize("flags", [["--kernel", "rbf"], ["--lsp-weight", "100"],
                                   ["--lsp-epochs", "30"], ["--lsp-layer-s", "-1"],
                                   ["--teacher-first"], ["--sigma", "auto"], ["--degree", "3"],
                                   ["--c", "1"]])
def test_official_refuses_the_flags_it_sets(flags, capsys):
    with pytest.raises(SystemExit) as err:  # even at its own or at the paper's value
        train_ppi.get_args(["--official", *flags])
    assert err.value.code == 2
    (line,) = [l for l in capsys.readouterr().err.splitlines() if "error:" in l]
    assert flags[0] in line and "--official" in line


def test_official_sets_its_recipe():
    args = train_ppi.get_args(["--official", "--lsp"])  # --lsp agrees with it: accepted
    assert args.lsp and args.teacher_first and args.kernel == "l1_official"
    assert (args.lsp_weight, args.lsp_epochs, args.lsp_layer_s) == (1.0, 30, 2)
    assert train_ppi.method_name(args) == "Student_lsp_official"


def test_given_flags_tells_explicit_from_default():
    p = train_modelnet.make_parser()
    assert runs.given_flags(p, []) == set()
    assert runs.given_flags(p, ["--k-s", "10", "--lsp", "--data-seed", "0"]) == {
        "k_s", "lsp", "data_seed"}


# ----------------------------------------------------------------------------------------
# experiment.py: the distillation terms, the memory measure, the paper's figures

def test_distill_terms_match_the_losses_and_weigh_as_eq7():
    g = torch.Generator().manual_seed(0)
    N, ei = 30, torch.randint(0, 30, (2, 120), generator=g)
    f_s, f_t = torch.randn(N, 6, generator=g), torch.randn(N, 9, generator=g)
    logits_s, logits_t = torch.randn(N, 5, generator=g), torch.randn(N, 5, generator=g)
    batch, reg = torch.arange(N) // 10, torch.nn.Linear(6, 9)
    p = argparse.ArgumentParser()
    experiment.add_distill_args(p)
    args = p.parse_args(["--lsp", "--kd", "--at", "--fitnet", "--sigma", "2"])
    # a fixed graph, the teacher's log LS^t cached (PPI)
    cached = experiment.TeacherOutput(f_t, logits_t, log_ls=lsp_kd.log_local_structure(
        f_t, ei, "rbf", sigma=2.0))
    terms = experiment.distill_terms(args, f_s, logits_s, ei, cached, batch, reg,
                                     multilabel=True)
    assert list(terms) == ["kd", "lsp", "at", "fitnet"]
    torch.testing.assert_close(terms["lsp"], lsp_kd.lsp_loss(f_s, f_t, ei, "rbf", sigma=2.0))
    torch.testing.assert_close(terms["kd"], lsp_kd.kd_loss(logits_s, logits_t, multilabel=True))
    torch.testing.assert_close(terms["at"], lsp_kd.at_loss(f_s, f_t, batch))
    torch.testing.assert_close(terms["fitnet"], lsp_kd.fitnet_loss(f_s, f_t, reg))
    task = torch.tensor(0.7)
    want = 0.9 * task + 0.1 * terms["kd"] + 100 * terms["lsp"] + 1000 * terms["at"] \
        + terms["fitnet"]
    torch.testing.assert_close(experiment.total_loss(args, task, terms), want)
    # the teacher's own graph (ModelNet40): LSP over the union E^u (Sec. 3.5); LSP skipped
    ei_t = torch.randint(0, N, (2, 90), generator=g)
    dynamic = experiment.TeacherOutput(f_t, logits_t, edge_index=ei_t)
    terms = experiment.distill_terms(args, f_s, logits_s, ei, dynamic, batch, reg)
    union = lsp_kd.union_graph(ei, ei_t, N)
    torch.testing.assert_close(terms["lsp"], lsp_kd.lsp_loss(f_s, f_t, union, "rbf", sigma=2.0))
    assert "lsp" not in experiment.distill_terms(args, f_s, logits_s, ei, dynamic, batch, reg,
                                                 with_lsp=False)


def test_distill_terms_with_sigma_auto_equal_lsp_loss():
    """--sigma auto in a training step: the student's σ is its median on the step's graph, the
    teacher's fixed by the script; with the teacher's median on the same graph, the term is
    lsp_loss(sigma="auto"), and the student's σ is reported as sigma_s."""
    g = torch.Generator().manual_seed(1)
    N, ei = 40, torch.randint(0, 40, (2, 200), generator=g)
    f_s, f_t = 3 * torch.randn(N, 6, generator=g), 20 * torch.randn(N, 9, generator=g)
    p = argparse.ArgumentParser()
    experiment.add_distill_args(p)
    args = p.parse_args(["--lsp", "--sigma", "auto"])
    sigma_t = lsp_kd.median_sigma(f_t, ei)
    want = lsp_kd.lsp_loss(f_s, f_t, ei, "rbf", sigma="auto")
    cached = experiment.TeacherOutput(f_t, log_ls=lsp_kd.log_local_structure(
        f_t, ei, "rbf", sigma=sigma_t), sigma=sigma_t)                # PPI: cached once
    for out_t in (cached, experiment.TeacherOutput(f_t, sigma=sigma_t),     # given σ_t
                  experiment.TeacherOutput(f_t)):                     # None: this graph's
        terms = experiment.distill_terms(args, f_s, None, ei, out_t, None)
        assert list(terms) == ["lsp", "sigma_s"]
        torch.testing.assert_close(terms["lsp"], want)
        assert terms["sigma_s"].item() == pytest.approx(lsp_kd.median_sigma(f_s, ei))
    # ModelNet40: over the union graph, σ_t fixed by the script
    ei_t = torch.randint(0, N, (2, 150), generator=g)
    union = lsp_kd.union_graph(ei, ei_t, N)
    terms = experiment.distill_terms(args, f_s, None, ei, experiment.TeacherOutput(
        f_t, edge_index=ei_t, sigma=lsp_kd.median_sigma(f_t, union)), None)
    torch.testing.assert_close(terms["lsp"], lsp_kd.lsp_loss(f_s, f_t, union, "rbf",
                                                             sigma="auto"))


@pytest.mark.parametrize("script", ["train_ppi.py", "train_modelnet.py"])
@pytest.mark.parametrize("flags, unused", [(["--kernel", "poly", "--sigma", "2"], "--sigma"),
                                           (["--sigma", "auto", "--kernel", "l2"], "--sigma"),
                                           (["--degree", "3"], "--degree"),
                                           (["--kernel", "linear", "--c", "1"], "--c")])
def test_kernel_flags_the_kernel_would_ignore_are_refused(script, flags, unused, capsys):
    module = train_ppi if script == "train_ppi.py" else train_modelnet
    with pytest.raises(SystemExit) as err:
        module.get_args(["--lsp", *flags])
    assert err.value.code == 2
    (line,) = [l for l in capsys.readouterr().err.splitlines() if "error:" in l]
    assert unused in line and "would do nothing" in line


def test_meter_peak_belongs_to_its_phase():
    """A phase's peak does not hold an earlier, larger one (the teacher's before a student's)."""
    cpu = torch.device("cpu")
    big = torch.ones(256 * 2**20 // 4)  # 256 MiB, written
    earlier = experiment.Meter(cpu).peak_mb()
    del big
    meter = experiment.Meter(cpu)
    if meter.measure != "clear_refs":
        pytest.skip("the peak RSS cannot be reset on this system")
    small = torch.ones(16 * 2**20 // 4)  # 16 MiB
    assert meter.peak_mb() < earlier - 128
    assert meter.memory == experiment.MEMORY["clear_refs"] and small.sum() > 0


def test_paper_cells():
    assert experiment.paper_cells("ppi", "teacher") == "3.64M 48.5ms 1.7s / 3.4G 97.6"
    assert experiment.paper_cells("ppi", "kd") == "0.16M - - not run"
    assert experiment.paper_cells("ppi", None) == "- - - -"
    assert experiment.paper_cells("modelnet", "lsp_l2") == "0.1M - - 91.4 88.3"
    assert experiment.paper_cells("modelnet", None) == "- - - - -"


# ----------------------------------------------------------------------------------------
# Is the LSP term alive: the teacher's structure checked, --sigma auto, structure metrics

@pytest.mark.parametrize("script, dead_sigma", [("train_ppi.py", "1"),
                                                ("train_modelnet.py", "0.001")])
def test_inert_lsp_warns_and_sigma_auto_does_not(tmp_path, script, dead_sigma):
    dead = run(script, "--data", "synthetic", "--dry-run", "--lsp", "--sigma", dead_sigma,
               "--out-dir", str(tmp_path / "dead"))
    assert dead.returncode == 0, dead.stderr
    warnings = [line for line in dead.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "rbf" in warnings[0] and "--sigma auto" in warnings[0]
    assert "Student_Full" in warnings[0] and "Traceback" not in dead.stderr
    _, dead_res = results(tmp_path / "dead")
    assert dead_res["teacher_structure"]["kl_from_uniform"] < 1e-4

    alive = run(script, "--data", "synthetic", "--dry-run", "--lsp", "--sigma", "auto",
                "--out-dir", str(tmp_path / "alive"))
    assert alive.returncode == 0, alive.stderr
    assert "warning:" not in alive.stderr
    run_dir, res = results(tmp_path / "alive")
    assert "sigmaauto" in res["method"]
    offered = res["teacher_structure"]
    assert offered["kl_from_uniform"] > 1e-4 and offered["sigma"] > 0
    assert len(res["sigma_s_by_epoch"]) == 1 and res["sigma_s_by_epoch"][0] > 0
    assert f"sigma_s {res['sigma_s_by_epoch'][0]:.4f}" in alive.stdout
    assert f"{offered['sigma']:.4g} (auto)" in alive.stdout
    # the structure metrics after epoch 1 and at the end, and the student's checkpoint
    for metrics in (res, res["structure_by_epoch"]["1"]):
        assert metrics["ls_kl"] >= 0 and metrics["ls_kl_auto"] > 0
        assert -1 <= metrics["rank_corr"] <= 1
    # and before training: the untrained student, the same for every method of a seed
    assert res["structure_by_epoch"]["0"] == dead_res["structure_by_epoch"]["0"]
    assert res["structure_by_epoch"]["0"] != res["structure_by_epoch"]["1"]
    assert "] before training: KL to the teacher σ = 1" in alive.stdout
    ckpt = torch.load(os.path.join(run_dir, "student.pt"), weights_only=False)
    assert set(ckpt) >= {"model", "args", "epoch"}
    summary = run(script, "--summarize", str(tmp_path / "alive"))
    assert summary.returncode == 0, summary.stderr
    assert "rank_corr" in summary.stdout and "by epoch, 0: before training" in summary.stdout


def test_sigma_flag_refuses_nonsense(tmp_path):
    for bad in ("0", "-1", "nan", "big"):
        p = run("train_ppi.py", "--data", "synthetic", "--dry-run", "--sigma", bad,
                "--out-dir", str(tmp_path))
        assert p.returncode != 0 and "--sigma" in p.stderr and "Traceback" not in p.stderr


def test_teacher_structure_warns_only_when_uniform():
    import argparse
    import lsp_kd
    from experiment import teacher_structure
    g = torch.Generator().manual_seed(0)
    ei = torch.randint(0, 200, (2, 3000), generator=g)
    feat = 100 * torch.randn(200, 32, generator=g)             # neighbours ~800 apart
    for sigma, warned in ((1.0, True), ("auto", False)):
        args = argparse.Namespace(kernel="rbf", sigma=sigma, degree=2, c=0.0)
        sigma_t = lsp_kd.median_sigma(feat, ei) if sigma == "auto" else None
        lines = []
        out = teacher_structure(args, [(feat, ei)], sigma_t,
                                lambda msg, warning=False: lines.append((msg, warning)))
        assert any(w for _, w in lines) == warned
        assert (out["kl_from_uniform"] < 1e-4) == warned
        assert out["saturated_share"] == (1.0 if warned else 0.0)
