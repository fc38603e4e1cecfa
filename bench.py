"""Cost of each distillation method: the training time and memory of the paper's Table 2 (PPI)
and Table 4 (ModelNet40), on random inputs of the paper's sizes. A row is one training step as
the scripts' train_step takes it (forward, task loss, the row's term with the scripts' weight,
backward, optimiser step; not their finiteness checks and logging).
Rows "<LSP row> alone": that LSP term and its backward pass, nothing else, on fixed features of
one student step: LSP's own cost measured directly. ModelNet40's last column, (LSP row - AT row)
/ student, measures about the same as the difference of two whole steps 10-15 times longer,
and carries their noise.
Time: the median over --repeats rounds that each run every row once, after --warmup untimed
steps; a ratio to the student's time: the median over the rounds of the ratio in each round.
Memory: the row's state (parameters, gradients, optimiser state) + the peak growth of live
tensors over a step (CUDA: max_memory_allocated; CPU: the profiler's memory events); inputs and
the frozen teacher are not counted. N nodes, E edges, B clouds, P points, F features.

    python bench.py --quick --threads 1                  # reduced sizes, about 30 s
    python bench.py --threads 1 --repeats 5 --only ppi   # full sizes, minutes"""
import contextlib
import itertools
import os
import pathlib
import random
import re
import statistics
import sys
import time

try:  # Ctrl-C while torch loads: one line, not a traceback
    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile, record_function

    import common
    import lsp_kd
    import models
except KeyboardInterrupt:
    sys.exit("\ninterrupted")

LSP = {f"lsp_{k}": (k, 1.0) for k in lsp_kd.KERNELS} | {"lsp_rbf_auto": ("rbf", "auto")}
ROWS = ["teacher", "student", "kd", "at", "fitnet", *LSP, "hkd"]  # LSP: its (kernel, σ)
# the scripts' λ of Eq. (7), baseline weights, KD's α and T; ModelNet40's smoothing; PPI's degree
WEIGHTS = {"lsp": 100.0, "at": 1000.0, "fitnet": 1.0, "hkd": 0.1}
KD_ALPHA, KD_T, SMOOTHING, AVG_DEGREE = 0.1, 4.0, 0.2, 14
FULL = {"ppi_nodes": 2372, "clouds": 32, "points": 1024}   # the paper's (Sec. 4.1, 4.2)
QUICK = {"ppi_nodes": 400, "clouds": 4, "points": 256, "repeats": 3, "warmup": 1}
MB, MARK = 2 ** 20, "bench: the measured step"


def peak_growth(step, device):
    """Bytes: the peak of live tensors during one step() less those alive before it."""
    if device.type == "cuda":
        before = torch.cuda.memory_allocated(device)  # host-side counters: no sync needed
        torch.cuda.reset_peak_memory_stats(device)
        step()
        return torch.cuda.max_memory_allocated(device) - before
    # the profiler sees no free of a block from before it (the last step's gradients): two
    # steps are profiled, and the second one's allocations (+) and frees (-) summed in order
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
        with record_function(MARK):
            step()
    events = prof.profiler.kineto_results.events()
    start = next(e.start_ns() for e in events if e.name() == MARK)
    mem = sorted((e.start_ns(), e.nbytes()) for e in events
                 if e.name() == "[memory]" and e.start_ns() >= start)
    return max([0, *itertools.accumulate(n for _, n in mem)])


