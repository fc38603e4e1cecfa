"""PPI node classification (Sec. 4.1, Tables 1-2): GAT teacher -> small GAT student.

One command runs the whole experiment: if no teacher checkpoint exists it trains the teacher
(Table 1) and saves it, then it trains the student with the chosen knowledge (Eq. 7):

    L = BCE(student, y) + λ L_LSP (+ KD, AT, FitNet terms when asked for)

    python train_ppi.py --lsp --kernel rbf                  # the paper's Student_LSP
    python train_ppi.py --data synthetic --scale 0.1 --epochs 100 --teacher-epochs 100 --lsp

Model selection on the validation graphs; the test micro-F1 reported is the one at the
best-validation epoch. Dimensions: N nodes, E edges, F features, C = 121 labels.
"""
import argparse
import json
import os
import resource
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import data
import lsp_kd
from models import gat_student, gat_teacher, num_params


# ----------------------------------------------------------------------------------------
# Helpers shared with train_modelnet.py

def set_seed(seed):
    """Seed python, numpy and torch (CPU and CUDA)."""
    import random
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def pick_device(name):
    if name == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda was asked for, but torch.cuda.is_available() is False "
                 "(no GPU, or a CPU-only torch build); use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def atomic_save(obj, path, as_json=False):
    """Write to a temp file beside `path`, then rename: never a half-written file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    if as_json:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
    else:
        torch.save(obj, tmp)
    os.replace(tmp, path)


def arch_of(model):
    """The architecture as {parameter name: shape}: two models match iff their dicts do."""
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def load_teacher(path, teacher, data_name):
    """Load a teacher checkpoint {model, args, arch, data, epoch, best_val}, or exit with a
    clear message when it was saved for another architecture or other data."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file
        sys.exit(f"error: cannot read the teacher checkpoint {path}: {e}")
    if not isinstance(ckpt, dict) or "model" not in ckpt or "arch" not in ckpt:
        sys.exit(f"error: {path} is not a teacher checkpoint written by this project")
    arch = arch_of(teacher)
    if ckpt["arch"] != arch:
        diff = [k for k in sorted(set(arch) | set(ckpt["arch"]))
                if ckpt["arch"].get(k) != arch.get(k)][:3]
        sys.exit(f"error: the teacher checkpoint {path} holds another architecture than "
                 f"this script's teacher (first differences: {diff}); pass another "
                 "--teacher-ckpt or delete the file to train a new teacher")
    if ckpt.get("data") != data_name:
        sys.exit(f"error: the teacher checkpoint {path} was trained on '{ckpt.get('data')}', "
                 f"this run uses '{data_name}'; pass another --teacher-ckpt")
    teacher.load_state_dict(ckpt["model"])
    return ckpt


def sync(device):
    """Wait for the GPU, so that wall-clock times are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Meter:
    """Seconds per training iteration and peak memory. CUDA: the allocator's peak; CPU: the
    process's peak resident set size (ru_maxrss, whole process, never reset)."""

    def __init__(self, device):
        self.device, self.seconds, self.iters = device, 0.0, 0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def sync(self):
        sync(self.device)

    def peak_mb(self):
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB

    def memory_kind(self):
        return "CUDA allocator peak" if self.device.type == "cuda" else "process peak RSS"


def open_run_log(args, run):
    """log(msg): print and append to <out_dir>/log_<run>.txt, each line prefixed with
    "[synthetic] " on synthetic data; starts with the command line."""
    tag = "[synthetic] " if args.data == "synthetic" else ""
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, f"log_{run}.txt")
    open(path, "w").close()

    def log(msg):
        print(tag + msg, flush=True)
        with open(path, "a") as f:
            f.write(tag + msg + "\n")

    log(f"command: {' '.join(sys.argv)}")
    return log


