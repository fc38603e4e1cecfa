"""PPI node classification (Sec. 4.1, Tables 1-2): GAT teacher -> small GAT student.

One command runs the whole experiment: if no teacher checkpoint exists it trains the teacher
(Table 1) and saves it, then it trains the student with the chosen knowledge (Eq. 7):

    L = BCE(student, y) + λ L_LSP (+ KD, AT, FitNet terms when asked for)

Two methods the LSP paper does not have can be compared with it: Holistic KD (--hkd, over the
nodes of each batch) and the label-correlation KD of the HKD authors' slides (--kd-corr).

    python train_ppi.py --lsp --kernel rbf                  # the paper's Student_LSP
    python train_ppi.py --hkd --kd                          # HKD + KD (not in the paper)
    python train_ppi.py --data synthetic --scale 0.1 --epochs 60 --teacher-epochs 60 \
        --lsp --sigma auto                                  # each model's median σ (ours)

Model selection on the validation graphs; the test micro-F1 reported is the one at the
best-validation epoch. Dimensions: N nodes, E edges, F features, C = 121 labels.
"""
import itertools
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import data
import lsp_kd
from experiment import (Meter, TeacherOutput, add_distill_args, add_multilabel_args,
                        check_distill_flags, cost_of, distill_terms, distilling, epoch_means,
                        kernel_kwargs, log_epoch, log_structure, log_table, method_name,
                        paper_row, require, stack_outputs, start_record, structure_metrics,
                        structure_results, teacher_sigma, teacher_structure, total_loss)
from models import gat_student, gat_teacher, num_params
from runs import (SAVE_EVERY, add_run_args, check_finite, check_weights, fingerprint,
                  given_flags, main_guard, open_run, parser_for, pick_device,
                  restore_training_state, run_rules, save_results, save_snapshot, set_seed,
                  student_progress, summarize, training_state)
from teacher import (add_optimiser_args, add_teacher_args, as_teacher, load_or_train_teacher,
                     teacher_provenance)

# NOTE: the paper's LSP is Eq. (3)-(7) with RBF, λ = 100, in every epoch; the official code
# differs in all of these. Here the paper is the default, and --official sets the official
# recipe, so that anyone can see what the difference does.
OFFICIAL = {"kernel": "l1_official", "teacher_first": True, "lsp_weight": 1.0,
            "lsp_epochs": 30, "lsp_layer_s": 2}


# ----------------------------------------------------------------------------------------
# Metrics

def micro_f1(logits, y):
    """Micro-F1 over all nodes and labels, a label predicted when its logit > 0."""
    # NOTE: the paper does not give its threshold and the official code predicts logits
    # >= 0.5; here logits > 0, probability 0.5, as PyG's PPI example, because it is the
    # sigmoid's own decision boundary.
    pred = logits > 0
    y = y > 0.5
    tp = (pred & y).sum().item()
    fp = (pred & ~y).sum().item()
    fn = (~pred & y).sum().item()
    return 2 * tp / max(2 * tp + fp + fn, 1)


@torch.no_grad()
def evaluate(model, graphs, device):
    """Micro-F1 of `model` pooled over `graphs`; ends the run when its logits are not finite
    (a model whose weights diverged must not be kept, a teacher must not be saved)."""
    model.eval()
    logits = torch.cat([model(g.x.to(device), g.edge_index.to(device)).cpu() for g in graphs])
    check_finite(None, logits=logits)
    return micro_f1(logits, torch.cat([g.y for g in graphs]))


