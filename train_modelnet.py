"""ModelNet40 classification (Sec. 3.5, 4.2, Tables 3-6): DGCNN teacher -> small DGCNN student.

Teacher and student build different kNN graphs (k = 20 and k = 10) in their own feature
spaces, so LSP is taken over the union of the two graphs' edges (Sec. 3.5); each model still
aggregates over its own graph. One command trains the teacher if its checkpoint is missing,
then the student:

    python train_modelnet.py --lsp --kernel rbf
    python train_modelnet.py --data synthetic --epochs 20 --teacher-epochs 20 --lsp --sigma auto
    python train_modelnet.py --hkd --kd     # HKD + KD over each batch's clouds (not in the paper)

As DGCNN, no validation split exists: accuracies are those of the last epoch.
Dimensions: B clouds, P points, F features, k neighbours, C = 40 classes.
"""
import itertools
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import data
import lsp_kd
from experiment import (TEST_BATCH, Meter, add_distill_args, check_distill_flags, cost_of,
                        distill_terms, distilling, epoch_means, log_epoch, log_structure,
                        log_table, method_name, paper_row, require, start_record,
                        structure_metrics, structure_results, teacher_output, teacher_sigma,
                        teacher_structure, total_loss)
from models import STUDENT_VARIANTS, dgcnn_student, dgcnn_teacher, num_params
from runs import (SAVE_EVERY, add_run_args, check_finite, check_weights, fingerprint,
                  given_flags, int_list, main_guard, open_run, parser_for, pick_device,
                  restore_training_state, run_rules, save_results, save_snapshot, set_seed,
                  student_progress, summarize, training_state)
from teacher import (add_optimiser_args, add_teacher_args, as_teacher, load_or_train_teacher,
                     teacher_provenance)

PROBE_BATCHES = 4  # training batches on which the teacher's structure is measured (and its σ)


# ----------------------------------------------------------------------------------------
# Metrics

def accuracy(pred, labels, num_classes):
    """Overall accuracy and mean class accuracy over the classes present in `labels`."""
    # NOTE: the paper's mAcc is over all 40 classes; here over the classes present in the
    # test set, because a small or synthetic test set may miss some (the real one has all).
    # counted in integers, as micro_f1 in train_ppi.py: exact fractions (a float32 mean is
    # off in the 8th digit, enough to round one run's Acc and mAcc differently)
    acc = (pred == labels).sum().item() / len(labels)
    per_class = [(pred[labels == c] == c).sum().item() / (labels == c).sum().item()
                 for c in range(num_classes) if (labels == c).any()]
    return acc, float(np.mean(per_class))


def test_batches(ds, args, split="test", count=None):
    """Clouds of a split in batches of TEST_BATCH, in order, unaugmented (1 for a dry run)."""
    batches = data.pointcloud_batches(ds[f"{split}_points"], ds[f"{split}_labels"], TEST_BATCH,
                                      args.num_points, train=False)
    return itertools.islice(batches, 1 if args.dry_run else count)


@torch.no_grad()
def evaluate(model, ds, args, device):
    """(acc, mAcc) on the test clouds."""
    model.eval()
    preds = [model(pts.to(device)).argmax(-1).cpu() for pts, _ in test_batches(ds, args)]
    labels = torch.as_tensor(ds["test_labels"])[:sum(len(p) for p in preds)]
    return accuracy(torch.cat(preds), labels, len(ds["class_names"]))


@torch.no_grad()
def union_features(student, teacher, pts, layer):
    """Both models' EdgeConv `layer` on clouds pts (B, P, 3), and the union of the two kNN
    graphs it aggregated over (Sec. 3.5): ((B*P, F_s), (B*P, F_t), (2, E_u))."""
    (f_s, ei_s), (f_t, ei_t) = student.edge_features(pts)[layer], teacher.edge_features(pts)[layer]
    return f_s, f_t, lsp_kd.union_graph(ei_s, ei_t, f_s.size(0))


@torch.no_grad()
def test_structure(student, teacher, ds, args, device):
    """structure_metrics between the two models on the test clouds over the union graph."""
    student.eval()
    return structure_metrics(union_features(student, teacher, pts.to(device), args.lsp_layer)
                             for pts, _ in test_batches(ds, args))


