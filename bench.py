"""Cost of each distillation method: the columns Params, RunTime per sample and Training
time / memory of the paper's Table 2 (PPI) and Table 4 (ModelNet40), on inputs of the real
sizes (random, deterministic by seed).

A row is one training iteration as train_ppi.py / train_modelnet.py run it (forward, task
loss, distillation loss, backward, optimiser step) or one inference forward. Rows: teacher,
student, student+KD, +AT, +FitNet, +LSP for every kernel in lsp_kd.KERNELS, +HKD (not in the
LSP paper; over the batch's nodes on PPI, its clouds on ModelNet40), and inference of
teacher and student.
- PPI: a batch of 2 graphs, Adam. The frozen teacher's outputs are computed once and cached,
  as train_ppi.py does, so distillation rows time the student's step plus the loss.
- ModelNet40: a batch of clouds, SGD. The frozen teacher runs (eval, no_grad) in every
  distillation iteration, as in train_modelnet.py; LSP over the union graph (Sec. 3.5).
- knn: models.knn_graph against DGCNN's own dense-distance + topk kNN.
Time: the median over `--repeats` rounds; each round runs every row once in turn, so that a
change of machine load hits all rows alike. Memory: the row's state (parameters, gradients,
optimiser state, counted from the tensors) + the peak growth over one iteration after warm-up
(activations); the inputs and the frozen teacher exist before the row and are not counted.
On the CPU that growth is of the process's peak RSS, which heap fragmentation inflates, so a
second column gives the peak of live tensor bytes from torch.profiler's memory timeline (near
the CUDA allocator's peak; it also counts the tensors from before the step that it reads).
Dimensions: N nodes, E edges, F features, B clouds, P points, k neighbours.

    python bench.py                          # full sizes, writes runs/bench.json
    python bench.py --quick --threads 1      # reduced sizes, about 30 s on 2 CPU cores
"""
import argparse
import contextlib
import json
import os
import platform
import re
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

import experiment
import lsp_kd
import models
import runs
from experiment import TEST_BATCH, TeacherOutput, sync
from runs import given_flags, parser_for

METHODS = (["teacher", "student", "kd", "at", "fitnet"] + [f"lsp_{k}" for k in lsp_kd.KERNELS]
           + ["lsp_rbf_auto", "hkd"])  # RBF with --sigma auto: each model's median σ; HKD
AVG_DEGREE = 14                        # PPI's average degree (Sec. 4.1)
TEACHER_K = models.dgcnn_teacher().k   # 20: the teacher's kNN size, which the knn rows time
FULL_SIZES = {"ppi_nodes": 2372, "clouds": 32, "points": 1024}  # the paper's: Sec. 4.1, 4.2
QUICK = {"ppi_nodes": 400, "clouds": 4, "points": 256, "repeats": 3, "warmup": 1}  # --quick
MEASURES = {
    "cuda": "state + CUDA allocator peak growth over one iteration after warm-up "
            "(max_memory_allocated - memory_allocated before it)",
    "clear_refs": "state + CPU peak RSS growth over one iteration after warm-up (VmHWM - VmRSS "
                  "before it, after malloc_trim; peak reset by /proc/self/clear_refs)",
    "ru_maxrss": "CPU process peak RSS since start (ru_maxrss): cannot be reset, cumulative",
}
TENSORS = ("tensors = peak bytes of live tensors over one iteration (torch.profiler memory "
           "timeline; includes the tensors from before the step that it reads: state, cached "
           "teacher outputs): free of the heap fragmentation that inflates RSS")


# ----------------------------------------------------------------------------------------
# Measuring

def tensor_mb(tensors):
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def peak_probe(device, measure):
    """Free what is unused and reset the peak (experiment.Meter); returns a function giving
    the peak's growth since then, in MiB (ru_maxrss: the process's whole peak)."""
    meter = experiment.Meter(device)
    base = {"cuda": lambda: torch.cuda.memory_allocated(device) / 2**20,
            "clear_refs": lambda: experiment.status_mb("VmRSS")}.get(measure, lambda: 0.0)()
    return lambda: meter.peak_mb() - base


# what torch.profiler writes straight to the process's stderr at every start and stop:
# libkineto's progress lines, and c10's warning about blocks allocated before it started
PROFILER_CHATTER = re.compile(r"^(STAGE|USDT|INFO):.*\.cpp:\d+\]"
                              r"|allocated before the profiling started")