@torch.no_grad()
def teacher_outputs(teacher, graphs, args, device, sigma_t=None):
    """What the frozen teacher offers the losses, computed once per graph (the graphs are
    fixed): a TeacherOutput(feat (N, F_t), logits (N, C), log_ls = log LS^t of Eq. (3), (E,),
    or None without --lsp, sigma) per graph. With --sigma auto the teacher's σ is sigma_t,
    or when None the median distance between neighbours over all these graphs' edges."""
    teacher.eval()
    per_graph = []
    for g in graphs:
        ei = g.edge_index.to(device)
        feats, logits = teacher(g.x.to(device), ei, return_feats=True)
        check_finite(None, teacher_features=feats[args.lsp_layer_t], teacher_logits=logits)
        per_graph.append((feats[args.lsp_layer_t], logits, ei))  # (N, F_t), (N, C), (2, E)
    if sigma_t is None:  # one σ over all the graphs: their features and edges stacked
        sigma_t = teacher_sigma(args, [(f, ei) for f, _, ei in per_graph])
    kw = kernel_kwargs(args, sigma_t)
    return [TeacherOutput(f, logits, log_ls=lsp_kd.log_local_structure(f, ei, args.kernel, **kw)
                          if args.lsp else None, sigma=sigma_t) for f, logits, ei in per_graph]


@torch.no_grad()
def test_structure(student, layer_s, graphs, outs_t, device):
    """structure_metrics between the student's layer and the teacher's on the test graphs:
    how far the student is from the teacher's structure (Fig. 1)."""
    student.eval()

    def triples():
        for g, out_t in zip(graphs, outs_t):
            ei = g.edge_index.to(device)
            feats_s, _ = student(g.x.to(device), ei, return_feats=True)
            yield feats_s[layer_s], out_t.feat, ei
    return structure_metrics(triples())


# ----------------------------------------------------------------------------------------
# Training

def train_epoch(model, ds, args, opt, meter, gen, epoch, outs_t=None, regressor=None,
                hkd_maps=None):
    """One pass of Adam over the training graphs (Eq. 7); returns {term: mean over steps}."""
    device = meter.device
    model.train()
    history = []
    batches = data.ppi_batches(ds["train"], args.batch_size, generator=gen)
    for idx, g in itertools.islice(batches, 1 if args.dry_run else None):
        x, y, ei = g.x.to(device), g.y.to(device), g.edge_index.to(device)
        meter.start()
        feats_s, logits = model(x, ei, return_feats=True)
        layer = args.lsp_layer_s if outs_t is not None else -1  # the features the terms use
        check_finite(epoch, features=feats_s[layer], logits=logits)
        terms = {"bce": F.binary_cross_entropy_with_logits(logits, y)}
        if outs_t is not None:
            # NOTE: the paper ran no KD on PPI ("not suitable": 121 labels, no softmax); here
            # --kd compares per-label sigmoids (multilabel), to fill the gap in its table.
            terms.update(distill_terms(
                args, feats_s[args.lsp_layer_s], logits, ei,
                stack_outputs([outs_t[i] for i in idx]), g.batch.to(device), regressor,
                multilabel=True, with_lsp=args.lsp_epochs is None or epoch < args.lsp_epochs,
                hkd_maps=hkd_maps))
        loss = total_loss(args, terms["bce"], terms)
        check_finite(epoch, loss=loss, **terms)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        meter.stop()
        history.append({k: v.item() for k, v in {"loss": loss, **terms}.items()})
    return epoch_means(history)