@torch.no_grad()
def probe_teacher(args, ds, student, teacher, device, log):
    """Before training: the teacher's σ under --sigma auto (the median distance between
    neighbours over the first PROBE_BATCHES training batches, union graphs with the initial
    student's) and, with --lsp, how much structure it offers there (teacher_structure).
    -> (sigma_t or None, teacher_structure's dict or None)."""
    if not args.lsp:
        return None, None
    student.eval()
    samples = [union_features(student, teacher, pts.to(device), args.lsp_layer)[1:]  # (f_t, ei)
               for pts, _ in test_batches(ds, args, "train", PROBE_BATCHES)]
    sigma_t = teacher_sigma(args, samples)  # one σ over all the probed clouds' edges
    return sigma_t, teacher_structure(args, samples, sigma_t, log)


# ----------------------------------------------------------------------------------------
# Training

def train_epoch(model, ds, args, opt, gen, device, epoch, teacher=None, regressor=None,
                sigma_t=None, hkd_maps=None):
    """One pass of SGD over the training clouds (Eq. 7); returns {term: mean over steps}."""
    model.train()
    history = []
    batches = data.pointcloud_batches(ds["train_points"], ds["train_labels"], args.batch_size,
                                      args.num_points, train=True, generator=gen)
    for pts, labels in itertools.islice(batches, 1 if args.dry_run else None):
        pts, labels = pts.to(device), labels.to(device)
        B, P, _ = pts.shape
        feats_s, pooled_s = model.embed(pts)  # EdgeConv outputs, global features (B, F_g)
        logits = model.head(pooled_s)                                    # (B, C)
        outputs = {"features": feats_s[args.lsp_layer][0], "logits": logits}
        if teacher is not None:
            out_t = teacher_output(teacher, pts, args.lsp_layer, args.kd or args.hkd,
                                   args.teacher_amp, sigma_t)
            outputs["teacher_features"] = out_t.feat
            if out_t.logits is not None:
                outputs["teacher_logits"] = out_t.logits
        check_finite(epoch, **outputs)
        terms = {"ce": F.cross_entropy(logits, labels, label_smoothing=args.smoothing)}
        if teacher is not None:
            f_s, ei_s = feats_s[args.lsp_layer]                          # (B*P, F_s), (2, E_s)
            cloud = torch.arange(B, device=device).repeat_interleave(P)  # (B*P,) cloud id
            terms.update(distill_terms(args, f_s, logits, ei_s, out_t, cloud, regressor,
                                       hkd_maps=hkd_maps, inst_s=pooled_s))
        loss = total_loss(args, terms["ce"], terms)
        check_finite(epoch, loss=loss, **terms)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append({k: v.item() for k, v in {"loss": loss, **terms}.items()})
    return epoch_means(history)


def train(model, ds, args, device, log, epochs, seed, teacher=None, sigma_t=None,
          structure=None, snapshot=None, resume=None, save_progress=None):
    """SGD with cosine annealing and label smoothing for `epochs`, the batches drawn from
    `seed` (teacher: distil from it, its σ sigma_t under --sigma auto); structure() ->
    metrics is logged before the first epoch and after those of STRUCTURE_EPOCHS,
    snapshot(epoch) may save the weights. An interrupted run goes on from a training_state
    `resume`; one is handed to save_progress every SAVE_EVERY epochs. Returns {epoch,
    best_val, s_per_epoch, peak_mb, memory, structure_by_epoch, ...} of the last epoch."""
    # NOTE: the paper gives only SGD, lr 0.1, momentum 0.9 and 250 epochs; here the rest as
    # DGCNN's code (cosine to 1e-3, weight decay 1e-4, label smoothing 0.2, batch 32),
    # because the paper builds on DGCNN.
    regressor = hkd_maps = None
    if teacher is not None and args.fitnet:  # FitNet's learned regressor F_s -> F_t
        regressor = nn.Linear(model.convs[args.lsp_layer].fc.out_features,
                              teacher.convs[args.lsp_layer].fc.out_features).to(device)
    if teacher is not None and args.hkd:  # HKD's maps Θ^s_l, Θ^t_l of the global features
        hkd_maps = lsp_kd.HolisticMaps(model.global_dim, teacher.global_dim, args.hkd_dim,
                                       args.hkd_layers).to(device)
    params = list(model.parameters()) + [p for learned in (regressor, hkd_maps) if learned
                                         for p in learned.parameters()]
    opt = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs, eta_min=args.lr_min)
    gen = torch.Generator().manual_seed(seed)
    meter, learned, start = Meter(device), {"regressor": regressor, "hkd_maps": hkd_maps}, 0
    if resume is not None:  # an interrupted run: on from its last saved epoch
        start = restore_training_state(resume, model, opt, gen, sched, learned)
        record = resume.get("record") or start_record(None, log)
    else:
        record = start_record(structure, log)
    for epoch in range(start, epochs):
        t0 = time.time()
        lr = sched.get_last_lr()[0]  # this epoch's
        meter.start()  # one "iteration" of the meter = one epoch here, as in Table 4
        means = train_epoch(model, ds, args, opt, gen, device, epoch, teacher, regressor,
                            sigma_t, hkd_maps)
        sched.step()
        meter.stop()
        check_weights(epoch, model)
        log_epoch(log, epoch, means, f"lr {lr:.4f}", t0, structure, record, snapshot)
        if save_progress is not None and (epoch + 1) % SAVE_EVERY == 0 and epoch + 1 < epochs:
            save_progress(training_state(epoch, model, opt, gen, sched, learned, record=record))
    return {"epoch": epochs - 1, "best_val": None, "s_per_epoch": meter.s_per_iter(),
            "peak_mb": meter.peak_mb(), "memory": meter.memory, **record}