def teacher_ckpt_path(args, name):
    """--teacher-ckpt, else checkpoints/<name>.pt (a throw-away file in --out-dir for a dry run)."""
    if args.teacher_ckpt:
        return args.teacher_ckpt
    if args.dry_run:
        return os.path.join(args.out_dir, "teacher_dry_run.pt")
    return os.path.join("checkpoints", f"{name}.pt")


def summarize(out_dir, keys):
    """Mean ± std over seeds of every results_*.json in out_dir, one row per method."""
    rows = {}
    for name in sorted(os.listdir(out_dir)):
        if name.startswith("results_") and name.endswith(".json"):
            with open(os.path.join(out_dir, name)) as f:
                r = json.load(f)
            rows.setdefault(r["method"], []).append(r)
    print(f"{'method':<22} {'seeds':>5} " + " ".join(f"{k:>17}" for k in keys))
    for method, runs in rows.items():
        cells = []
        for k in keys:
            v = np.array([r[k] for r in runs], dtype=float)
            cells.append(f"{v.mean():.4f} ± {v.std():.4f}" if abs(v.mean()) >= 1e-3
                         else f"{v.mean():.2e} ± {v.std():.1e}")
        print(f"{method:<22} {len(runs):>5} " + " ".join(f"{c:>17}" for c in cells))


# ----------------------------------------------------------------------------------------
# PPI pieces

def micro_f1(logits, y):
    """Micro-F1 over all nodes and labels, a label predicted when its logit > 0."""
    pred = logits > 0
    y = y > 0.5
    tp = (pred & y).sum().item()
    fp = (pred & ~y).sum().item()
    fn = (~pred & y).sum().item()
    return 2 * tp / max(2 * tp + fp + fn, 1)


@torch.no_grad()
def evaluate(model, graphs, device):
    """Micro-F1 of `model` pooled over `graphs`."""
    model.eval()
    logits = [model(g.x.to(device), g.edge_index.to(device)).cpu() for g in graphs]
    return micro_f1(torch.cat(logits), torch.cat([g.y for g in graphs]))


@torch.no_grad()
def teacher_outputs(teacher, graphs, args, device):
    """What the losses need from the frozen teacher, computed once per graph: [(hidden
    feature (N, F_t), logits (N, C), log LS^t of Eq. (3) (E,) or None without --lsp)]."""
    teacher.eval()
    out = []
    for g in graphs:
        ei = g.edge_index.to(device)
        feats, logits = teacher(g.x.to(device), ei, return_feats=True)
        feat_t = feats[args.lsp_layer_t]
        log_ls_t = (lsp_kd.log_local_structure(feat_t, ei, args.kernel, **kernel_kwargs(args))
                    if args.lsp else None)
        out.append((feat_t, logits, log_ls_t))
    return out


@torch.no_grad()
def structure_kl(student, layer_s, graphs, cache_t, device):
    """Mean over graphs of L_LSP (Eq. 5-6, RBF σ = 1) between the student's and the teacher's
    local structures: how far the student is from the teacher's structure (Fig. 1)."""
    student.eval()
    kls = []
    for g, (feat_t, _, _) in zip(graphs, cache_t):
        ei = g.edge_index.to(device)
        feats_s, _ = student(g.x.to(device), ei, return_feats=True)
        kls.append(lsp_kd.lsp_loss(feats_s[layer_s], feat_t, ei, kernel="rbf").item())
    return float(np.mean(kls))


