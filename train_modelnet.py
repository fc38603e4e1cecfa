"""ModelNet40 classification (Sec. 3.5, 4.2, Tables 3-6): a DGCNN teacher, then a small DGCNN
student trained with the knowledge asked for, Eq. (7): L = CE(student, y) + λ L_LSP (+ ...).
Teacher and student build kNN graphs (k = 20 and 10) in their own feature spaces: LSP is
taken over the union of both graphs' edges (Sec. 3.5), each model aggregates over its own.

    python train_modelnet.py --lsp --kernel rbf     # the paper's Student_LSP (the teacher first)

As in DGCNN there is no validation split: the accuracies are the last epoch's.
B clouds, P points per cloud, F features, k neighbours, C = 40 classes."""
import itertools
import os

try:  # Ctrl-C while torch loads: one line, not a traceback
    import numpy as np
    import torch
    import torch.nn.functional as F

    import common
    import data
    import models
    import structure
    import synthetic
    from common import fail, log
    from lsp_kd import (HolisticMaps, at_loss, fitnet_loss, hkd_loss, kd_loss, knn_lsp_loss,
                        union_graph)
except KeyboardInterrupt:
    raise SystemExit("\ninterrupted") from None

# The paper's SGD (Sec. 4.2); NOTE: the rest is DGCNN's code's, which the paper builds on
LR, MOMENTUM, EPOCHS = 0.1, 0.9, 250
LR_MIN, WEIGHT_DECAY, SMOOTHING = 1e-3, 1e-4, 0.2  # cosine annealing down to LR_MIN
BATCH_SIZE, TEST_BATCH = 32, 16  # clouds per training step, per test batch
TEACHER_SEED = 1          # DGCNN's seed
LAYER = -1                # NOTE: unsaid in the paper: LSP on the last EdgeConv, the last on a graph
KD_ALPHA, KD_T = 0.1, 4.0  # the paper's α; NOTE: it gives no T, 4 is a usual one
AT_WEIGHT, FITNET_WEIGHT, HKD_WEIGHT = 1000.0, 1.0, 0.1  # NOTE: not in the papers (train_ppi.py)
PROBE_BATCHES = 4         # training batches on which the teacher's structure is measured
STRUCTURE_BATCHES = 16    # test batches on which the student's is (a rank correlation is slow)


def accuracy(pred, labels):
    """Overall accuracy, and mAcc over the classes in labels (NOTE: the paper's over all 40)."""
    per_class = [(pred[labels == c] == c).double().mean().item() for c in labels.unique()]
    return (pred == labels).double().mean().item(), float(np.mean(per_class))


def test_batches(ds, args, split="test", count=None):
    """A split's clouds in batches of TEST_BATCH, in order, unaugmented (1 for a dry run)."""
    return itertools.islice(data.pointcloud_batches(
        ds[f"{split}_points"], ds[f"{split}_labels"], TEST_BATCH, args.num_points),
        1 if args.dry_run else count)


@torch.no_grad()
def evaluate(model, ds, args, device):
    """(acc, mAcc) on the test clouds."""
    model.eval()
    preds, labels = zip(*[(model(pts.to(device)).argmax(-1).cpu(), y)
                          for pts, y in test_batches(ds, args)])
    return accuracy(torch.cat(preds), torch.cat(labels))


def train_step(student, teacher, pts, labels, args, opt, learned, epoch):
    """One step of Eq. (7) on the clouds pts (B, P, 3), augmented: the teacher runs on them too."""
    B, P, _ = pts.shape
    feats, pooled = student.embed(pts)  # per EdgeConv (its output (B*P, F), its kNN graph)
    logits = student.head(pooled)                             # (B, C) from (B, F_g)
    if not torch.isfinite(logits).all():
        fail(f"the student's outputs are not finite in epoch {epoch}: it diverged; try a "
             "smaller --lr or distillation weight")
    feat_s, ei_s = feats[LAYER]                               # (B*P, F_s), (2, E_s)
    loss = ce = F.cross_entropy(logits, labels, label_smoothing=SMOOTHING)
    terms = {"ce": ce}
    if teacher is not None:
        with torch.no_grad():  # its head and pooling only for KD and HKD
            if args.kd or args.hkd:
                feats_t, pooled_t = teacher.embed(pts)
                logits_t = teacher.head(pooled_t)
            else:
                feats_t = teacher.edge_features(pts)
        feat_t, ei_t = feats_t[LAYER]                         # (B*P, F_t), (2, E_t)
    if args.kd:
        terms["kd"] = kd_loss(logits, logits_t, T=KD_T)
        loss = (1 - KD_ALPHA) * ce + KD_ALPHA * terms["kd"]
    if args.lsp:  # Sec. 3.5: both structures over E^u = E^s ∪ E^t, each point's k_s + k_t
        terms["lsp"] = knn_lsp_loss(feat_s, feat_t, ei_s[0].view(B * P, -1),  # neighbours
                                    ei_t[0].view(B * P, -1), args.kernel, args.sigma)
        loss = loss + args.lsp_weight * terms["lsp"]         # Eq. (7)
    if args.at:
        cloud = torch.arange(B, device=pts.device).repeat_interleave(P)  # (B*P,)
        terms["at"] = at_loss(feat_s, feat_t, cloud)
        loss = loss + AT_WEIGHT * terms["at"]
    if args.fitnet:
        terms["fitnet"] = fitnet_loss(feat_s, feat_t, learned["regressor"])
        loss = loss + FITNET_WEIGHT * terms["fitnet"]
    if args.hkd:  # its instances: the batch's clouds, their pooled features
        terms["hkd"] = hkd_loss(pooled, pooled_t, learned["hkd"])
        loss = loss + HKD_WEIGHT * terms["hkd"]
    if not torch.isfinite(loss):
        fail(f"the student's loss is not finite in epoch {epoch}: try a smaller --lr or "
             "distillation weight")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return {"loss": loss.item(), **{k: v.item() for k, v in terms.items()}}