# ----------------------------------------------------------------------------------------
# The command line

def make_parser():
    p = parser_for(__doc__)
    # data
    p.add_argument("--data", choices=["modelnet40", "synthetic"], default="modelnet40",
                   help="the real modelnet40_ply_hdf5_2048 release, or generated clouds")
    p.add_argument("--data-dir", default="data/modelnet40_ply_hdf5_2048",
                   help="where the release's files are (or go)")
    p.add_argument("--url", default=data.MODELNET_URL, help="where to download the release")
    p.add_argument("--num-points", type=int, default=1024, help="first P points of each cloud")
    p.add_argument("--train-per-class", type=int, default=20, help="synthetic only: clouds")
    p.add_argument("--test-per-class", type=int, default=5, help="synthetic only: clouds")
    p.add_argument("--data-seed", type=int, default=0, help="synthetic only: generator seed")
    # teacher
    add_teacher_args(p, "modelnet_teacher", epochs=250, seed=1)
    p.add_argument("--teacher-amp", action="store_true",
                   help="run the frozen teacher under autocast (CUDA: float16, CPU: bfloat16) "
                        "in training; its kNN distances stay float32, but from the second "
                        "EdgeConv on its half-precision features change a few neighbours; "
                        "the probe before training and the structure metrics run it in "
                        "float32")
    # student (Table 6 variants)
    p.add_argument("--variant", choices=list(STUDENT_VARIANTS), default="base",
                   help="the paper's student or a Table 6 variant")
    p.add_argument("--channels-s", type=int_list, default=None,
                   help="EdgeConv widths, e.g. 32,32,64,128; None: the variant's")
    p.add_argument("--mlp-s", type=int_list, default=None, help="MLP widths; None: the variant's")
    p.add_argument("--k-s", type=int, default=10, help="student's k of the kNN graph")
    # distillation
    add_distill_args(p)  # LSP is taken over the union graph of Sec. 3.5
    # NOTE: the paper does not say which layer LSP compares on ModelNet40; here the last
    # EdgeConv of each model, the last one whose output lives on a graph.
    p.add_argument("--lsp-layer", type=int, default=-1,
                   help="EdgeConv layer (of each model) whose output LSP/AT/FitNet use")
    # optimisation
    p.add_argument("--epochs", type=int, default=250, help="epochs of the student")
    add_optimiser_args(p, [("--batch-size", int, 32, "clouds per training batch"),
                           ("--lr", float, 0.1, "SGD learning rate"),
                           ("--lr-min", float, 1e-3, "end of the cosine schedule"),
                           ("--weight-decay", float, 1e-4, "SGD weight decay"),
                           ("--smoothing", float, 0.2, "label smoothing ε")])
    # run
    add_run_args(p, out_dir="runs/modelnet", dry_run="1 epoch of 1 batch each, on few small "
                 "synthetic clouds unless --data modelnet40 is given")
    return p