@contextlib.contextmanager
def quiet_profiler():
    """Hold back what is written to file descriptor 2 (stderr, where the profiler's C++ code
    writes) inside the block; then write it out again, less the profiler's chatter, so that
    real errors and warnings still show."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(l for l in lines if not PROFILER_CHATTER.search(l)))


def tensor_peak_mb(step, device):
    """Peak MiB of live tensors on `device` during one step(), from the profiler's memory
    timeline (which also counts the tensors alive before it: parameters, optimiser state);
    None where this torch has no export_memory_timeline."""
    from torch.profiler import ProfilerActivity, profile
    try:  # a measurement only: whatever fails in the profiler leaves the column out
        with quiet_profiler(), profile(activities=[ProfilerActivity.CPU], profile_memory=True,
                                       record_shapes=True, with_stack=True) as prof:
            step()                                   # the timeline needs shapes and stacks
        with quiet_profiler(), tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecated for CUDA only
            path = os.path.join(tmp, "timeline.json")
            prof.export_memory_timeline(path, device=str(device))
            with open(path) as f:
                _, sizes = json.load(f)              # bytes per category, at each event
    except Exception as e:
        print(f"tensor peak not measured ({type(e).__name__}: {e})")
        return None
    peak = max((sum(at) for at in sizes), default=0) / 2**20
    return peak if peak > 0 else None


def run_rows(makers, args, device, measure):
    """makers: {row: (make_step, per)}, make_step() -> (step, state_mb). Per row: `--warmup`
    calls, then one more for memory alone (on the CPU, one more for the tensor peak); then
    `--repeats` timed rounds over all rows.
    -> {row: {seconds (median / per), times, state_mb, transient_mb, peak_mb[, tensor_mb]}}."""
    steps = {name: make() for name, (make, _) in makers.items()}
    rows = {}
    for name, (step, state_mb) in steps.items():
        for _ in range(args.warmup):  # after warm-up: no code pages or lazy init in the peak
            step()
        growth = peak_probe(device, measure)
        step()
        sync(device)
        growth = growth()
        rows[name] = {"times": [], "state_mb": state_mb(), "transient_mb": growth,
                      "peak_mb": growth if measure == "ru_maxrss" else state_mb() + growth}
        if device.type == "cpu":
            rows[name]["tensor_mb"] = tensor_peak_mb(step, device)
    for _ in range(args.repeats):
        for name, (step, _) in steps.items():
            sync(device)
            t0 = time.perf_counter()
            step()
            sync(device)
            rows[name]["times"].append((time.perf_counter() - t0) / makers[name][1])
    for r in rows.values():
        r["seconds"] = statistics.median(r["times"])
    return rows


# ----------------------------------------------------------------------------------------
# The rows

def distill_args(method):
    """The scripts' distillation flags for one row ("kd", "lsp_rbf", ...), at their defaults."""
    p = argparse.ArgumentParser()
    experiment.add_distill_args(p)
    if method == "lsp_rbf_auto":
        return p.parse_args(["--lsp", "--kernel", "rbf", "--sigma", "auto"])
    if method.startswith("lsp_"):
        return p.parse_args(["--lsp", "--kernel", method[4:]])
    return p.parse_args([f"--{method}"] if method in ("kd", "at", "fitnet", "hkd") else [])