def run_rows(steps, args, device):
    """steps {row: (step, state bytes)} -> {row: {mem_mb: state + peak growth, times,
    seconds: their median}}; each timed round runs every row once, times[n] in round n."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    rows = {}
    for name, (step, state) in steps.items():
        for _ in range(args.warmup):  # no lazy init, no optimiser state created in the peak
            step()
        rows[name] = {"mem_mb": (peak_growth(step, device) + state()) / MB, "times": []}
    for n in range(args.repeats):  # a new order each round: a row runs slower after a large
        for name in random.Random(n).sample(list(steps), len(steps)):  # one, so none may
            sync()                                                      # mostly follow one
            t0 = time.perf_counter()
            steps[name][0]()
            sync()
            rows[name]["times"].append(time.perf_counter() - t0)
    return {name: {**r, "seconds": statistics.median(r["times"])} for name, r in rows.items()}


def make_rows(teacher, student, loss, widths, device, make_opt):
    """The training rows {row: (step, state bytes)}: loss(row, model, learned) -> loss; learned:
    FitNet's regressor or HKD's maps, of widths[row] (F_s, F_t)."""
    def trainer(row):
        torch.manual_seed(0)
        model = (teacher if row == "teacher" else student)().to(device).train()
        learned = {"fitnet": torch.nn.Linear, "hkd": lsp_kd.HolisticMaps}.get(row)
        learned = learned(*widths[row]).to(device) if learned else None
        params = [p for m in (model, learned) if m is not None for p in m.parameters()]
        opt = make_opt(params)

        def step():
            total = loss(row, model, learned)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()

        def state():  # parameters, gradients, optimiser state (momenta, Adam's moments)
            held = params + [p.grad for p in params] + [
                v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
            return sum(t.numel() * t.element_size() for t in held if t is not None)
        return step, state
    return {row: trainer(row) for row in ROWS}


def alone_rows(lsp, feat_s):
    """{"<lsp row> alone": (step, state bytes)}: lsp(row, f) and its backward pass, with the
    scripts' weight, on f = feat_s (a student's features, fixed), nothing else."""
    def step(row):
        (WEIGHTS["lsp"] * lsp(row, feat_s.detach().requires_grad_())).backward()
    return {f"{row} alone": (lambda row=row: step(row), lambda: 0) for row in LSP}


def total_loss(row, task, terms):
    """The scripts' sums: (1 - α) task + α KD, or task + weight × the row's term()."""
    method = "lsp" if row in LSP else row
    if method == "kd":
        return (1 - KD_ALPHA) * task + KD_ALPHA * terms["kd"]()
    return task + WEIGHTS[method] * terms[method]() if method in WEIGHTS else task


def ppi_graph(n, gen):
    """Chung-Lu graph, heavy-tailed degrees: n·14/2 distinct pairs, both ends drawn ∝ θ_i =
    U^(-1/2) (Pareto(2), capped at n/10), no self-loops; both directions. -> (2, E) (j, i)."""
    theta = torch.rand(n, generator=gen).pow(-0.5).clamp(max=max(n / 10, 1.0))   # (n,)
    a, b = torch.multinomial(theta, 3 * AVG_DEGREE * n, replacement=True, generator=gen).view(2, -1)
    key = torch.unique((torch.minimum(a, b) * n + torch.maximum(a, b))[a != b])  # pairs a < b
    key = key[torch.randperm(key.numel(), generator=gen)[:AVG_DEGREE * n // 2]]
    return torch.stack([torch.cat([key // n, key % n]), torch.cat([key % n, key // n])])


def bench_ppi(args, device):
    """Table 2: GATs, 2 graphs a step, Adam; the frozen teacher's outputs and local structure
    cached once, as train_ppi.py does."""
    gen, n = torch.Generator().manual_seed(0), args.ppi_nodes
    graphs = [ppi_graph(n, gen).to(device) for _ in range(2)]          # (2, E_g) each
    ei = torch.cat([graphs[0], graphs[1] + n], 1)                       # (2, E) the batch
    x = torch.randn(2 * n, models.PPI_FEATURES, generator=gen).to(device)             # (N, 50)
    y = (torch.rand(2 * n, models.PPI_LABELS, generator=gen) < 0.3).float().to(device)  # (N, 121)
    batch = torch.arange(2, device=device).repeat_interleave(n)        # (N,) graph of each node
    with torch.no_grad():  # train_ppi.py's teacher_outputs: once per graph, not timed
        feats_t, logits_t = models.gat_teacher().to(device).eval()(x, ei, return_feats=True)
        feat_t = feats_t[-1]                                            # (N, 1024)
        log_ls_t = {row: torch.cat([lsp_kd.log_local_structure(f, e, *LSP[row])  # (E,)
                                    for f, e in zip(feat_t.split(n), graphs)]) for row in LSP}

    def lsp(row, feat_s):
        return lsp_kd.lsp_loss(feat_s, None, ei, *LSP[row], log_ls_t=log_ls_t[row])

    def loss(row, model, learned):  # train_ppi.py's train_step
        feats, logits = model(x, ei, return_feats=True)                # [(N, H*F)], (N, 121)
        feat_s = feats[-1]                                              # (N, 136)
        terms = {"kd": lambda: lsp_kd.kd_loss(logits, logits_t, T=KD_T, multilabel=True),
                 "lsp": lambda: lsp(row, feat_s),
                 "at": lambda: lsp_kd.at_loss(feat_s, feat_t, batch),
                 "fitnet": lambda: lsp_kd.fitnet_loss(feat_s, feat_t, learned),
                 "hkd": lambda: lsp_kd.hkd_loss(feat_s, feat_t, learned)}  # over the nodes
        return total_loss(row, F.binary_cross_entropy_with_logits(logits, y), terms)

    hidden = models.gat_student().layers[-2]
    w = (hidden.heads * hidden.out_dim, feat_t.size(1))                # 136 -> 1024
    steps = make_rows(models.gat_teacher, models.gat_student, loss, {"fitnet": w, "hkd": w},
                      device, lambda ps: torch.optim.Adam(ps, lr=0.005))
    with torch.no_grad():
        torch.manual_seed(0)  # the rows' student, as make_rows seeds it
        feat_s = models.gat_student().to(device)(x, ei, return_feats=True)[0][-1]   # (N, 136)
    steps |= alone_rows(lsp, feat_s)
    return steps, f"2 graphs x {n} nodes, {ei.size(1)} edges (in-degree {ei.size(1) / 2 / n:.1f})"


def bench_modelnet(args, device):
    """Table 4: DGCNNs, B clouds a step, SGD; the frozen teacher runs at every step. AT runs the
    same teacher pass with a negligible loss, so (LSP - AT) / student is LSP's own cost."""
    gen, B, P = torch.Generator().manual_seed(0), args.clouds, args.points
    pts = (torch.rand(B, P, 3, generator=gen) * 2 - 1).to(device)      # (B, P, 3)
    labels = torch.randint(0, 40, (B,), generator=gen).to(device)       # (B,)
    cloud = torch.arange(B, device=device).repeat_interleave(P)        # (B*P,) cloud of a point
    teacher = models.dgcnn_teacher().to(device).eval().requires_grad_(False)
    hkd_k = min(8, B - 1)  # hkd_loss's k = 8 needs 9 clouds

    def lsp(row, feat_s, feat_t, ei_s, ei_t):
        return lsp_kd.knn_lsp_loss(feat_s, feat_t, ei_s[0].view(B * P, -1),
                                   ei_t[0].view(B * P, -1), *LSP[row])

    def loss(row, model, learned):  # train_modelnet.py's train_step
        feats, pooled = model.embed(pts)  # per EdgeConv ((B*P, F), (2, B*P*k)); (B, F_g)
        logits = model.head(pooled)                                     # (B, 40)
        ce = F.cross_entropy(logits, labels, label_smoothing=SMOOTHING)
        if row in ("teacher", "student"):
            return ce
        with torch.no_grad():  # the frozen teacher; its head and pooling for KD, HKD only
            if row in ("kd", "hkd"):
                feats_t, pooled_t = teacher.embed(pts)
                logits_t = teacher.head(pooled_t)
            else:
                feats_t = teacher.edge_features(pts)
        (feat_s, ei_s), (feat_t, ei_t) = feats[-1], feats_t[-1]       # (B*P, F), (2, E)
        terms = {"kd": lambda: lsp_kd.kd_loss(logits, logits_t, T=KD_T),
                 "lsp": lambda: lsp(row, feat_s, feat_t, ei_s, ei_t),
                 "at": lambda: lsp_kd.at_loss(feat_s, feat_t, cloud),
                 "fitnet": lambda: lsp_kd.fitnet_loss(feat_s, feat_t, learned),
                 "hkd": lambda: lsp_kd.hkd_loss(pooled, pooled_t, learned, k=hkd_k)}
        return total_loss(row, ce, terms)

    s = models.dgcnn_student()
    widths = {"fitnet": (s.convs[-1].fc.out_features, teacher.convs[-1].fc.out_features),
              "hkd": (s.global_dim, teacher.global_dim)}                # 128 -> 256, 256 -> 2048
    steps = make_rows(models.dgcnn_teacher, models.dgcnn_student, loss, widths, device,
                      lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-4))
    with torch.no_grad():
        torch.manual_seed(0)  # the rows' student, as make_rows seeds it
        (feat_s, ei_s), (feat_t, ei_t) = (models.dgcnn_student().to(device).embed(pts)[0][-1],
                                          teacher.edge_features(pts)[-1])
    steps |= alone_rows(lambda row, f: lsp(row, f, feat_t, ei_s, ei_t), feat_s)
    return steps, f"{B} clouds x {P} points; HKD k {hkd_k}"