def get_args(argv=None):
    p = make_parser()
    args, given = p.parse_args(argv), given_flags(p, argv)
    # checked now, not after the teacher has trained: BatchNorm in training needs 2 clouds a
    # batch; the teacher's kNN graph needs more than k points a cloud
    require(p, args, *[(dest, lambda v: v is None or min(v) >= 1, "widths >= 1")
                       for dest in ("channels_s", "mlp_s")])
    teacher, student = dgcnn_teacher(), dgcnn_student(args.variant, args.channels_s, args.mlp_s)
    require(p, args, *run_rules(),
            *[(dest, lambda v: v >= 2, ">= 2 (BatchNorm needs 2 clouds a batch)")
              for dest in ("batch_size", "teacher_batch_size")],
            ("lr_min", lambda v: 0 <= v <= args.lr, "in [0, --lr]"),
            ("teacher_lr_min", lambda v: 0 <= v <= args.teacher_lr, "in [0, --teacher-lr]"),
            *[(dest, lambda v: 0 <= v < 1, "in [0, 1)")
              for dest in ("smoothing", "teacher_smoothing")],
            ("num_points", lambda v: v > teacher.k, f"> {teacher.k} (the teacher's k)"),
            ("train_per_class", lambda v: v >= 1, ">= 1"),
            ("test_per_class", lambda v: v >= 1, ">= 1"))
    if args.hkd:  # HKD's instances are the clouds of a batch: k neighbours each, and itself
        require(p, args, ("batch_size", lambda v: v >= args.hkd_k + 1,
                          f">= --hkd-k + 1 = {args.hkd_k + 1} with --hkd (its kNN graph of the "
                          "batch's clouds)"))
    if args.dry_run:
        args.epochs = args.teacher_epochs = 1
        args.batch_size = min(args.batch_size, max(4, args.hkd_k + 1 if args.hkd else 0))
        args.teacher_batch_size = min(args.teacher_batch_size, 4)
        if "data" not in given:  # as --help promises: a smoke test needs no download
            args.data = "synthetic"
        if args.data == "synthetic":
            args.train_per_class, args.test_per_class = 1, 1
            args.num_points = min(args.num_points, 128)
    check_distill_flags(p, args, given)
    if args.teacher_amp and not distilling(args):  # the metrics run the teacher in float32
        p.error("--teacher-amp would do nothing without a distillation method (--lsp, --kd, "
                "--at, --fitnet, --hkd)")
    require(p, args, ("k_s", lambda v: 0 < v < args.num_points,
                      f"in [1, --num-points = {args.num_points})"),
            ("save_epochs", lambda v: all(1 <= e <= args.epochs for e in v),
             f"epochs in [1, --epochs = {args.epochs}]"))
    for name, convs in (("teacher", len(teacher.convs)), ("student", len(student.convs))):
        require(p, args, ("lsp_layer", lambda v: -convs <= v < convs,
                          f"an EdgeConv layer of the {name}, in [-{convs}, {convs - 1}]"))
    return args


# ----------------------------------------------------------------------------------------
# The experiment: data, teacher, student, report

def data_name(args):
    """The data's name in file names and results: "modelnet40", or the synthetic set's
    settings; the number of points is the run's, not the data's (--num-points)."""
    return (f"synthetic-{args.train_per_class}x{args.test_per_class}-seed{args.data_seed}"
            if args.data == "synthetic" else "modelnet40")


def load_data(args):
    """-> ds {train_points, train_labels, test_points, test_labels, class_names}."""
    if args.data == "synthetic":
        ds = data.synthetic_modelnet40(args.train_per_class, args.test_per_class,
                                       args.num_points, seed=args.data_seed)
    else:
        try:
            ds = data.load_modelnet40(args.data_dir, url=args.url)
        except data.DataError as e:
            sys.exit(f"error: {e}")
    for flag, size in (("--batch-size", args.batch_size),
                       ("--teacher-batch-size", args.teacher_batch_size)):
        if len(ds["train_labels"]) < size:  # an epoch drops an incomplete batch
            sys.exit(f"error: {flag} {size} is more than the {len(ds['train_labels'])} "
                     "training clouds: an epoch would have no batch")
    available = ds["train_points"].shape[1]
    if args.num_points > available:
        sys.exit(f"error: --num-points {args.num_points} is more than the {available} points "
                 f"per cloud that the data holds")
    return ds


def get_teacher(args, ds, device, run_dir, log):
    """The paper's DGCNN teacher: loaded from its checkpoint, or trained and saved; frozen.
    It is trained on the run's data and --num-points, with its own --teacher-epochs,
    --teacher-seed, --teacher-batch-size, --teacher-lr, --teacher-lr-min,
    --teacher-weight-decay and --teacher-smoothing, which its checkpoint's name records."""
    t = as_teacher(args)
    set_seed(t.seed)  # its initialisation, should it be trained here
    teacher = dgcnn_teacher(num_classes=len(ds["class_names"])).to(device)
    config = {"experiment": "modelnet", "data": data_name(args), "model": "dgcnn_teacher",
              "num_points": args.num_points, "epochs": t.epochs, "seed": t.seed, "lr": t.lr,
              "lr_min": t.lr_min, "weight_decay": t.weight_decay, "smoothing": t.smoothing,
              "batch_size": t.batch_size, "dry_run": args.dry_run}
    if args.data != "synthetic":  # the whole release, or the subset it was trained on
        config["files"] = ds["files"]
    return teacher, load_or_train_teacher(
        teacher, args, config, f"modelnet_teacher_{data_name(args)}",
        lambda resume, save_progress: train(
            teacher, ds, t, device, lambda m: log("teacher " + m), t.epochs, t.seed,
            resume=resume, save_progress=save_progress),
        lambda c: "no validation split: the last epoch's weights", run_dir, log)