def run_experiment(build, make_opt, loss_for, widths, infer, args, device, measure):
    """Every training row (loss_for(method)(model, learned) -> loss) and the two inference
    rows; widths {"fitnet": (F_s, F_t), "hkd": (F_s, F_t)}: of FitNet's regressor and HKD's
    maps, the `learned` module of their rows, trained with the student; infer = (inputs of
    the forward, samples in it)."""
    def trainer(method):
        def make_step():
            torch.manual_seed(0)
            model = build(method).train()
            learned = {"fitnet": lambda: nn.Linear(*widths["fitnet"]),
                       "hkd": lambda: lsp_kd.HolisticMaps(*widths["hkd"])}.get(method)
            learned = learned().to(device) if learned else None
            params = list(model.parameters()) + list(learned.parameters() if learned else [])
            opt, loss_fn = make_opt(params), loss_for(method)

            def step():
                loss = loss_fn(model, learned)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            def state_mb():
                grads = [p.grad for p in params if p.grad is not None]
                moments = [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
                return tensor_mb(params + grads + moments + list(model.buffers()))
            return step, state_mb
        return make_step

    def inference(method):
        def make_step():
            model = build(method).eval()
            return (torch.no_grad()(lambda: model(*infer[0])),
                    lambda: tensor_mb(list(model.parameters()) + list(model.buffers())))
        return make_step

    makers = {m: (trainer(m), 1) for m in METHODS}
    for m in ("teacher", "student"):
        makers[f"{m} inference"] = (inference(m), infer[1])
    rows = run_rows(makers, args, device, measure)
    n_t, n_s = models.num_params(build("teacher")), models.num_params(build("student"))
    for m in METHODS:  # FitNet's regressor is not counted, as in the paper (nor HKD's maps)
        rows[m]["params"] = n_t if m == "teacher" else n_s
    return rows


# NOTE: the paper times its runs on the real data; here on random inputs of the real sizes,
# because a step's time and memory depend on the sizes (and the degrees), not on the values.
def ppi_graph(n, avg_degree, gen):
    """Random graph with heavy-tailed degrees (Chung-Lu): node weights θ = U^(-1/2) ~ Pareto(2)
    (>= 1, capped at n/10), both ends of each undirected edge drawn ∝ θ, self-loops and
    duplicates dropped, n·avg_degree/2 pairs kept, both directions stored. -> (2, E)."""
    theta = torch.rand(n, generator=gen).pow(-0.5).clamp(max=max(n / 10, 1.0))
    m = avg_degree * n // 2
    a, b = torch.multinomial(theta, 6 * m, replacement=True, generator=gen).view(2, -1)
    keep = a != b
    key = torch.unique(torch.minimum(a, b)[keep] * n + torch.maximum(a, b)[keep])
    key = key[torch.randperm(key.numel(), generator=gen)[:m]]       # (<= m,) pairs a < b
    a, b = key // n, key % n
    return torch.stack([torch.cat([a, b]), torch.cat([b, a])])     # (2, E) rows (j, i)


def bench_ppi(args, device, measure):
    gen = torch.Generator().manual_seed(0)
    n = args.ppi_nodes
    ei0 = ppi_graph(n, AVG_DEGREE, gen).to(device)                          # (2, E0) graph 0
    ei = torch.cat([ei0, ppi_graph(n, AVG_DEGREE, gen).to(device) + n], 1)  # (2, E) batch of 2
    x = torch.randn(2 * n, 50, generator=gen).to(device)            # (N, 50)
    y = (torch.rand(2 * n, 121, generator=gen) < 0.3).float().to(device)  # (N, 121)
    batch = torch.arange(2, device=device).repeat_interleave(n)     # (N,) graph id
    with torch.no_grad():  # the frozen teacher, once (train_ppi.py's cache)
        feats_t, logits_t = models.gat_teacher().to(device).eval()(x, ei, return_feats=True)
        log_ls_t = {k: lsp_kd.log_local_structure(feats_t[-1], ei, k) for k in lsp_kd.KERNELS}
        sigma_t = lsp_kd.median_sigma(feats_t[-1], ei)              # --sigma auto, once
        log_ls_t["rbf_auto"] = lsp_kd.log_local_structure(feats_t[-1], ei, "rbf", sigma=sigma_t)

    def build(method):
        return (models.gat_teacher() if method == "teacher" else models.gat_student()).to(device)

    def loss_for(method):
        d_args = distill_args(method)
        auto = d_args.lsp and d_args.sigma == "auto"
        out_t = TeacherOutput(feats_t[-1], logits_t,                  # (N, 1024), (N, 121)
                              log_ls=log_ls_t["rbf_auto" if auto else d_args.kernel]
                              if d_args.lsp else None, sigma=sigma_t)

        def loss(model, learned):
            feats, logits = model(x, ei, return_feats=True)
            bce = F.binary_cross_entropy_with_logits(logits, y)
            terms = experiment.distill_terms(d_args, feats[-1], logits, ei, out_t, batch,
                                             learned, multilabel=True, hkd_maps=learned)
            return experiment.total_loss(d_args, bce, terms)
        return loss

    hidden = models.gat_student().layers[-2]
    widths = (hidden.heads * hidden.out_dim, feats_t[-1].size(1))   # 136 -> 1024
    widths = {"fitnet": widths, "hkd": widths}                      # HKD: the same layer
    adam = partial(torch.optim.Adam, lr=0.005)
    rows = run_experiment(build, adam, loss_for, widths, ((x[:n], ei0), 1), args, device,
                          measure)
    return rows, f"2 graphs x {n} nodes, {ei.size(1)} edges (in-degree {ei.size(1) / 2 / n:.1f})"


def bench_modelnet(args, device, measure):
    gen = torch.Generator().manual_seed(0)
    B, P = args.clouds, args.points
    pts = (torch.rand(B, P, 3, generator=gen) * 2 - 1).to(device)   # (B, P, 3)
    labels = torch.randint(0, 40, (B,), generator=gen).to(device)    # (B,)
    cloud = torch.arange(B, device=device).repeat_interleave(P)     # (B*P,) cloud id
    teacher = models.dgcnn_teacher().to(device).eval().requires_grad_(False)
    with torch.no_grad():  # --sigma auto: the teacher's σ once, here over its own kNN graph
        # (train_modelnet.py: over 4 batches' union graphs; the cost of a step is the same)
        sigma_t = lsp_kd.median_sigma(*teacher.edge_features(pts)[-1])

    def build(method):
        model = models.dgcnn_teacher() if method == "teacher" else models.dgcnn_student()
        return model.to(device)

    hkd_k = min(distill_args("hkd").hkd_k, B - 1)  # HKD's kNN graph of the B clouds

    def loss_for(method):
        d_args = distill_args(method)
        d_args.hkd_k = hkd_k

        def loss(model, learned):
            feats_s, pooled_s = model.embed(pts)           # EdgeConvs, (B, F_g) global features
            logits = model.head(pooled_s)
            ce = F.cross_entropy(logits, labels, label_smoothing=0.2)
            if method in ("teacher", "student"):
                return ce
            # the frozen teacher, every iteration, as train_modelnet.py; only KD and HKD need
            # the teacher's head and pooling
            out_t = experiment.teacher_output(teacher, pts, -1, d_args.kd or d_args.hkd,
                                              sigma=sigma_t)
            f_s, ei_s = feats_s[-1]                        # the last EdgeConv, as the teacher's
            terms = experiment.distill_terms(d_args, f_s, logits, ei_s, out_t, cloud, learned,
                                             hkd_maps=learned, inst_s=pooled_s)
            return experiment.total_loss(d_args, ce, terms)
        return loss

    student = models.dgcnn_student()
    widths = {"fitnet": (student.convs[-1].fc.out_features,
                         teacher.convs[-1].fc.out_features),           # 128 -> 256
              "hkd": (student.global_dim, teacher.global_dim)}         # 256 -> 2048
    sgd = partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=1e-4)
    test = pts[:TEST_BATCH]                                           # (TEST_BATCH, P, 3)
    rows = run_experiment(build, sgd, loss_for, widths, ((test,), len(test)), args, device,
                          measure)
    return rows, (f"{B} clouds x {P} points; inference: a batch of {len(test)}, per cloud; "
                  f"HKD: k = {hkd_k}")