def compare_pyg(args, device):
    """models.GATConv against torch_geometric's GATConv, the same weights, forward + backward."""
    try:
        import torch_geometric
        from torch_geometric.nn import GATConv
    except ImportError:
        print("\n--compare-pyg: torch_geometric is not installed; skipped")
        return {"skipped": "torch_geometric is not installed"}
    gen, out, N = torch.Generator().manual_seed(0), [], 2 * args.ppi_nodes  # a batch's nodes
    ei = ppi_graph(N, gen).to(device)                                   # (2, E)
    print(f"\n== GATConv against PyG {torch_geometric.__version__} | {N} nodes, {ei.size(1)} edges")
    for f_in, f_out, H in ((50, 256, 4), (136, 68, 2)):                # teacher's, student's
        ours = models.GATConv(f_in, f_out, H).to(device)
        pyg = GATConv(f_in, f_out, heads=H, add_self_loops=False, bias=False).to(device)
        pyg.load_state_dict({"lin.weight": ours.fc.weight, "att_src": ours.attn_src,
                             "att_dst": ours.attn_dst})                 # PyG >= 2.5's names
        x = torch.randn(N, f_in, generator=gen).to(device)             # (N, F_in)
        rows = run_rows({name: (lambda c=c, x=x: c(x, ei).sum().backward(), lambda: 0)
                         for name, c in (("ours", ours), ("pyg", pyg))}, args, device)
        t, err = {k: r["seconds"] for k, r in rows.items()}, (ours(x, ei) - pyg(x, ei)).abs().max()
        out.append({"layer": f"GATConv({f_in}, {f_out}, heads={H})", **t,
                    "ratio": t["ours"] / t["pyg"], "max_abs_diff": err.item()})
        print(f"{out[-1]['layer']:<28} fwd+bwd: ours {1e3 * t['ours']:.2f} ms, PyG "
              f"{1e3 * t['pyg']:.2f} ms, ours / PyG {out[-1]['ratio']:.2f}, max diff {err:.1e}")
    return {"version": torch_geometric.__version__, "rows": out}