def train_student(args, ds, teacher, device, run_dir, log):
    """The student (Table 4, or a Table 6 variant) trained with what args asks for;
    -> (student, train's dict)."""
    set_seed(args.seed)
    student = dgcnn_student(args.variant, args.channels_s, args.mlp_s, k=args.k_s).to(device)
    log(f"{method_name(args)}: teacher {num_params(teacher):,} params (k={teacher.k}), student "
        f"{num_params(student):,} params (k={args.k_s}, EdgeConv "
        f"{[c.fc.out_features for c in student.convs]})")
    sigma_t, structure_t = probe_teacher(args, ds, student, teacher, device, log)
    fit = train(student, ds, args, device, log, args.epochs, args.seed,
                teacher if distilling(args) else None, sigma_t,
                lambda: {**test_structure(student, teacher, ds, args, device),
                         "acc": evaluate(student, ds, args, device)[0]},
                lambda epoch: save_snapshot(args, run_dir, student, epoch),
                *student_progress(run_dir, log, fingerprint(student, teacher)))
    return student, {**fit, "teacher_structure": structure_t}


def report(args, run_dir, ds, device, log, teacher, ckpt, student, fit):
    """Test the student and the teacher, save the student's checkpoint, results.json and
    cost.json into run_dir, and print a row in the columns of Table 4."""
    # NOTE: the paper does not say which epoch it reports; here the last epoch's, as DGCNN,
    # because the release has no validation split and the best test epoch would be chosen on
    # the test set.
    acc, macc = evaluate(student, ds, args, device)
    t_acc, t_macc = evaluate(teacher, ds, args, device)
    structure = test_structure(student, teacher, ds, args, device)
    log(f"last epoch: test acc {acc:.4f}, mean class acc {macc:.4f} (over the classes present "
        f"in the test set); teacher {t_acc:.4f} / {t_macc:.4f}")
    log_structure(log, "local structure on the test clouds over the union graph, last epoch "
                  "(Eq. 5-6, RBF)", structure)
    batches = itertools.islice(data.pointcloud_batches(
        ds["test_points"], ds["test_labels"], TEST_BATCH, args.num_points), 3)
    clouds = [((pts.to(device),), len(pts)) for pts, _ in batches]  # per cloud, 3 batches
    method = method_name(args)
    cost = {"student": cost_of(student, clouds, 1, fit, "epoch"),
            "teacher": cost_of(teacher, clouds, 1, ckpt, "epoch")}
    res = {"experiment": "modelnet", "method": method, "data": data_name(args),
           "num_points": args.num_points, "params": cost["student"]["params"], "acc": acc,
           "macc": macc, **structure_results(structure, fit),
           "teacher": {"params": cost["teacher"]["params"], "acc": t_acc, "macc": t_macc,
                       **teacher_provenance(ckpt)}, "device": str(device)}
    results = save_results(args, run_dir, res, cost, student, fit)
    log_table(log, "modelnet", [("Teacher", cost["teacher"], [t_acc, t_macc], "teacher"),
                                (method, cost["student"], [acc, macc],
                                 paper_row(args, "modelnet"))])
    log(f"Acc/mAcc = last epoch, test set; results in {results}")


def main(argv=None):
    args = get_args(argv)
    if args.summarize:
        summarize(args.summarize, "modelnet", ["acc", "macc"])
        return
    device = pick_device(args.device)
    run_dir, log = open_run(args, data_name(args), "modelnet")
    ds = load_data(args)
    if ds.get("subset"):
        log(f"the data in {args.data_dir} is a subset of the release ({', '.join(ds['files'])})"
            ": its scores are not comparable with the paper's", warning=True)
    log(f"data {data_name(args)}: train {len(ds['train_labels'])} clouds, test "
        f"{len(ds['test_labels'])} clouds, {args.num_points} points | {device}")
    teacher, ckpt = get_teacher(args, ds, device, run_dir, log)
    student, fit = train_student(args, ds, teacher, device, run_dir, log)
    report(args, run_dir, ds, device, log, teacher, ckpt, student, fit)


if __name__ == "__main__":
    main_guard(main)