def train(model, ds, args, device, log, cache_t=None, epochs=None):
    """Adam on the training graphs; returns (best_val, best_epoch, meter), the model left
    holding its best-validation weights."""
    epochs = epochs or args.epochs
    extra = nn.ModuleDict()
    if cache_t is not None and args.fitnet:  # FitNet's learned regressor F_s -> F_t
        hidden = model.layers[:-1][args.lsp_layer_s]  # the hidden layer LSP/AT/FitNet use
        width_s = hidden.heads * hidden.out_dim
        extra["regressor"] = nn.Linear(width_s, cache_t[0][0].size(1)).to(device)
    opt = torch.optim.Adam(list(model.parameters()) + list(extra.parameters()), lr=args.lr,
                           weight_decay=args.weight_decay)
    gen = torch.Generator().manual_seed(args.seed)
    meter = Meter(device)
    best_val, best_epoch, best_state = -1.0, -1, None
    for epoch in range(epochs):
        model.train()
        t0, parts, count = time.time(), {}, 0
        for idx, g in data.ppi_batches(ds["train"], args.batch_size, generator=gen):
            x, y, ei = g.x.to(device), g.y.to(device), g.edge_index.to(device)
            meter.sync()
            t_it = time.time()
            feats_s, logits = model(x, ei, return_feats=True)
            terms = {"bce": F.binary_cross_entropy_with_logits(logits, y)}
            loss = terms["bce"]
            if cache_t is not None:
                feat_t = torch.cat([cache_t[i][0] for i in idx])              # (N, F_t)
                logits_t = torch.cat([cache_t[i][1] for i in idx])            # (N, C)
                feat_s = feats_s[args.lsp_layer_s]                            # (N, F_s)
                if args.kd:  # Hinton: (1 - α) BCE + α KD, KD with per-label sigmoids
                    terms["kd"] = lsp_kd.kd_loss(logits, logits_t, T=args.kd_T, multilabel=True)
                    loss = (1 - args.kd_alpha) * terms["bce"] + args.kd_alpha * terms["kd"]
                if args.lsp and (args.lsp_epochs is None or epoch < args.lsp_epochs):
                    # lsp_loss(feat_s, feat_t, ei, ...) with the teacher's half cached
                    log_ls_s = lsp_kd.log_local_structure(feat_s, ei, args.kernel,
                                                          **kernel_kwargs(args))  # (E,)
                    log_ls_t = torch.cat([cache_t[i][2] for i in idx])            # (E,)
                    terms["lsp"] = lsp_kd.local_structure_kl(log_ls_s, log_ls_t, ei, len(y),
                                                             args.teacher_first)
                    loss = loss + args.lsp_weight * terms["lsp"]              # Eq. (7)
                if args.at:
                    terms["at"] = lsp_kd.at_loss(feat_s, feat_t, g.batch.to(device))
                    loss = loss + args.at_weight * terms["at"]
                if args.fitnet:
                    terms["fitnet"] = lsp_kd.fitnet_loss(feat_s, feat_t, extra["regressor"])
                    loss = loss + args.fitnet_weight * terms["fitnet"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            meter.sync()
            meter.seconds += time.time() - t_it
            meter.iters += 1
            for k, v in {"loss": loss, **terms}.items():
                parts[k] = parts.get(k, 0.0) + v.item()
            count += 1
            if args.dry_run:
                break
        val = evaluate(model, ds["valid"], device)
        if val > best_val:
            best_val, best_epoch = val, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        cols = " | ".join(f"{k} {v / count:.4f}" for k, v in parts.items())
        log(f"epoch {epoch:03d} | {cols} | val f1 {val:.4f} | {time.time() - t0:.1f}s")
    model.load_state_dict(best_state)
    return best_val, best_epoch, meter


def kernel_kwargs(args):
    return {"rbf": {"sigma": args.sigma}, "poly": {"degree": args.degree, "c": args.c}
            }.get(args.kernel, {})


@torch.no_grad()
def inference_ms(model, graphs, device, repeats=3):
    """Median inference time per graph, in milliseconds."""
    model.eval()
    times = []
    for g in graphs:
        x, ei = g.x.to(device), g.edge_index.to(device)
        model(x, ei)  # warm-up
        for _ in range(repeats):
            sync(device)
            t0 = time.time()
            model(x, ei)
            sync(device)
            times.append(1000 * (time.time() - t0))
    return float(np.median(times))


# Table 2 of the paper (real PPI, a 1080Ti): Params, RunTime, Training s/iter / memory, F1
PAPER_TABLE2 = {
    "Teacher": ("3.64M", "48.5ms", "1.7s / 3.4G", "97.6"),
    "Student_Full": ("0.16M", "41.3ms", "1.3s / 1.2G", "95.7"),
    "Student_KD": ("0.16M", "-", "-", "not run"),
    "Student_AT": ("0.16M", "41.3ms", "1.9s / 1.4G", "95.4"),
    "Student_FitNet": ("0.16M", "41.3ms", "2.4s / 1.6G", "95.6"),
    "Student_LSP": ("0.16M", "41.3ms", "2.0s / 1.5G", "96.1"),
}


def kernel_label(args):
    """e.g. "lsp_rbf", or "lsp_rbf-sigma10" when a hyper-parameter is not the paper's."""
    paper = {"rbf": {"sigma": 1.0}, "poly": {"degree": 2, "c": 0.0}}.get(args.kernel, {})
    return f"lsp_{args.kernel}" + "".join(f"-{k}{v:g}" for k, v in kernel_kwargs(args).items()
                                          if v != paper[k])


def method_name(args):
    parts = [name for name in ("kd", "at", "fitnet") if getattr(args, name)]
    if args.lsp:
        parts.append("lsp_official" if args.official else kernel_label(args))
    return "Student_" + ("+".join(parts) if parts else "Full")


def paper_method(args):
    """The row of Table 2 this run corresponds to (None for a combination of methods)."""
    used = [name for name in ("LSP", "KD", "AT", "FitNet") if getattr(args, name.lower())]
    return "Student_" + (used[0] if used else "Full") if len(used) <= 1 else None


def table_row(model, params, runtime_ms, s_per_iter, peak_mb, f1):
    return (f"{model:<24} {params / 1e6:>6.3f}M {runtime_ms:>8.1f}ms "
            f"{s_per_iter:>7.3f}s / {peak_mb / 1024:.2f}G {100 * f1:>7.2f}")


def add_distill_args(p):
    """The distillation flags both scripts share; the methods combine, none = Student_Full."""
    p.add_argument("--lsp", action="store_true", help="local structure preserving, Eq. (7)")
    p.add_argument("--kd", action="store_true",
                   help="Hinton KD (on PPI with per-label sigmoids)")
    p.add_argument("--at", action="store_true",
                   help="attention transfer on node (PPI) or point features")
    p.add_argument("--fitnet", action="store_true", help="FitNet hint with a linear regressor")
    p.add_argument("--kernel", choices=list(lsp_kd.KERNELS), default="rbf",
                   help="SIM of Eq. (3)")
    p.add_argument("--lsp-weight", type=float, default=100.0, help="λ of Eq. (7)")
    p.add_argument("--sigma", type=float, default=1.0, help="RBF σ, Eq. (8)")
    p.add_argument("--degree", type=int, default=2, help="polynomial kernel degree d")
    p.add_argument("--c", type=float, default=0.0, help="polynomial kernel offset c")
    p.add_argument("--kd-alpha", type=float, default=0.1, help="weight α of the KD term")
    p.add_argument("--kd-T", type=float, default=4.0, help="KD temperature T")
    p.add_argument("--at-weight", type=float, default=1000.0)
    p.add_argument("--fitnet-weight", type=float, default=1.0)


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # data
    p.add_argument("--data", choices=["ppi", "synthetic"], default="ppi",
                   help="the real PPI release, or a generated stand-in of the same shape")
    p.add_argument("--data-dir", default="data/ppi", help="where the PPI files are (or go)")
    p.add_argument("--url", default=data.PPI_URL, help="where to download ppi.zip from")
    p.add_argument("--scale", type=float, default=1.0,
                   help="synthetic only: node counts × scale, for CPU runs")
    p.add_argument("--data-seed", type=int, default=0, help="synthetic only: generator seed")
    # teacher
    p.add_argument("--teacher-ckpt", default=None,
                   help="teacher checkpoint; trained and saved here if missing "
                        "(default: checkpoints/ppi_teacher_<data>.pt)")
    p.add_argument("--teacher-epochs", type=int, default=500)
    p.add_argument("--teacher-seed", type=int, default=0)
    # distillation
    add_distill_args(p)
    p.add_argument("--lsp-layer-s", type=int, default=-1,
                   help="student hidden layer whose output (before ELU) LSP/AT/FitNet use")
    p.add_argument("--lsp-layer-t", type=int, default=-1, help="the same, for the teacher")
    p.add_argument("--lsp-epochs", type=int, default=None,
                   help="apply LSP only in the first N epochs (default: all)")
    p.add_argument("--teacher-first", action="store_true",
                   help="KL(LS_t || LS_s) as the official code, instead of Eq. (5)")
    p.add_argument("--official", action="store_true",
                   help="the official code's recipe: --lsp --kernel l1_official "
                        "--teacher-first --lsp-weight 1 --lsp-epochs 30 --lsp-layer-s 2")
    # optimisation
    p.add_argument("--epochs", type=int, default=500)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=2, help="graphs per training batch")
    # run
    p.add_argument("--seed", type=int, default=0, help="student seed")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--out-dir", default="runs/ppi")
    p.add_argument("--dry-run", action="store_true",
                   help="smoke test: 1 epoch of 1 batch each, tiny synthetic graphs")
    p.add_argument("--summarize", metavar="DIR", default=None,
                   help="print mean ± std over seeds of the results in DIR, then exit")
    args = p.parse_args(argv)
    if args.official:
        args.lsp, args.kernel, args.teacher_first = True, "l1_official", True
        args.lsp_weight, args.lsp_epochs, args.lsp_layer_s = 1.0, 30, 2
    if args.lsp_weight < 0:
        p.error(f"--lsp-weight must be >= 0, got {args.lsp_weight}")
    if args.scale <= 0:
        p.error(f"--scale must be > 0, got {args.scale}")
    if args.dry_run:
        args.epochs = args.teacher_epochs = 1
        if args.data == "synthetic":
            args.scale = min(args.scale, 0.03)
    return args


