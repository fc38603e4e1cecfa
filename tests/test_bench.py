"""bench.py end to end as a subprocess, at the tiniest sizes: every row of both experiments
and of the knn comparison is in the JSON with a positive, finite time and memory, the
memory measures are named, and --compare-pyg without PyG is skipped, not an error."""
import importlib.util
import json
import math
import os
import subprocess
import sys

import lsp_kd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_tiny_every_row(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "bench.py", "--ppi-nodes", "48", "--clouds", "2", "--points", "32",
           "--repeats", "1", "--warmup", "1", "--threads", "1", "--device", "cpu",
           "--compare-pyg", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SIZES REDUCED" in proc.stdout
    if importlib.util.find_spec("torch_geometric") is None:
        assert "torch_geometric is not installed; skipped" in proc.stdout

    res = json.loads(out.read_text())
    assert res["device"] == "cpu" and res["threads"] == 1 and res["torch"]
    assert res["memory_measure"] and res["memory_measure"] in proc.stdout
    assert res["tensor_measure"] and res["tensor_measure"] in proc.stdout
    assert "bench.py" in res["command"]
    methods = (["teacher", "student", "kd", "at", "fitnet"] + [f"lsp_{k}" for k in lsp_kd.KERNELS]
               + ["lsp_rbf_auto"])
    expected = {"ppi": methods + ["teacher inference", "student inference"],
                "modelnet": methods + ["teacher inference", "student inference"],
                "knn": [f"{name} F={F}" for F in (3, 64) for name in ("knn_graph", "dense topk")]}
    assert set(res["experiments"]) == set(expected)
    for exp, names in expected.items():
        rows = res["experiments"][exp]["rows"]
        assert set(rows) == set(names), exp
        for name, r in rows.items():
            assert math.isfinite(r["seconds"]) and r["seconds"] > 0, (exp, name, r)
            assert math.isfinite(r["peak_mb"]) and r["peak_mb"] >= 0, (exp, name, r)
            if exp != "knn":  # the model's parameters at least
                assert r["peak_mb"] >= r["state_mb"] > 0, (exp, name, r)
                # CPU: the allocator-independent peak of live tensors, parameters included
                assert math.isfinite(r["tensor_mb"]) and r["tensor_mb"] > 0, (exp, name, r)
            assert len(r["times"]) == 1
        if exp != "knn":
            assert rows["student"]["time_ratio"] == 1.0
            assert rows["teacher"]["params"] == (3_640_748 if exp == "ppi" else 1_809_576)
            assert all(math.isfinite(rows[m]["time_ratio"]) for m in methods)
            assert all(math.isfinite(rows[m]["tensor_ratio"]) for m in methods)
    knn = res["experiments"]["knn"]["rows"]
    assert all(knn[f"knn_graph F={F}"]["ratio_to_dense"] > 0 for F in (3, 64))
    if importlib.util.find_spec("torch_geometric") is None:
        assert "skipped" in res["pyg"]
