"""bench.py end to end as a subprocess, at the tiniest sizes: every row of both experiments
and of the knn comparison is in the JSON with a positive, finite time and memory, the
memory measures are named, --compare-pyg without PyG is skipped, not an error, and stderr
holds none of the profiler's chatter. Then --quick against explicit flags, and the filter
of the profiler's chatter."""
import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import bench
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
    assert "profiler_st" not in proc.stderr and "profiling started" not in proc.stderr
    if importlib.util.find_spec("torch_geometric") is None:
        assert "torch_geometric is not installed; skipped" in proc.stdout

    res = json.loads(out.read_text())
    assert res["device"] == "cpu" and res["threads"] == 1 and res["torch"]
    assert res["memory_measure"] and res["memory_measure"] in proc.stdout
    assert res["tensor_measure"] and res["tensor_measure"] in proc.stdout
    assert "bench.py" in res["command"]
    methods = (["teacher", "student", "kd", "at", "fitnet"] + [f"lsp_{k}" for k in lsp_kd.KERNELS]
               + ["lsp_rbf_auto", "hkd"])
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
            assert "student+hkd" in proc.stdout  # the + HKD row, beside the others
    knn = res["experiments"]["knn"]["rows"]
    assert all(knn[f"knn_graph F={F}"]["ratio_to_dense"] > 0 for F in (3, 64))
    if importlib.util.find_spec("torch_geometric") is None:
        assert "skipped" in res["pyg"]


@pytest.mark.parametrize("argv, sizes", [  # sizes: ppi_nodes, clouds, points, repeats, warmup
    ([], (2372, 32, 1024, 10, 2)),
    (["--quick"], (400, 4, 256, 3, 1)),
    (["--quick", "--repeats", "7"], (400, 4, 256, 7, 1)),
    (["--repeats", "10", "--quick"], (400, 4, 256, 10, 1)),   # explicit, at the default
    (["--quick", "--points", "64", "--warmup", "2", "--ppi-nodes", "100", "--clouds", "8"],
     (100, 8, 64, 3, 2)),
])
def test_explicit_flags_win_over_quick(argv, sizes):
    args = bench.get_args(argv)
    assert (args.ppi_nodes, args.clouds, args.points, args.repeats, args.warmup) == sizes
    assert "explicitly wins over --quick" in " ".join(bench.make_parser().format_help().split())


def test_profiler_chatter_is_dropped_and_the_rest_kept(capfd):
    with bench.quiet_profiler():
        os.write(2, b"USDT:2026-01-01 10:00:00 1:1 SyncActivityProfilerHandler.cpp:52] "
                    b"profiler_start\n[W101 10:00:00.1 CPUAllocator.cpp:245] Memory block of "
                    b"unknown size was allocated before the profiling started, ...\n"
                    b"a real error from C++\n")
        print("a Python warning", file=sys.stderr)
    peak = bench.tensor_peak_mb(lambda: torch.randn(64, 64) @ torch.randn(64, 64),
                                torch.device("cpu"))                  # the profiler itself
    err = capfd.readouterr().err
    assert peak > 0
    assert sorted(err.splitlines()) == ["a Python warning", "a real error from C++"], err
