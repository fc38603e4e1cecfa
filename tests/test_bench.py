"""bench.py in-process at tiny sizes: every row of each experiment in the JSON and in the printed
table; the CPU memory measure against allocations of known size; bad flags end with one
`error:` line. Nothing here depends on timing values or on a CPU or CUDA build of torch."""
import importlib.util
import json
import math
import os

import pytest
import torch

import bench
import lsp_kd

METHODS = (["teacher", "student", "kd", "at", "fitnet"] + [f"lsp_{k}" for k in lsp_kd.KERNELS]
           + ["lsp_rbf_auto", "hkd"])
ALONE = [f"{m} alone" for m in METHODS if m.startswith("lsp_")]  # LSP's term alone, no model
TINY = ["--quick", "--repeats", "1", "--warmup", "1", "--device", "cpu", "--threads", "1"]


@pytest.fixture(autouse=True)
def torch_settings():
    """main() sets the thread count and (common.pick_device) deterministic algorithms."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
    torch.utils.deterministic.fill_uninitialized_memory = fill


def run(tmp_path, capsys, *flags):
    out = tmp_path / "bench.json"
    bench.main([*TINY, *flags, "--out", str(out)])
    text = capsys.readouterr().out
    assert f"wrote {out}" in text
    res = json.loads(out.read_text())
    assert res["device"] == "cpu" and res["threads"] == 1 and not res["full_sizes"]
    assert f"torch {torch.__version__} | 1 threads | median of 1 rounds" in text
    return res, text


def check_rows(res, text, exp):
    rows = res["experiments"][exp]["rows"]
    assert list(rows) == METHODS + ALONE
    for name, r in rows.items():
        assert len(r["times"]) == 1 and 0 < r["seconds"] < math.inf, (name, r)
        assert 0 < r["mem_mb"] < math.inf, (name, r)
    for m in METHODS + ALONE:
        assert math.isfinite(rows[m]["x_time"]) and math.isfinite(rows[m]["x_mem"])
        label = m if m in ["teacher", "student"] + ALONE else f"student+{m}"
        line = next(ln for ln in text.splitlines() if ln.startswith(label + " "))
        assert f"{rows[m]['x_mem']:.2f}" in line, line
    assert rows["student"]["x_time"] == rows["student"]["x_mem"] == 1.0
    assert rows["teacher"]["mem_mb"] > rows["student"]["mem_mb"]  # 18-20x the parameters
    return rows


def test_ppi_rows(tmp_path, capsys):
    res, text = run(tmp_path, capsys, "--only", "ppi", "--ppi-nodes", "64")
    assert set(res["experiments"]) == {"ppi"}
    assert "2 graphs x 64 nodes" in res["experiments"]["ppi"]["sizes"]
    rows = check_rows(res, text, "ppi")
    assert "lsp_own" not in rows["lsp_rbf"] and "(row-AT)/student" not in text


def test_modelnet_rows(tmp_path, capsys):
    res, text = run(tmp_path, capsys, "--only", "modelnet", "--clouds", "2", "--points", "32")
    assert "2 clouds x 32 points" in res["experiments"]["modelnet"]["sizes"]
    rows = check_rows(res, text, "modelnet")
    assert "(row-AT)/student" in text
    for m in METHODS:  # LSP's own cost: (row - AT) / student, for the LSP rows only (1 round)
        own = (rows[m]["seconds"] - rows["at"]["seconds"]) / rows["student"]["seconds"]
        assert rows[m].get("lsp_own") == (pytest.approx(own) if m.startswith("lsp_") else None)


def test_ratios_are_per_round_medians(capsys):
    """A round slower for every row leaves its ratios as they were; the ratio of the medians
    would not (LSP 1.6 / 1.0 here, its own cost 0.1)."""
    times = {"student": [1.0, 1.0, 2.0], "at": [1.0, 1.5, 2.0], "lsp_rbf": [1.2, 1.6, 2.4]}
    rows = {m: {"times": t, "seconds": sorted(t)[1], "mem_mb": 1.0} for m, t in times.items()}
    bench.print_table("modelnet", rows, "")
    assert rows["at"]["x_time"] == 1.0 and rows["lsp_rbf"]["x_time"] == pytest.approx(1.2)
    assert rows["lsp_rbf"]["lsp_own"] == pytest.approx(0.2)     # 0.2, 0.1, 0.2 a round
    assert "1.20" in capsys.readouterr().out


def test_alone_rows_run_the_lsp_term_only():
    """One row per LSP row: its term's forward and backward pass on a leaf copy of the
    features, with the scripts' weight; the features given stay as they were."""
    seen, feat = [], torch.randn(5, 3)

    def lsp(row, f):
        assert f.is_leaf and f.requires_grad and torch.equal(f, feat)
        seen.append((row, f))
        return (f * f).sum()
    steps = bench.alone_rows(lsp, feat)
    assert list(steps) == ALONE
    for step, state in steps.values():
        step()
        assert state() == 0
        assert torch.equal(seen[-1][1].grad, 2 * bench.WEIGHTS["lsp"] * feat)  # backward ran
    assert [r for r, _ in seen] == [m for m in METHODS if m.startswith("lsp_")]
    assert feat.grad is None