def train(model, ds, args, device, log, epochs, seed, outs_t=None, structure=None,
          snapshot=None, resume=None, save_progress=None):
    """Train `model` (the teacher, or with the teacher's outputs outs_t the student) for
    `epochs`, the batch order drawn from `seed`; structure() -> metrics is logged before the
    first epoch and after the epochs of STRUCTURE_EPOCHS, snapshot(epoch) may save the
    weights. An interrupted run goes on from a training_state `resume`; one is handed to
    save_progress every SAVE_EVERY epochs.
    Returns {best_val, epoch, s_per_iter, peak_mb, memory, structure_by_epoch, ...}, the
    model left holding the weights of its best-validation epoch."""
    regressor = hkd_maps = None
    if outs_t is not None:  # the student: F_s and F_t of the layers LSP/AT/FitNet/HKD use
        hidden = model.layers[:-1][args.lsp_layer_s]
        F_s, F_t = hidden.heads * hidden.out_dim, outs_t[0].feat.size(1)
        if args.fitnet:  # FitNet's learned regressor F_s -> F_t
            regressor = nn.Linear(F_s, F_t).to(device)
        if args.hkd:     # HKD's maps Θ^s_l, Θ^t_l, trained with the student
            hkd_maps = lsp_kd.HolisticMaps(F_s, F_t, args.hkd_dim, args.hkd_layers).to(device)
    params = list(model.parameters()) + [p for learned in (regressor, hkd_maps) if learned
                                         for p in learned.parameters()]
    opt = torch.optim.Adam(params, lr=args.lr, weight_decay=args.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    meter, best_val, best_epoch, best_state, start = Meter(device), -1.0, -1, None, 0
    learned = {"regressor": regressor, "hkd_maps": hkd_maps}
    if resume is not None:  # an interrupted run: on from its last saved epoch
        start = restore_training_state(resume, model, opt, gen, learned=learned)
        best_val, best_epoch, best_state = resume["best"]
        record = resume.get("record") or start_record(None, log)
    else:
        record = start_record(structure, log)
    for epoch in range(start, epochs):
        t0 = time.time()
        means = train_epoch(model, ds, args, opt, meter, gen, epoch, outs_t, regressor,
                            hkd_maps)
        check_weights(epoch, model)
        # NOTE: the paper does not say which epoch it reports (the official code keeps its
        # teacher's last); here each model's best-validation epoch, because then no test
        # number picks a checkpoint.
        val = evaluate(model, ds["valid"], device)
        if val > best_val:
            best_val, best_epoch = val, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        log_epoch(log, epoch, means, f"val f1 {val:.4f}", t0, structure, record, snapshot)
        if save_progress is not None and (epoch + 1) % SAVE_EVERY == 0 and epoch + 1 < epochs:
            save_progress(training_state(epoch, model, opt, gen, learned=learned,
                                         best=(best_val, best_epoch, best_state), record=record))
    model.load_state_dict(best_state)
    return {"best_val": best_val, "epoch": best_epoch, "s_per_iter": meter.s_per_iter(),
            "peak_mb": meter.peak_mb(), "memory": meter.memory, **record}


# ----------------------------------------------------------------------------------------
# The command line

def make_parser():
    p = parser_for(__doc__)
    # data
    p.add_argument("--data", choices=["ppi", "synthetic"], default="ppi",
                   help="the real PPI release, or a generated stand-in of the same shape")
    p.add_argument("--data-dir", default="data/ppi", help="where the PPI files are (or go)")
    p.add_argument("--url", default=data.PPI_URL, help="where to download ppi.zip from")
    p.add_argument("--scale", type=float, default=1.0,
                   help="synthetic only: node counts × scale, for CPU runs")
    p.add_argument("--data-seed", type=int, default=0, help="synthetic only: generator seed")
    # teacher
    add_teacher_args(p, "ppi_teacher", epochs=500, seed=0)
    # distillation
    add_distill_args(p)
    add_multilabel_args(p)
    # NOTE: the paper does not say which layers LSP compares; here the last hidden layer of
    # each model (before its ELU), as the official code's teacher, flags to choose others.
    p.add_argument("--lsp-layer-s", type=int, default=-1,
                   help="student hidden layer whose output (before ELU) LSP/AT/FitNet use")
    p.add_argument("--lsp-layer-t", type=int, default=-1, help="the same, for the teacher")
    p.add_argument("--lsp-epochs", type=int, default=None,
                   help="apply LSP only in the first N epochs; None: in all")
    p.add_argument("--official", action="store_true",
                   help="the official code's recipe: --lsp --kernel l1_official "
                        "--teacher-first --lsp-weight 1 --lsp-epochs 30 --lsp-layer-s 2")
    # optimisation
    p.add_argument("--epochs", type=int, default=500, help="epochs of the student")
    add_optimiser_args(p, [("--lr", float, 0.005, "Adam learning rate"),
                           ("--weight-decay", float, 0.0, "Adam weight decay"),
                           ("--batch-size", int, 2, "graphs per training batch")])
    # run
    add_run_args(p, out_dir="runs/ppi", dry_run="1 epoch of 1 batch each, on tiny synthetic "
                 "graphs (--scale 0.03 at most) unless --data ppi is given")
    return p


def get_args(argv=None):
    p = make_parser()
    args, given = p.parse_args(argv), given_flags(p, argv)
    if args.official:
        clash = [f"--{k.replace('_', '-')}" for k in OFFICIAL if k in given]
        if clash:
            p.error(f"--official cannot be combined with {', '.join(clash)}: it sets them to "
                    "the official code's values")
        unused = [f"--{k}" for k in ("sigma", "degree", "c") if k in given]
        if unused:
            p.error(f"{', '.join(unused)} would do nothing with --official: its kernel is "
                    "the official code's L1 similarity")
        args.lsp = True
        vars(args).update(OFFICIAL)
    require(p, args, *run_rules(),
            *[(dest, lambda v: v >= 1, ">= 1 (graphs per batch)")
              for dest in ("batch_size", "teacher_batch_size")],
            ("scale", lambda v: 0 < v <= 1, "in (0, 1]"),
            ("lsp_epochs", lambda v: v is None or v >= 1, ">= 1"))
    check_distill_flags(p, args, given)
    for flag, model in (("lsp_layer_s", gat_student()), ("lsp_layer_t", gat_teacher())):
        hidden = len(model.layers) - 1  # checked now, not after the teacher has trained
        require(p, args, (flag, lambda v: -hidden <= v < hidden,
                          f"a hidden layer, in [-{hidden}, {hidden - 1}]"))
    if args.dry_run:
        args.epochs = args.teacher_epochs = 1
        if "data" not in given:  # as --help promises: a smoke test needs no download
            args.data = "synthetic"
        if args.data == "synthetic":
            args.scale = min(args.scale, 0.03)
    require(p, args, ("save_epochs", lambda v: all(1 <= e <= args.epochs for e in v),
                      f"epochs in [1, --epochs = {args.epochs}]"))
    return args


# ----------------------------------------------------------------------------------------
# The experiment: data, teacher, student, report

def data_name(args):
    """The data's name in file names and results: "ppi", or the synthetic set's settings."""
    return (f"synthetic-scale{args.scale:g}-seed{args.data_seed}" if args.data == "synthetic"
            else "ppi")


def load_data(args):
    """-> ds {train, valid, test: [Graph]}."""
    if args.data == "synthetic":
        return data.synthetic_ppi(seed=args.data_seed, scale=args.scale)
    try:
        return data.load_ppi(args.data_dir, url=args.url)
    except data.DataError as e:
        sys.exit(f"error: {e}")


def get_teacher(args, ds, device, run_dir, log):
    """The teacher of Table 1: loaded from its checkpoint, or trained and saved; frozen. It is
    trained with its own --teacher-epochs, --teacher-seed, --teacher-lr, --teacher-weight-decay
    and --teacher-batch-size, which its checkpoint's name records with the data."""
    t = as_teacher(args)
    set_seed(t.seed)  # its initialisation, should it be trained here
    teacher = gat_teacher().to(device)
    config = {"experiment": "ppi", "data": data_name(args), "model": "gat_teacher",
              "epochs": t.epochs, "seed": t.seed, "lr": t.lr, "weight_decay": t.weight_decay,
              "batch_size": t.batch_size, "dry_run": args.dry_run}
    ckpt = load_or_train_teacher(
        teacher, args, config, f"ppi_teacher_{data_name(args)}",
        lambda resume, save_progress: train(
            teacher, ds, t, device, lambda m: log("teacher " + m), t.epochs, t.seed,
            resume=resume, save_progress=save_progress),
        lambda c: f"best val f1 {c['best_val']:.4f} at epoch {c['epoch']}", run_dir, log)
    return teacher, ckpt


def train_student(args, ds, teacher, outs_t, device, run_dir, log):
    """The student of Table 2, trained with what args asks for; outs_t: the teacher's outputs
    on the train and test graphs. -> (student, train's dict + teacher_structure)."""
    structure_t = None  # how much structure the teacher offers LSP, on the training graphs
    if args.lsp:
        samples = [(o.feat, g.edge_index.to(device)) for g, o in zip(ds["train"], outs_t["train"])]
        structure_t = teacher_structure(args, samples, outs_t["train"][0].sigma, log)
    set_seed(args.seed)
    student = gat_student().to(device)
    log(f"{method_name(args)}: teacher {num_params(teacher):,} params, "
        f"student {num_params(student):,}")
    fit = train(student, ds, args, device, log, args.epochs, args.seed,
                outs_t["train"] if distilling(args) else None,
                lambda: {**test_structure(student, args.lsp_layer_s, ds["test"], outs_t["test"],
                                          device), "test_f1": evaluate(student, ds["test"], device)},
                lambda epoch: save_snapshot(args, run_dir, student, epoch),
                *student_progress(run_dir, log, fingerprint(student, teacher)))
    return student, {**fit, "teacher_structure": structure_t}


def report(args, run_dir, ds, device, log, teacher, ckpt, student, fit, outs_test):
    """Test the student and the teacher, save the student's checkpoint, results.json and
    cost.json into run_dir, and print a row in the columns of Table 2."""
    test_f1 = evaluate(student, ds["test"], device)
    teacher_f1 = evaluate(teacher, ds["test"], device)
    structure = test_structure(student, args.lsp_layer_s, ds["test"], outs_test, device)
    log(f"test micro-F1 {test_f1:.4f} at the best-validation epoch {fit['epoch']} "
        f"(val f1 {fit['best_val']:.4f}); teacher test micro-F1 {teacher_f1:.4f}")
    log_structure(log, "local structure on the test graphs, best-validation epoch (Eq. 5-6, "
                  "RBF)", structure)
    graphs = [((g.x.to(device), g.edge_index.to(device)), 1) for g in ds["test"]]  # per graph
    method = method_name(args)
    cost = {"student": cost_of(student, graphs, 3, fit, "iter"),
            "teacher": cost_of(teacher, graphs, 3, ckpt, "iter")}
    res = {"experiment": "ppi", "method": method, "data": data_name(args),
           "params": cost["student"]["params"], "best_epoch": fit["epoch"],
           "val_f1": fit["best_val"], "test_f1": test_f1, **structure_results(structure, fit),
           "teacher": {"params": cost["teacher"]["params"], "test_f1": teacher_f1,
                       **teacher_provenance(ckpt)}, "device": str(device)}
    results = save_results(args, run_dir, res, cost, student, fit)
    log_table(log, "ppi", [("Teacher", cost["teacher"], [teacher_f1], "teacher"),
                           (method, cost["student"], [test_f1], paper_row(args, "ppi"))])
    log(f"F1 = test micro-F1 at the best-validation epoch; results in {results}")


def main(argv=None):
    args = get_args(argv)
    if args.summarize:
        summarize(args.summarize, "ppi", ["test_f1"])
        return
    device = pick_device(args.device)
    run_dir, log = open_run(args, data_name(args), "ppi")
    ds = load_data(args)
    smallest = min(g.x.size(0) for g in ds["train"])  # a batch holds one graph at least
    if args.hkd and smallest < args.hkd_k + 1:
        sys.exit(f"error: --hkd-k {args.hkd_k} needs k + 1 = {args.hkd_k + 1} nodes in every "
                 f"batch, but a training graph has only {smallest}")
    log(f"data {data_name(args)}: " + ", ".join(f"{s} {len(ds[s])} graphs / "
                                         f"{sum(g.x.size(0) for g in ds[s])} nodes"
                                         for s in ("train", "valid", "test")) + f" | {device}")
    teacher, ckpt = get_teacher(args, ds, device, run_dir, log)
    outs_t = {"train": teacher_outputs(teacher, ds["train"], args, device)}
    outs_t["test"] = teacher_outputs(teacher, ds["test"], args, device, outs_t["train"][0].sigma)
    student, fit = train_student(args, ds, teacher, outs_t, device, run_dir, log)
    report(args, run_dir, ds, device, log, teacher, ckpt, student, fit, outs_t["test"])


if __name__ == "__main__":
    main_guard(main)