def print_table(exp, rows, info):
    """Seconds and MiB a step, their ratios to the student's; ModelNet40: (row - AT) / student.
    A time ratio is the median over rounds of the ratio within a round: what slows the
    machine for a while slows a round's rows alike and cancels (a ratio of two medians
    would take them from different rounds)."""
    print(f"\n== {exp} | {info}")
    s, own = rows["student"], exp == "modelnet"

    def per_round(row, less=None):  # median over rounds of (row - less) / student
        return statistics.median((t - (less["times"][n] if less else 0)) / s["times"][n]
                                 for n, t in enumerate(row["times"]))
    print(f"{'row':<23} {'s/iter':>8} {'x time':>7} {'MiB':>8} {'x mem':>6}"
          + (f" {'(row-AT)/student':>16}" if own else ""))
    for m, r in rows.items():
        r["x_time"], r["x_mem"] = per_round(r), r["mem_mb"] / s["mem_mb"]
        if own and m in LSP:
            r["lsp_own"] = per_round(r, rows["at"])
        label = m if m in ("teacher", "student") or m.endswith(" alone") else "student+" + m
        print(f"{label:<23} {r['seconds']:8.3f} "
              f"{r['x_time']:7.2f} {r['mem_mb']:8.1f} {r['x_mem']:6.2f}"
              + (f" {r['lsp_own']:16.2f}" if "lsp_own" in r else ""))