@pytest.mark.parametrize("exp, loss", [("ppi", "lsp_loss"), ("modelnet", "knn_lsp_loss")])
def test_alone_rows_call_what_the_lsp_rows_call(exp, loss, tmp_path, capsys, monkeypatch):
    """The same loss, kernel, σ, graph and cached teacher; features of the same shape."""
    calls, real = {True: set(), False: set()}, getattr(lsp_kd, loss)

    def spy(*args, **kw):  # in an LSP row the features come from the model, alone a leaf
        key = tuple(tuple(a.shape) if torch.is_tensor(a) else a for a in args)
        calls[args[0].is_leaf].add(key + tuple(id(v) for v in kw.values()))
        return real(*args, **kw)
    monkeypatch.setattr(lsp_kd, loss, spy)
    sizes = ["--ppi-nodes", "64"] if exp == "ppi" else ["--clouds", "2", "--points", "32"]
    run(tmp_path, capsys, "--only", exp, *sizes)
    assert len(calls[True]) == len(ALONE) and calls[True] == calls[False]


def test_compare_pyg(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench, "bench_ppi", lambda *a: ({}, ""))
    monkeypatch.setattr(bench, "print_table", lambda *a: None)
    res, text = run(tmp_path, capsys, "--only", "ppi", "--ppi-nodes", "16", "--compare-pyg")
    if importlib.util.find_spec("torch_geometric") is None:
        assert res["pyg"] == {"skipped": "torch_geometric is not installed"}
        assert "torch_geometric is not installed; skipped" in text
    else:
        assert [r["max_abs_diff"] < 1e-4 for r in res["pyg"]["rows"]] == [True, True]


def test_peak_growth_on_the_cpu():
    """Allocations and frees in order: two 4 MiB tensors alive at once; a tensor of the last
    step freed before its successor is allocated (as the gradients) adds nothing."""
    cpu, held = torch.device("cpu"), {}

    def two():
        a = torch.ones(2 ** 20)                   # 4 MiB
        return (a * 2).sum()                      # + 4 MiB while a lives

    def replace():
        held.pop("x", None)
        held["x"] = torch.ones(2 ** 20)
    assert 8 * 2 ** 20 <= bench.peak_growth(two, cpu) < 9 * 2 ** 20
    replace()
    assert bench.peak_growth(replace, cpu) < 2 ** 16


def test_ppi_graph_degrees():
    ei = bench.ppi_graph(1000, torch.Generator().manual_seed(0))
    assert ei.shape == (2, 14 * 1000) and (ei[0] != ei[1]).all()
    assert torch.unique(ei[0] * 1000 + ei[1]).numel() == ei.size(1)  # no duplicates
    deg = torch.bincount(ei[1], minlength=1000)
    assert deg.max() > 4 * 14  # heavy-tailed


@pytest.mark.parametrize("argv, sizes", [  # ppi_nodes, clouds, points, repeats, warmup
    ([], (2372, 32, 1024, 10, 2)),
    (["--quick"], (400, 4, 256, 3, 1)),
    (["--quick", "--repeats", "7", "--points", "64"], (400, 4, 64, 7, 1)),
    (["--repeats", "10", "--quick"], (400, 4, 256, 10, 1)),   # given, at the default
])
def test_flags_given_win_over_quick(argv, sizes):
    args = bench.get_args(argv)
    assert (args.ppi_nodes, args.clouds, args.points, args.repeats, args.warmup) == sizes


@pytest.mark.parametrize("flags", [["--threads", "0"], ["--repeats", "0"], ["--warmup", "0"],
                                   ["--ppi-nodes", "15"], ["--clouds", "1"], ["--points", "20"],
                                   ["--only", "cifar"], ["--repeats", "x"], ["--threads", "-1"],
                                   ["--ppi-nodes", "1000000000"], ["--points", "10000000"],
                                   ["--clouds", "100000000"]])  # the last: sizes that cannot fit
def test_bad_flags_give_one_error_line(flags, capsys):
    with pytest.raises(SystemExit) as e:
        bench.get_args(flags)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [err.strip()]


def test_out_not_writable_fails_before_the_benchmark(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench, "run_rows", lambda *a: pytest.fail("the benchmark ran"))
    (tmp_path / "a_file").write_text("x")                     # no folder can be made in it
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--out", str(tmp_path / "a_file" / "b.json")])
    assert "cannot write into" in capsys.readouterr().err


def test_out_folder_fails_before_the_benchmark(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench, "run_rows", lambda *a: pytest.fail("the benchmark ran"))
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--only", "ppi", "--out", str(tmp_path)])
    assert capsys.readouterr().err.startswith(f"error: --out {tmp_path} is a folder")


def test_each_round_runs_the_rows_in_a_new_order():
    """After a large row the next one runs slower, so no row may mostly follow the same one
    (a rotated order would keep b after a in all rounds but one)."""
    order = []
    steps = {n: (lambda n=n: order.append(n), lambda: 0) for n in "abcdef"}
    args = bench.get_args(["--repeats", "12", "--warmup", "1"])
    rows = bench.run_rows(steps, args, torch.device("cpu"))
    rounds = [order[-72:][i:i + 6] for i in range(0, 72, 6)]
    assert all(sorted(r) == list("abcdef") for r in rounds) and len(set(map(tuple, rounds))) > 9
    before = {n: [r[r.index(n) - 1] for r in rounds if r.index(n)] for n in "abcdef"}
    assert all(max(map(p.count, p)) <= len(p) / 2 for p in before.values()), before
    assert all(len(r["times"]) == 12 for r in rows.values())