@torch.no_grad()
def dense_knn(x, k):
    """DGCNN's own kNN (Wang et al.'s code): -||x_i - x_j||² by one matmul, topk largest, ids
    offset by b*P and flattened as its get_graph_feature does. (B, P, F) -> (B*P*k,)."""
    B, P, _ = x.shape
    inner = -2 * x @ x.transpose(1, 2)                                # (B, P, P)
    xx = x.pow(2).sum(-1, keepdim=True)                               # (B, P, 1)
    idx = (-xx - inner - xx.transpose(1, 2)).topk(k, dim=-1).indices  # (B, P, k)
    return (idx + torch.arange(B, device=x.device).view(B, 1, 1) * P).view(-1)


def bench_knn(args, device, measure):
    gen = torch.Generator().manual_seed(0)
    B, P, k = args.clouds, args.points, TEACHER_K
    makers = {}
    for F_ in (3, 64):
        x = torch.randn(B, P, F_, generator=gen).to(device)          # (B, P, F)
        for name, fn in (("knn_graph", models.knn_graph), ("dense topk", dense_knn)):
            makers[f"{name} F={F_}"] = (lambda fn=fn, x=x: (lambda: fn(x, k), lambda: 0), 1)
    rows = run_rows(makers, args, device, measure)
    for F_ in (3, 64):
        rows[f"knn_graph F={F_}"]["ratio_to_dense"] = (rows[f"knn_graph F={F_}"]["seconds"]
                                                       / rows[f"dense topk F={F_}"]["seconds"])
    return rows, f"x (B, P, F) = ({B}, {P}, F), k = {k}"