def main(argv=None):
    args = get_args(argv)
    if args.summarize:
        summarize(args.summarize, ["test_f1", "ls_kl"])
        return
    device = pick_device(args.device)
    if args.data == "synthetic":
        ds = data.synthetic_ppi(seed=args.data_seed, scale=args.scale)
        data_name = f"synthetic-scale{args.scale:g}-seed{args.data_seed}"
    else:
        try:
            ds = data.load_ppi(args.data_dir, url=args.url)
        except data.DataError as e:
            sys.exit(f"error: {e}")
        data_name = "ppi"
    method = method_name(args)
    run = f"{data_name}_{method}_seed{args.seed}"
    log = open_run_log(args, run)
    log(f"data {data_name}: " + ", ".join(f"{s} {len(ds[s])} graphs / "
                                         f"{sum(g.x.size(0) for g in ds[s])} nodes"
                                         for s in ("train", "valid", "test")) + f" | {device}")

    # ---- teacher (Table 1): load, or train and save
    teacher = gat_teacher().to(device)
    ckpt_path = teacher_ckpt_path(args, f"ppi_teacher_{data_name}")
    if os.path.exists(ckpt_path):
        ckpt = load_teacher(ckpt_path, teacher, data_name)
        log(f"teacher loaded from {ckpt_path} (best val f1 {ckpt['best_val']:.4f} "
            f"at epoch {ckpt['epoch']})")
    else:
        log(f"no teacher at {ckpt_path}: training it ({args.teacher_epochs} epochs)")
        set_seed(args.teacher_seed)
        best_val, best_epoch, meter = train(teacher, ds, args, device,
                                            lambda m: log("teacher " + m),
                                            epochs=args.teacher_epochs)
        ckpt = {"model": teacher.state_dict(), "args": vars(args), "arch": arch_of(teacher),
                "data": data_name, "epoch": best_epoch, "best_val": best_val,
                "s_per_iter": meter.seconds / max(meter.iters, 1), "peak_mb": meter.peak_mb()}
        atomic_save(ckpt, ckpt_path)
        log(f"teacher saved to {ckpt_path} (best val f1 {best_val:.4f} at epoch {best_epoch})")
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    if not -len(teacher.layers) < args.lsp_layer_t < len(teacher.layers) - 1:
        sys.exit(f"error: --lsp-layer-t {args.lsp_layer_t} is not a hidden layer of the "
                 f"teacher ({len(teacher.layers) - 1} hidden layers)")
    cache = {s: teacher_outputs(teacher, ds[s], args, device) for s in ("train", "test")}

    # ---- student (Table 2)
    set_seed(args.seed)
    student = gat_student().to(device)
    if not -len(student.layers) < args.lsp_layer_s < len(student.layers) - 1:
        sys.exit(f"error: --lsp-layer-s {args.lsp_layer_s} is not a hidden layer of the "
                 f"student ({len(student.layers) - 1} hidden layers)")
    log(f"{method}: teacher {num_params(teacher):,} params, student {num_params(student):,}")
    distill = args.lsp or args.kd or args.at or args.fitnet
    best_val, best_epoch, meter = train(student, ds, args, device, log,
                                        cache_t=cache["train"] if distill else None)
    test_f1 = evaluate(student, ds["test"], device)
    teacher_f1 = evaluate(teacher, ds["test"], device)
    ls_kl = structure_kl(student, args.lsp_layer_s, ds["test"], cache["test"], device)
    log(f"test micro-F1 {test_f1:.4f} at the best-validation epoch {best_epoch} "
        f"(val f1 {best_val:.4f}); teacher test micro-F1 {teacher_f1:.4f}")
    log(f"local-structure KL to the teacher on the test graphs (Eq. 5-6, RBF): {ls_kl:.3e}")

    res = {"method": method, "data": data_name, "synthetic": args.data == "synthetic",
           "seed": args.seed, "params": num_params(student),
           "runtime_ms": inference_ms(student, ds["test"], device),
           "train_s_per_iter": meter.seconds / max(meter.iters, 1),
           "peak_mem_mb": meter.peak_mb(), "memory": meter.memory_kind(),
           "best_epoch": best_epoch, "val_f1": best_val, "test_f1": test_f1, "ls_kl": ls_kl,
           "teacher": {"params": num_params(teacher), "test_f1": teacher_f1,
                       "runtime_ms": inference_ms(teacher, ds["test"], device),
                       "train_s_per_iter": ckpt.get("s_per_iter"),
                       "peak_mem_mb": ckpt.get("peak_mb")},
           "device": str(device), "command": " ".join(sys.argv), "args": vars(args)}
    atomic_save(res, os.path.join(args.out_dir, f"results_{run}.json"), as_json=True)
    atomic_save(vars(args), os.path.join(args.out_dir, f"args_{run}.json"), as_json=True)

    t = res["teacher"]
    log(f"{'Model':<24} {'Params':>7} {'RunTime':>10} {'Training (s/iter / mem)':>19} "
        f"{'F1':>7}   | paper (real PPI, 1080Ti)")
    paper = PAPER_TABLE2.get(paper_method(args), ("-",) * 4)
    if t["train_s_per_iter"] is not None:
        log(table_row("Teacher", t["params"], t["runtime_ms"], t["train_s_per_iter"],
                      t["peak_mem_mb"], t["test_f1"]) + "   | " + " ".join(PAPER_TABLE2["Teacher"]))
    log(table_row(method, res["params"], res["runtime_ms"], res["train_s_per_iter"],
                  res["peak_mem_mb"], test_f1) + "   | " + " ".join(paper))
    log(f"memory = {meter.memory_kind()}; F1 = test micro-F1 at the best-validation epoch; "
        f"results in {os.path.join(args.out_dir, f'results_{run}.json')}")


if __name__ == "__main__":
    main()