def train(model, ds, args, epochs, seed, path, config, who, teacher=None, structure=None,
          snapshot=None):
    """SGD, cosine annealing, `epochs` resumable (common.fit); a student distils from teacher."""
    learned, device = {}, next(model.parameters()).device
    if teacher is not None and args.fitnet:  # trained with the student
        learned["regressor"] = torch.nn.Linear(model.convs[LAYER].fc.out_features,
                                               teacher.convs[LAYER].fc.out_features).to(device)
    if teacher is not None and args.hkd:
        learned["hkd"] = HolisticMaps(model.global_dim, teacher.global_dim).to(device)
    params = [p for m in (model, *learned.values()) for p in m.parameters()]
    opt = torch.optim.SGD(params, lr=args.lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs, eta_min=min(LR_MIN, args.lr))
    gen = torch.Generator().manual_seed(seed)
    batch = (9 if args.hkd else 4) if args.dry_run else BATCH_SIZE  # HKD: k + 1 clouds

    def train_epoch(epoch):
        model.train()
        lr = sched.get_last_lr()[0]
        batches = data.pointcloud_batches(ds["train_points"], ds["train_labels"], batch,
                                          args.num_points, train=True, generator=gen)
        total = 1 if args.dry_run else len(ds["train_labels"]) // batch
        steps = [train_step(model, teacher, pts.to(device), y.to(device), args, opt, learned, epoch)
                 for pts, y in common.progress(batches, total, f"{who} epoch {epoch:03d}")]
        return {**{k: sum(s[k] for s in steps) / len(steps) for k in steps[0]}, "lr": lr}

    return common.fit({"model": model, **learned}, opt, epochs, train_epoch, path, config, gen,
                      who, sched, structure=structure, snapshot=snapshot)


def get_args(argv):
    p = common.Parser(__doc__)
    p.add_argument("--data", choices=["modelnet40", "synthetic"], default=None,
                   help="the real modelnet40_ply_hdf5_2048 (None: modelnet40; synthetic with "
                        "--dry-run), or 40 generated shape classes, labelled synthetic")
    p.add_argument("--data-dir", default="data/modelnet40_ply_hdf5_2048",
                   help="where the release's files are, or go")
    p.add_argument("--num-points", type=int, default=1024, help="first P points of each cloud")
    p.add_argument("--train-per-class", type=int, help="clouds per class: a fixed, balanced draw "
                   "of the real training set, the teacher's too (None: all); synthetic: made (20)")
    p.add_argument("--test-per-class", type=int, help="synthetic only: test clouds made (None: 5; "
                   "the real test set is always the whole official split)")
    p.add_argument("--variant", choices=list(models.STUDENT_VARIANTS), default="base",
                   help="the paper's student or a variant of Table 6")
    common.add_args(p, EPOCHS, LR, "runs/modelnet")
    p.add_argument("--save-epochs", type=lambda t: [int(e) for e in t.split(",")], default=[],
                   help="also save the student after these epochs, e.g. 1,5,10 (for figures)")
    args = p.parse_args(argv)
    args.data = args.data or ("synthetic" if args.dry_run else "modelnet40")
    synth = args.data == "synthetic"
    if args.dry_run:
        args.epochs = args.teacher_epochs = 1
    if synth:  # None: synthetic.py's sizes
        args.train_per_class = 20 if args.train_per_class is None else args.train_per_class
        args.test_per_class = 5 if args.test_per_class is None else args.test_per_class
    common.check_args(p, args, [
        ("--num-points", 20 < args.num_points <= (synthetic.RELEASE_POINTS if synth else 1e6),
         f"> 20 (the teacher's k), and at most {synthetic.RELEASE_POINTS} with synthetic data"),
        ("--train-per-class", args.train_per_class is None or 1 <= args.train_per_class <= (
            1000 if synth else 1e9), ">= 1, and at most 1000 with synthetic data"),
        ("--test-per-class", args.test_per_class is None or synth and 1 <= args.test_per_class
         <= 1000, "in [1, 1000] with synthetic data, left out with real data (whole test split)"),
        ("--save-epochs", all(1 <= e <= args.epochs for e in args.save_epochs),
         f"epochs in [1, --epochs = {args.epochs}]")])
    if args.dry_run:
        args.train_per_class, args.num_points = 1, min(args.num_points, 128)
        args.test_per_class = 1 if synth else args.test_per_class
    return args