def compare_pyg(args, device, measure):
    """models.GATConv against torch_geometric.nn.GATConv, same weights, forward + backward."""
    try:
        import torch_geometric
        from torch_geometric.nn import GATConv as PygGATConv
    except ImportError:
        print("--compare-pyg: torch_geometric is not installed; skipped")
        return {"skipped": "torch_geometric is not installed"}
    gen = torch.Generator().manual_seed(0)
    N = 2 * args.ppi_nodes
    ei = ppi_graph(N, AVG_DEGREE, gen).to(device)
    out = {"version": torch_geometric.__version__, "rows": []}
    for in_dim, out_dim, heads in ((50, 256, 4), (136, 68, 2)):  # teacher / student layers
        ours = models.GATConv(in_dim, out_dim, heads).to(device)
        pyg = PygGATConv(in_dim, out_dim, heads=heads, concat=True, negative_slope=0.2,
                         add_self_loops=False, bias=False).to(device)
        # the shared Linear: `lin` (PyG >= 2.5), `lin_src` (2.0-2.4, = lin_dst), `lin_l` (1.x)
        lin = next(getattr(pyg, a) for a in ("lin", "lin_src", "lin_l")
                   if getattr(pyg, a, None) is not None)
        att_src, att_dst = ((pyg.att_src, pyg.att_dst) if hasattr(pyg, "att_src")
                            else (pyg.att_l, pyg.att_r))
        with torch.no_grad():
            lin.weight.copy_(ours.fc.weight)                          # (H*F, F_in)
            att_src.copy_(ours.attn_src.view_as(att_src))             # (1, H, F)
            att_dst.copy_(ours.attn_dst.view_as(att_dst))
        x = torch.randn(N, in_dim, generator=gen).to(device)          # (N, F_in)
        err = (ours(x, ei) - pyg(x, ei)).abs().max().item()
        if err > 1e-4:
            sys.exit(f"--compare-pyg: GATConv({in_dim}, {out_dim}, heads={heads}) outputs "
                     f"differ by {err:.2e} > 1e-4 from PyG's; not timing")
        makers = {name: (lambda conv=conv: (lambda: conv(x, ei).sum().backward(), lambda: 0), 1)
                  for name, conv in (("ours", ours), ("pyg", pyg))}
        t = {name: r["seconds"] for name, r in run_rows(makers, args, device, measure).items()}
        row = {"layer": f"GATConv({in_dim}, {out_dim}, heads={heads})", "max_abs_diff": err,
               **t, "ratio": t["ours"] / t["pyg"]}
        print(f"{row['layer']:<30} fwd+bwd: ours {1e3 * t['ours']:8.2f} ms | PyG "
              f"{1e3 * t['pyg']:8.2f} ms | ours / PyG {row['ratio']:.2f} | max diff {err:.1e}")
        out["rows"].append(row)
    return out


# ----------------------------------------------------------------------------------------
# Output