def get_args(argv=None):
    p = common.Parser(__doc__)
    p.add_argument("--only", choices=["ppi", "modelnet"], help="one experiment (None: both)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: cuda if there is one")
    p.add_argument("--threads", type=int, help="torch's CPU threads (None: torch's choice)")
    p.add_argument("--repeats", type=int, default=10, help="timed rounds, their median")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps of each row first")
    p.add_argument("--ppi-nodes", type=int, default=FULL["ppi_nodes"], help="per graph, 2 a step")
    p.add_argument("--clouds", type=int, default=FULL["clouds"], help="ModelNet40: B a step")
    p.add_argument("--points", type=int, default=FULL["points"], help="per cloud: P")
    p.add_argument("--quick", action="store_true", help="reduced sizes: " + ", ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items()) + "; flags given win")
    p.add_argument("--compare-pyg", action="store_true", help="time GATConv against PyG's too")
    p.add_argument("--out", default="runs/bench.json", help="the JSON of every row")
    args = p.parse_args(argv)
    if args.quick:  # QUICK as the defaults: the flags given still win
        p.set_defaults(**QUICK)
        args = p.parse_args(argv)
    for flag, least, most in (("threads", 1, 1024), ("repeats", 1, 10 ** 4), ("warmup", 1, 100),
                              ("ppi_nodes", 16, 10 ** 5), ("clouds", 2, 1024),
                              ("points", 21, 4096)):  # the teacher's k = 20 < P
        if getattr(args, flag) is not None and not least <= getattr(args, flag) <= most:
            p.error(f"--{flag.replace('_', '-')} must be in [{least}, {most}]")
    if os.path.isdir(args.out):
        p.error(f"--out {args.out} is a folder; give the JSON file's path")
    folder = os.path.dirname(os.path.abspath(args.out))  # writable before the benchmark runs
    with contextlib.suppress(OSError):
        os.makedirs(folder, exist_ok=True)
    if not (os.path.isdir(folder) and os.access(folder, os.W_OK)):
        p.error(f"--out {args.out}: cannot write into {folder}")
    return args


def main(argv=None):
    args = get_args(argv)
    device = common.pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = re.search(r"model name\s*:\s*(.*)", pathlib.Path("/proc/cpuinfo").read_text()
                    if os.path.exists("/proc/cpuinfo") else "")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (cpu or [0, "CPU"])[1]
    full = all(getattr(args, k) == v for k, v in FULL.items())
    print(f"{device} ({name}) | torch {torch.__version__} | {torch.get_num_threads()} threads | "
          f"median of {args.repeats} rounds after {args.warmup} warm-up steps"
          + ("" if full else " | SIZES REDUCED from the paper's"))
    res = {"command": " ".join(["python"] + sys.argv), "device": str(device),
           "device_name": name, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "full_sizes": full, "args": vars(args), "experiments": {}}
    for exp, bench in (("ppi", bench_ppi), ("modelnet", bench_modelnet)):
        if args.only in (None, exp):
            steps, info = bench(args, device)
            rows = run_rows(steps, args, device)
            print_table(exp, rows, info)
            res["experiments"][exp] = {"sizes": info, "rows": rows}
    if args.compare_pyg:
        res["pyg"] = compare_pyg(args, device)
    common.save(res, args.out)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    common.main_guard(main, resumes=False)