def main(argv=None):
    args = get_args(argv)
    if args.summarize:  # a table of finished runs
        import visualize
        return visualize.summarize(args.summarize, "modelnet")
    device = common.pick_device(args.device)
    name = (f"synthetic-{args.train_per_class}x{args.test_per_class}" if args.data == "synthetic"
            else f"modelnet40{f'-{args.train_per_class}perclass' if args.train_per_class else ''}")
    run_dir = common.open_run(args, name)
    try:
        ds = (synthetic.synthetic_modelnet40(args.train_per_class, args.test_per_class,
                                             args.num_points) if args.data == "synthetic"
              else data.load_modelnet40(args.data_dir))
    except data.DataError as e:
        fail(str(e))
    N, P = ds["train_points"].shape[:2]  # (N, P, 3)
    if P < args.num_points:
        fail(f"--num-points {args.num_points}, but the data's clouds have {P} points")
    if args.data != "synthetic" and args.train_per_class:  # the test set stays whole
        ds, fewer = data.balanced_subset(ds, args.train_per_class)
        if fewer:
            log(f"--train-per-class {args.train_per_class}: fewer in {', '.join(fewer)}; all taken")
    if len(ds["train_labels"]) < BATCH_SIZE and not args.dry_run:
        fail(f"{len(ds['train_labels'])} training clouds, fewer than a batch ({BATCH_SIZE})")
    log(f"data {name}: train {len(ds['train_labels'])} clouds (of {N}), test "
        f"{len(ds['test_labels'])}; {args.num_points} of each cloud's {P} points | {device}")
    # the teacher: trained once with DGCNN's settings, then reused
    config = {"experiment": "modelnet", "model": "dgcnn_teacher", "epochs": args.teacher_epochs,
              "seed": TEACHER_SEED, "recipe": [LR, LR_MIN, MOMENTUM, WEIGHT_DECAY, SMOOTHING,
                                               BATCH_SIZE], "num_points": args.num_points,
              "dry_run": args.dry_run, "data": common.digest(*[ds[k] for k in (
                  "train_points", "train_labels", "test_points", "test_labels")])}
    teacher_args, path = common.teacher_run(args, LR, config, name, run_dir)
    torch.manual_seed(TEACHER_SEED)
    teacher = models.dgcnn_teacher(num_classes=len(ds["class_names"])).to(device)
    fit_t = train(teacher, ds, teacher_args, args.teacher_epochs, TEACHER_SEED, path, config,
                  "teacher")
    teacher.eval().requires_grad_(False)
    log(f"teacher from {path}: {fit_t['epoch'] + 1} epochs, the last one's weights")
    structure_t = None if not args.lsp else structure.teacher_structure(  # over its own graphs
        args, [teacher.edge_features(pts.to(device))[LAYER]
               for pts, _ in test_batches(ds, args, "train", PROBE_BATCHES)])
    # the student (Table 4, or a Table 6 variant)
    torch.manual_seed(args.seed)
    student = models.dgcnn_student(args.variant).to(device)
    log(f"{common.method_name(args)}: teacher {models.num_params(teacher):,} parameters (k = "
        f"{teacher.k}), student {models.num_params(student):,} (k = {student.k})")

    @torch.no_grad()
    def measure():  # over the union graph, on the first STRUCTURE_BATCHES; acc on all
        student.eval()
        triples = [(f_s, f_t, union_graph(ei_s, ei_t, len(f_s))) for (f_s, ei_s), (f_t, ei_t) in (
            [m.edge_features(pts.to(device))[LAYER] for m in (student, teacher)]
            for pts, _ in test_batches(ds, args, count=STRUCTURE_BATCHES))]
        return {**structure.structure_metrics(triples),
                "acc": evaluate(student, ds, args, device)[0]}

    def snapshot(epoch):
        if epoch in args.save_epochs:
            common.save({"model": student.state_dict(), "epoch": epoch},
                        os.path.join(run_dir, f"student_epoch{epoch:03d}.pt"))

    config_s = {"teacher": common.digest(*teacher.state_dict().values())}
    fit = train(student, ds, args, args.epochs, args.seed, os.path.join(run_dir, "ckpt.pt"),
                config_s, "student", teacher, measure, snapshot)
    end = measure()
    (acc, macc), (t_acc, t_macc) = (evaluate(m, ds, args, device) for m in (student, teacher))
    log(f"last epoch: test acc {acc:.4f}, mean class acc {macc:.4f}; teacher {t_acc:.4f} / "
        f"{t_macc:.4f}")
    common.log_structure("the student's structure on the test clouds", end)
    common.save_results(args, "modelnet", name, run_dir, {
        "macc": macc, "num_points": args.num_points, "params": models.num_params(student), **end,
        "structure_by_epoch": fit["structure_by_epoch"],
        "teacher": {"params": models.num_params(teacher), "acc": t_acc, "macc": t_macc,
                    "file": path, "digest": config_s["teacher"], "structure": structure_t}})


if __name__ == "__main__":
    common.main_guard(main)