def print_table(exp, rows, info, measure):
    tens = all(r.get("tensor_mb") is not None for r in rows.values())  # CPU: a 2nd memory column
    print(f"\n== {exp} | {info}\nmemory = {MEASURES[measure]}" + (f"\n{TENSORS}" if tens else ""))
    if exp == "knn":
        print(f"{'row':<16} {'ms':>9} {'MiB':>8} {'x dense':>8}")
        for name, r in rows.items():
            print(f"{name:<16} {1e3 * r['seconds']:>9.2f} {r['peak_mb']:>8.1f} "
                  f"{r.get('ratio_to_dense', 1.0):>8.2f}")
        return
    unit = "s/iter" if exp == "ppi" else "s/epoch"
    print(f"{'Model':<23} {'Params':>7} {'ms/sample':>9} {'s/iter':>8} {'MiB':>8} {'x time':>6} "
          f"{'x mem':>6}" + (f" {'tensors':>8} {'x tens':>6}" if tens else "")
          + f" | paper: Params RunTime {unit}/GB x time x mem")
    s, ps = rows["student"], experiment.PAPER[exp]["student"]
    for m in METHODS:
        r, p = rows[m], experiment.PAPER[exp].get(m)
        r["time_ratio"], r["mem_ratio"] = r["seconds"] / s["seconds"], r["peak_mb"] / s["peak_mb"]
        if tens:
            r["tensor_ratio"] = r["tensor_mb"] / s["tensor_mb"]
        inf = rows.get(f"{m} inference")
        run = f"{1e3 * inf['seconds']:.2f}" if inf else "-"
        paper = "-"
        if p and p[2] != "-":  # ratios to the paper's student; Params, RunTime on 2 rows only
            params, runtime = p[:2] if m in ("teacher", "student") else ("", "")
            sec, gb = float(p[2]), float(p[3])
            paper = (f"{params:>5} {runtime:>6} {sec:>5g}/{gb:<4g} {sec / float(ps[2]):>5.2f} "
                     f"{gb / float(ps[3]):>5.2f}")
        print(f"{m if m in ('teacher', 'student') else 'student+' + m:<23} "
              f"{r['params'] / 1e6:>6.3f}M {run:>9} {r['seconds']:>8.3f} {r['peak_mb']:>8.1f} "
              f"{r['time_ratio']:>6.2f} {r['mem_ratio']:>6.2f}"
              + (f" {r['tensor_mb']:>8.1f} {r['tensor_ratio']:>6.2f}" if tens else "")
              + f" | {paper}")


def make_parser():
    p = parser_for(__doc__)
    p.add_argument("--only", choices=["ppi", "modelnet", "knn"], default=None,
                   help="run one experiment; None: all three")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: cuda when there is one")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads, None: torch's choice; 1 is steadier on a machine "
                        "that other processes share")
    p.add_argument("--repeats", type=int, default=10, help="timed rounds (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations per row first")
    p.add_argument("--ppi-nodes", type=int, default=FULL_SIZES["ppi_nodes"],
                   help="nodes per PPI graph, 2 a batch")
    p.add_argument("--clouds", type=int, default=FULL_SIZES["clouds"],
                   help="ModelNet40 and knn batch B")
    p.add_argument("--points", type=int, default=FULL_SIZES["points"],
                   help="points per cloud P")
    p.add_argument("--quick", action="store_true", help="reduced sizes: " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items()) + "; a flag given "
        "explicitly wins over --quick")
    p.add_argument("--compare-pyg", action="store_true",
                   help="also time models.GATConv against torch_geometric's, if installed")
    p.add_argument("--out", default="runs/bench.json", help="JSON with every row")
    return p


def get_args(argv=None):
    p = make_parser()
    args = p.parse_args(argv)
    if args.quick:  # what --quick reduces, except the flags given explicitly
        given = given_flags(p, argv)
        for dest, value in QUICK.items():
            if dest not in given:
                setattr(args, dest, value)
    if args.repeats < 1 or args.warmup < 1 or args.ppi_nodes < 16 or args.points < TEACHER_K:
        p.error(f"need --repeats >= 1, --warmup >= 1, --ppi-nodes >= 16 and --points >= "
                f"{TEACHER_K} (the teacher's k)")
    return args


def main(argv=None):
    args = get_args(argv)
    device = runs.pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    measure = experiment.Meter(device).measure  # what this system can measure
    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    full = all(getattr(args, name) == size for name, size in FULL_SIZES.items())
    print(f"device {device} ({name}) | torch {torch.__version__} | {torch.get_num_threads()} "
          f"threads | median of {args.repeats} after {args.warmup} warm-up"
          + ("" if full else " | SIZES REDUCED from the paper's 2 x 2372 nodes, 32 x 1024 points"))
    res = {"command": shlex.join(["python"] + sys.argv), "device": str(device),
           "device_name": name, "cpu": cpu, "torch": torch.__version__,
           "threads": torch.get_num_threads(), "memory_measure": MEASURES[measure],
           "tensor_measure": TENSORS if device.type == "cpu" else None, "full_sizes": full,
           "args": vars(args), "experiments": {}}
    for exp, bench in (("ppi", bench_ppi), ("modelnet", bench_modelnet), ("knn", bench_knn)):
        if args.only in (None, exp):
            rows, info = bench(args, device, measure)
            print_table(exp, rows, info, measure)
            res["experiments"][exp] = {"sizes": info, "rows": rows}
    if args.compare_pyg:
        res["pyg"] = compare_pyg(args, device, measure)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
