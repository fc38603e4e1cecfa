"""ModelNet40 classification (Sec. 3.5, 4.2, Tables 3-6): DGCNN teacher -> small DGCNN student.

Teacher and student build different kNN graphs (k = 20 and k = 10) in their own feature
spaces, so LSP is taken over the union of the two graphs' edges (Sec. 3.5); each model still
aggregates over its own graph. One command trains the teacher if its checkpoint is missing,
then the student:

    python train_modelnet.py --lsp --kernel rbf
    python train_modelnet.py --data synthetic --epochs 20 --teacher-epochs 20 --lsp

As DGCNN, no validation split exists: accuracies are those of the last epoch.
Dimensions: B clouds, P points, F features, k neighbours, C = 40 classes.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import data
import lsp_kd
from models import DGCNN, dgcnn_teacher, num_params
from train_ppi import (Meter, add_distill_args, arch_of, atomic_save, kernel_kwargs, kernel_label,
                       load_teacher, open_run_log, pick_device, set_seed, summarize, sync,
                       teacher_ckpt_path)

# Student variants: the paper's student and the three of Table 6. The paper gives only their
# sizes (0.44M, 0.14M, 0.30M); these shapes are our reading, with their true counts printed.
VARIANTS = {
    "base": dict(edge_dims=(32, 32, 64, 128), mlp=(256,)),          # 99,560
    "channels": dict(edge_dims=(64, 64, 128, 256), mlp=(256,)),     # 233,384
    "layers": dict(edge_dims=(32, 32, 64, 64, 128), mlp=(256,)),    # 124,264
    "mlp": dict(edge_dims=(32, 32, 64, 128), mlp=(512, 256)),       # 297,448
}

# Tables 4-5 of the paper (real ModelNet40, a 1080Ti): Params, RunTime, s/epoch / mem, Acc, mAcc
PAPER_TABLE4 = {
    "Teacher": ("1.81M", "8.72ms", "30s / 4.2G", "92.4", "89.3"),
    "Student_Full": ("0.10M", "3.31ms", "12s / 1.4G", "91.2", "87.5"),
    "Student_KD": ("0.10M", "3.31ms", "15s / 1.4G", "91.6", "88.1"),
    "Student_AT": ("0.10M", "3.31ms", "21s / 1.7G", "91.6", "87.9"),
    "Student_FitNet": ("0.10M", "3.31ms", "28s / 2.4G", "91.1", "87.9"),
    "Student_LSP": ("0.10M", "3.31ms", "29s / 2.2G", "91.9", "88.6"),
    "Student_lsp_l2": ("0.10M", "-", "-", "91.4", "88.3"),
    "Student_lsp_poly": ("0.10M", "-", "-", "91.7", "87.7"),
    "Student_lsp_rbf": ("0.10M", "3.31ms", "29s / 2.2G", "91.9", "88.6"),
    "Student_lsp_linear": ("0.10M", "-", "-", "91.5", "87.8"),
}


def build_student(args):
    v = VARIANTS[args.variant]
    edge_dims = args.channels_s or v["edge_dims"]
    mlp = args.mlp_s or v["mlp"]
    return DGCNN(edge_dims, emb_dim=0, pool="max", mlp=mlp, k=args.k_s)


def accuracy(pred, labels, num_classes):
    """Overall accuracy and mean class accuracy over the classes present in `labels`."""
    acc = (pred == labels).float().mean().item()
    per_class = [(pred[labels == c] == c).float().mean().item()
                 for c in range(num_classes) if (labels == c).any()]
    return acc, float(np.mean(per_class))


@torch.no_grad()
def evaluate(model, ds, args, device, teacher=None):
    """(acc, mAcc) on the test clouds; with a teacher, also the mean local-structure KL
    (Eq. 5-6, RBF σ = 1) between the two models on the union of their kNN graphs."""
    model.eval()
    preds, kls = [], []
    for pts, _ in data.pointcloud_batches(ds["test_points"], ds["test_labels"], 16,
                                          args.num_points, train=False):
        pts = pts.to(device)
        feats_s, logits = model(pts, return_feats=True)
        preds.append(logits.argmax(-1).cpu())
        if teacher is not None:
            feats_t = teacher.edge_features(pts)
            (f_s, ei_s), (f_t, ei_t) = feats_s[args.lsp_layer], feats_t[args.lsp_layer]
            union = lsp_kd.union_graph(ei_s, ei_t, f_s.size(0))      # (2, E_u)
            kls.append(lsp_kd.lsp_loss(f_s, f_t, union, kernel="rbf").item())
        if args.dry_run:
            break
    labels = torch.as_tensor(ds["test_labels"])[:sum(len(p) for p in preds)]
    acc, macc = accuracy(torch.cat(preds), labels, len(ds["class_names"]))
    return acc, macc, (float(np.mean(kls)) if kls else None)


def train(model, ds, args, device, log, teacher=None, epochs=None):
    """SGD with cosine annealing, label smoothing; returns the Meter of the training steps."""
    epochs = epochs or args.epochs
    extra = nn.ModuleDict()
    if teacher is not None and args.fitnet:  # FitNet's learned regressor F_s -> F_t
        width_s = model.convs[args.lsp_layer].fc.out_features
        width_t = teacher.convs[args.lsp_layer].fc.out_features
        extra["regressor"] = nn.Linear(width_s, width_t).to(device)
    params = list(model.parameters()) + list(extra.parameters())
    opt = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs, eta_min=args.lr_min)
    gen = torch.Generator().manual_seed(args.seed)
    meter = Meter(device)
    for epoch in range(epochs):
        model.train()
        t0, parts, count = time.time(), {}, 0
        meter.sync()
        for pts, labels in data.pointcloud_batches(ds["train_points"], ds["train_labels"],
                                                   args.batch_size, args.num_points,
                                                   train=True, generator=gen):
            pts, labels = pts.to(device), labels.to(device)
            B, P, _ = pts.shape
            feats_s, logits = model(pts, return_feats=True)
            terms = {"ce": F.cross_entropy(logits, labels, label_smoothing=args.smoothing)}
            loss = terms["ce"]
            if teacher is not None:
                with torch.no_grad(), torch.autocast(device.type, enabled=args.teacher_amp):
                    if args.kd:
                        feats_t, logits_t = teacher(pts, return_feats=True)
                    else:  # LSP, AT and FitNet need only the teacher's EdgeConv outputs
                        feats_t = teacher.edge_features(pts)
                (f_s, ei_s), (f_t, ei_t) = feats_s[args.lsp_layer], feats_t[args.lsp_layer]
                f_t = f_t.float()
                if args.kd:  # Hinton: (1 - α) CE + α T² KL
                    terms["kd"] = lsp_kd.kd_loss(logits, logits_t.float(), T=args.kd_T)
                    loss = (1 - args.kd_alpha) * terms["ce"] + args.kd_alpha * terms["kd"]
                if args.lsp:  # Sec. 3.5: both local structures over E^u = E^s ∪ E^t
                    union = lsp_kd.union_graph(ei_s, ei_t, B * P)           # (2, E_u)
                    terms["lsp"] = lsp_kd.lsp_loss(f_s, f_t, union, kernel=args.kernel,
                                                   **kernel_kwargs(args))
                    loss = loss + args.lsp_weight * terms["lsp"]              # Eq. (7)
                if args.at:
                    cloud = torch.arange(B, device=device).repeat_interleave(P)  # (B*P,)
                    terms["at"] = lsp_kd.at_loss(f_s, f_t, cloud)
                    loss = loss + args.at_weight * terms["at"]
                if args.fitnet:
                    terms["fitnet"] = lsp_kd.fitnet_loss(f_s, f_t, extra["regressor"])
                    loss = loss + args.fitnet_weight * terms["fitnet"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for k, v in {"loss": loss, **terms}.items():
                parts[k] = parts.get(k, 0.0) + v.item()
            count += 1
            if args.dry_run:
                break
        sched.step()
        meter.sync()
        meter.seconds += time.time() - t0
        meter.iters += 1  # one "iteration" of the meter = one epoch here, as in Table 4
        cols = " | ".join(f"{k} {v / count:.4f}" for k, v in parts.items())
        log(f"epoch {epoch:03d} | {cols} | lr {sched.get_last_lr()[0]:.4f} | "
            f"{time.time() - t0:.1f}s")
    return meter


@torch.no_grad()
def inference_ms(model, ds, args, device, batches=3):
    """Median inference time per cloud (batches of 16 test clouds), in milliseconds."""
    model.eval()
    times = []
    it = data.pointcloud_batches(ds["test_points"], ds["test_labels"], 16, args.num_points)
    for i, (pts, _) in enumerate(it):
        pts = pts.to(device)
        model(pts)  # warm-up
        sync(device)
        t0 = time.time()
        model(pts)
        sync(device)
        times.append(1000 * (time.time() - t0) / len(pts))
        if i + 1 >= batches:
            break
    return float(np.median(times))


def method_name(args):
    parts = [name for name in ("kd", "at", "fitnet") if getattr(args, name)]
    if args.lsp:
        parts.append(kernel_label(args))
    variant = "" if args.variant == "base" else f"[{args.variant}]"
    return "Student" + variant + "_" + ("+".join(parts) if parts else "Full")


def paper_row(args):
    used = [name for name in ("LSP", "KD", "AT", "FitNet") if getattr(args, name.lower())]
    if args.variant != "base" or len(used) > 1:
        return ("-",) * 5
    if used == ["LSP"] and kernel_label(args) != "lsp_rbf":
        return PAPER_TABLE4.get(f"Student_lsp_{args.kernel}", ("-",) * 5)
    return PAPER_TABLE4["Student_" + (used[0] if used else "Full")]


def table_row(model, params, runtime_ms, s_per_epoch, peak_mb, acc, macc):
    return (f"{model:<26} {params / 1e6:>6.3f}M {runtime_ms:>7.2f}ms "
            f"{s_per_epoch:>8.1f}s / {peak_mb / 1024:.2f}G {100 * acc:>6.2f} {100 * macc:>6.2f}")


def int_list(text):
    return tuple(int(v) for v in text.split(","))


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # data
    p.add_argument("--data", choices=["modelnet40", "synthetic"], default="modelnet40",
                   help="the real modelnet40_ply_hdf5_2048 release, or generated clouds")
    p.add_argument("--data-dir", default="data/modelnet40_ply_hdf5_2048")
    p.add_argument("--url", default=data.MODELNET_URL, help="where to download the release")
    p.add_argument("--num-points", type=int, default=1024, help="first P points of each cloud")
    p.add_argument("--train-per-class", type=int, default=20, help="synthetic only")
    p.add_argument("--test-per-class", type=int, default=5, help="synthetic only")
    p.add_argument("--data-seed", type=int, default=0, help="synthetic only: generator seed")
    # teacher
    p.add_argument("--teacher-ckpt", default=None,
                   help="teacher checkpoint; trained and saved here if missing "
                        "(default: checkpoints/modelnet_teacher_<data>.pt)")
    p.add_argument("--teacher-epochs", type=int, default=250)
    p.add_argument("--teacher-seed", type=int, default=1)
    p.add_argument("--teacher-amp", action="store_true",
                   help="run the frozen teacher under autocast (CUDA: float16, CPU: bfloat16)")
    # student (Table 6 variants)
    p.add_argument("--variant", choices=list(VARIANTS), default="base",
                   help="the paper's student or a Table 6 variant")
    p.add_argument("--channels-s", type=int_list, default=None,
                   help="EdgeConv widths, e.g. 32,32,64,128 (overrides --variant)")
    p.add_argument("--mlp-s", type=int_list, default=None, help="MLP widths, e.g. 256")
    p.add_argument("--k-s", type=int, default=10, help="student's k of the kNN graph")
    # distillation
    add_distill_args(p)  # LSP is taken over the union graph of Sec. 3.5
    p.add_argument("--lsp-layer", type=int, default=-1,
                   help="EdgeConv layer (of each model) whose output LSP/AT/FitNet use")
    # optimisation
    p.add_argument("--epochs", type=int, default=250)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--lr-min", type=float, default=1e-3, help="end of the cosine schedule")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--smoothing", type=float, default=0.2, help="label smoothing ε")
    # run
    p.add_argument("--seed", type=int, default=0, help="student seed")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--out-dir", default="runs/modelnet")
    p.add_argument("--dry-run", action="store_true",
                   help="smoke test: 1 epoch of 1 batch each, few small synthetic clouds")
    p.add_argument("--summarize", metavar="DIR", default=None,
                   help="print mean ± std over seeds of the results in DIR, then exit")
    args = p.parse_args(argv)
    if args.lsp_weight < 0:
        p.error(f"--lsp-weight must be >= 0, got {args.lsp_weight}")
    if args.dry_run:
        args.epochs = args.teacher_epochs = 1
        args.batch_size = min(args.batch_size, 4)
        if args.data == "synthetic":
            args.train_per_class, args.test_per_class = 1, 1
            args.num_points = min(args.num_points, 128)
    for name, k in (("teacher", 20), ("student", args.k_s)):
        if not 0 < k < args.num_points:
            p.error(f"the {name}'s k = {k} must be in [1, --num-points = {args.num_points})")
    return args


def main(argv=None):
    args = get_args(argv)
    if args.summarize:
        summarize(args.summarize, ["acc", "macc", "ls_kl"])
        return
    device = pick_device(args.device)
    if args.data == "synthetic":
        ds = data.synthetic_modelnet40(args.train_per_class, args.test_per_class,
                                       args.num_points, seed=args.data_seed)
        data_name = (f"synthetic-{args.train_per_class}x{args.test_per_class}"
                     f"-seed{args.data_seed}")
    else:
        try:
            ds = data.load_modelnet40(args.data_dir, url=args.url)
        except data.DataError as e:
            sys.exit(f"error: {e}")
        data_name = "modelnet40"
    available = ds["train_points"].shape[1]
    if args.num_points > available:
        sys.exit(f"error: --num-points {args.num_points} is more than the {available} points "
                 f"per cloud that the data holds")
    method = method_name(args)
    run = f"{data_name}_{method}_seed{args.seed}"
    log = open_run_log(args, run)
    log(f"data {data_name}: train {len(ds['train_labels'])} clouds, test "
        f"{len(ds['test_labels'])} clouds, {args.num_points} points | {device}")

    # ---- teacher: load, or train and save
    teacher = dgcnn_teacher(num_classes=len(ds["class_names"])).to(device)
    ckpt_path = teacher_ckpt_path(args, f"modelnet_teacher_{data_name}")
    if os.path.exists(ckpt_path):
        ckpt = load_teacher(ckpt_path, teacher, data_name)
        log(f"teacher loaded from {ckpt_path} ({ckpt['epoch'] + 1} epochs)")
    else:
        log(f"no teacher at {ckpt_path}: training it ({args.teacher_epochs} epochs)")
        set_seed(args.teacher_seed)
        meter = train(teacher, ds, args, device, lambda m: log("teacher " + m),
                      epochs=args.teacher_epochs)
        ckpt = {"model": teacher.state_dict(), "args": vars(args), "arch": arch_of(teacher),
                "data": data_name, "epoch": args.teacher_epochs - 1, "best_val": None,
                "s_per_epoch": meter.seconds / max(meter.iters, 1), "peak_mb": meter.peak_mb()}
        atomic_save(ckpt, ckpt_path)
        log(f"teacher saved to {ckpt_path}")
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    # ---- student
    set_seed(args.seed)
    student = build_student(args).to(device)
    for name, m in (("teacher", teacher), ("student", student)):
        if not -len(m.convs) <= args.lsp_layer < len(m.convs):
            sys.exit(f"error: --lsp-layer {args.lsp_layer} is not an EdgeConv layer of the "
                     f"{name} ({len(m.convs)} layers)")
    log(f"{method}: teacher {num_params(teacher):,} params (k=20), student "
        f"{num_params(student):,} params (k={args.k_s}, EdgeConv "
        f"{[c.fc.out_features for c in student.convs]})")
    distill = args.lsp or args.kd or args.at or args.fitnet
    meter = train(student, ds, args, device, log, teacher=teacher if distill else None)
    acc, macc, ls_kl = evaluate(student, ds, args, device, teacher=teacher)
    t_acc, t_macc, _ = evaluate(teacher, ds, args, device)
    log(f"last epoch: test acc {acc:.4f}, mean class acc {macc:.4f} (over the classes present "
        f"in the test set); teacher {t_acc:.4f} / {t_macc:.4f}")
    log(f"local-structure KL to the teacher on the test clouds over the union graph "
        f"(Eq. 5-6, RBF): {ls_kl:.3e}")

    res = {"method": method, "data": data_name, "synthetic": args.data == "synthetic",
           "seed": args.seed, "params": num_params(student),
           "runtime_ms": inference_ms(student, ds, args, device),
           "train_s_per_epoch": meter.seconds / max(meter.iters, 1),
           "peak_mem_mb": meter.peak_mb(), "memory": meter.memory_kind(),
           "acc": acc, "macc": macc, "ls_kl": ls_kl,
           "teacher": {"params": num_params(teacher), "acc": t_acc, "macc": t_macc,
                       "runtime_ms": inference_ms(teacher, ds, args, device),
                       "train_s_per_epoch": ckpt.get("s_per_epoch"),
                       "peak_mem_mb": ckpt.get("peak_mb")},
           "device": str(device), "command": " ".join(sys.argv), "args": vars(args)}
    atomic_save(res, os.path.join(args.out_dir, f"results_{run}.json"), as_json=True)
    atomic_save(vars(args), os.path.join(args.out_dir, f"args_{run}.json"), as_json=True)

    t = res["teacher"]
    log(f"{'Model':<26} {'Params':>7} {'RunTime':>9} {'Training (s/ep / mem)':>19} "
        f"{'Acc':>6} {'mAcc':>6}   | paper (real ModelNet40, 1080Ti)")
    if t["train_s_per_epoch"] is not None:
        log(table_row("Teacher", t["params"], t["runtime_ms"], t["train_s_per_epoch"],
                      t["peak_mem_mb"], t_acc, t_macc) + "   | " + " ".join(PAPER_TABLE4["Teacher"]))
    log(table_row(method, res["params"], res["runtime_ms"], res["train_s_per_epoch"],
                  res["peak_mem_mb"], acc, macc) + "   | " + " ".join(paper_row(args)))
    log(f"memory = {meter.memory_kind()}; Acc/mAcc = last epoch, test set; results in "
        f"{os.path.join(args.out_dir, f'results_{run}.json')}")


if __name__ == "__main__":
    main()
