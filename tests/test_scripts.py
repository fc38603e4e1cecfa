"""The two experiment scripts end to end (`--dry-run` as a subprocess), their error paths,
and the metrics they report."""
import json
import os
import subprocess
import sys

import pytest
import torch

import train_modelnet
import train_ppi
from models import gat_student

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script, *args, cwd=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def results(out_dir):
    names = [n for n in os.listdir(out_dir) if n.startswith("results_")]
    assert len(names) == 1, names
    with open(os.path.join(out_dir, names[0])) as f:
        return names[0], json.load(f)


# ----------------------------------------------------------------------------------------
# PPI

@pytest.mark.parametrize("flags", [[], ["--lsp"], ["--lsp", "--kernel", "poly"], ["--kd"],
                                   ["--at"], ["--fitnet"], ["--official"],
                                   ["--lsp", "--kd", "--at", "--fitnet", "--kernel", "l2"]])
def test_ppi_dry_run(tmp_path, flags):
    p = run("train_ppi.py", "--data", "synthetic", "--dry-run", "--out-dir", str(tmp_path),
            *flags)
    assert p.returncode == 0, p.stderr
    name, res = results(tmp_path)
    assert "synthetic" in name and res["synthetic"] is True
    assert all(line.startswith("[synthetic]") for line in p.stdout.splitlines())
    assert 0.0 <= res["test_f1"] <= 1.0 and res["ls_kl"] >= 0.0
    assert res["params"] == 185_172 and res["teacher"]["params"] == 3_640_748
    assert "best-validation epoch" in p.stdout
    if "--lsp" in flags or "--official" in flags:
        assert "lsp" in res["method"] and "| lsp " in p.stdout
    with open(os.path.join(tmp_path, name.replace("results_", "args_"))) as f:
        assert json.load(f)["dry_run"] is True


def test_ppi_offline_error_is_clear(tmp_path):
    data_dir = tmp_path / "ppi"
    p = run("train_ppi.py", "--data-dir", str(data_dir), "--url",
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
    (["--lsp-layer-s", "7"], "not a hidden layer"),
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
    torch.save({"model": wrong.state_dict(), "arch": train_ppi.arch_of(wrong),
                "data": "synthetic-scale0.03-seed0", "epoch": 0, "best_val": 0.0}, ckpt)
    p = run("train_ppi.py", "--data", "synthetic", "--dry-run", "--teacher-ckpt", str(ckpt),
            "--out-dir", str(tmp_path))
    assert p.returncode != 0 and "another architecture" in p.stderr
    assert "Traceback" not in p.stderr


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
                                   ["--lsp", "--kernel", "linear", "--variant", "layers"]])
def test_modelnet_dry_run(tmp_path, flags):
    p = run("train_modelnet.py", "--data", "synthetic", "--dry-run", "--out-dir",
            str(tmp_path), *flags)
    assert p.returncode == 0, p.stderr
    name, res = results(tmp_path)
    assert "synthetic" in name and res["synthetic"] is True
    assert all(line.startswith("[synthetic]") for line in p.stdout.splitlines())
    assert 0.0 <= res["acc"] <= 1.0 and 0.0 <= res["macc"] <= 1.0 and res["ls_kl"] >= 0.0
    assert res["teacher"]["params"] == 1_809_576
    assert res["params"] == (124_264 if "layers" in flags else 99_560)
    assert "last epoch" in p.stdout


@pytest.mark.parametrize("flags, message", [
    (["--num-points", "16"], "must be in"),
    (["--k-s", "0"], "must be in"),
    (["--lsp-layer", "9"], "not an EdgeConv layer"),
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
    p = run("train_modelnet.py", "--data-dir", str(tmp_path), "--num-points", "128",
            "--dry-run", "--out-dir", str(tmp_path / "o"))
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "more than the 64 points" in p.stderr


def test_modelnet_offline_error_is_clear(tmp_path):
    data_dir = tmp_path / "mn40"
    p = run("train_modelnet.py", "--data-dir", str(data_dir), "--url",
            (tmp_path / "nowhere.zip").as_uri(), "--dry-run", "--out-dir", str(tmp_path / "o"))
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "--data synthetic" in p.stderr
    assert not data_dir.exists() or os.listdir(data_dir) == []


def test_modelnet_teacher_of_another_architecture(tmp_path):
    wrong = train_modelnet.DGCNN((8, 8), emb_dim=0, pool="max", mlp=(16,), k=4)
    ckpt = tmp_path / "wrong.pt"
    torch.save({"model": wrong.state_dict(), "arch": train_ppi.arch_of(wrong),
                "data": "synthetic-1x1-seed0", "epoch": 0}, ckpt)
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
