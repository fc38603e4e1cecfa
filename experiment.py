"""What the PPI and ModelNet40 experiments compute alike: the distillation flags and the terms
of one step (Eq. 7, the baselines of Sec. 4.1, and HKD and the label correlation, which the
paper does not have), the epoch line, the structure metrics, the cost (time and memory) and
the paper's figures beside a run's row (with its method's name). Where a run's outputs go is
in runs.py, where its teacher comes from in teacher.py.

train_ppi.py, train_modelnet.py and bench.py import it; it imports no script.
Dimensions: N nodes (B*P points on ModelNet40), E edges, F features, C labels or classes.
"""
import argparse
import ctypes
import gc
import resource
import time
from typing import NamedTuple, Optional

import numpy as np
import torch

import lsp_kd

TEST_BATCH = 16  # ModelNet40 clouds per inference batch, as DGCNN's test loader


# ----------------------------------------------------------------------------------------
# Distillation: the flags, and the terms of one training step

class TeacherOutput(NamedTuple):
    """What the frozen teacher offers the distillation terms at one step."""
    feat: torch.Tensor                          # (N, F_t) the layer LSP, AT and FitNet use
    logits: Optional[torch.Tensor] = None       # (N, C) nodes or (B, C) clouds, for KD
    edge_index: Optional[torch.Tensor] = None   # (2, E_t) its own graph when not the student's
    log_ls: Optional[torch.Tensor] = None       # (E,) log LS^t of Eq. (3), cached on a fixed graph
    sigma: Optional[float] = None               # the teacher's own σ under --sigma auto
    inst: Optional[torch.Tensor] = None         # (B, F_g) HKD's instances when not feat's nodes


def stack_outputs(outs):
    """TeacherOutputs of several graphs as one, stacked as data.ppi_batches stacks the graphs."""
    log_ls = None if outs[0].log_ls is None else torch.cat([o.log_ls for o in outs])  # (E,)
    return TeacherOutput(torch.cat([o.feat for o in outs]),             # (N, F_t)
                         torch.cat([o.logits for o in outs]), log_ls=log_ls)  # (N, C)


@torch.no_grad()
def teacher_output(teacher, pts, layer, with_logits, amp=False, sigma=None):
    """The frozen DGCNN teacher on clouds pts (B, P, 3) -> TeacherOutput: its EdgeConv `layer`
    (B*P, F_t), that layer's kNN graph (2, B*P*k), with_logits its logits (B, C) for KD and
    its pooled global feature (B, F_g) for HKD (else only its EdgeConvs run), its σ; amp:
    under autocast, the outputs back in float32."""
    pooled_t = logits_t = None
    with torch.autocast(pts.device.type, enabled=amp):
        if with_logits:
            feats_t, pooled_t = teacher.embed(pts)
            logits_t = teacher.head(pooled_t)
        else:
            feats_t = teacher.edge_features(pts)
    f_t, ei_t = feats_t[layer]
    return TeacherOutput(f_t.float(), None if logits_t is None else logits_t.float(), ei_t,
                         sigma=sigma, inst=None if pooled_t is None else pooled_t.float())


def sigma_arg(text):
    """--sigma: a number > 0, or "auto"."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0 or auto, got {text!r}")
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"σ must be > 0, got {text}")
    return value


# HKD's hyper-parameters (flag dest -> (default, its letter in the method's name)).
# NOTE: the HKD slides give none of them; here the HKD authors' code's: k = 8 neighbours,
# L = 1 hop (its TAGConv), τ = 0.07, d = 128, because the slides build on that code.
HKD_DEFAULTS = {"hkd_k": (8, "k"), "hkd_layers": (1, "L"), "hkd_tau": (0.07, "tau"),
                "hkd_dim": (128, "dim")}
# NOTE: neither weight is in the slides (the HKD authors' code weighs its HKD loss 3, with a
# memory bank of negatives); here each is the round number at which, at initialisation, the
# term's gradient on the student is of the order of the task loss's, measured on the
# training batches of the synthetic data (README): at weight 1, HKD's is 4-6× the CE's on
# ModelNet40 and 12-22× the BCE's on PPI, the label correlation's 0.7× the BCE's.
HKD_WEIGHT = 0.1
KD_CORR_WEIGHT = 1.0


def add_distill_args(p):
    """The distillation flags (bench.py's too); the methods combine, none = Student_Full."""
    p.add_argument("--lsp", action="store_true", help="local structure preserving, Eq. (7)")
    p.add_argument("--kd", action="store_true", help="Hinton KD (on PPI with per-label sigmoids)")
    p.add_argument("--at", action="store_true",
                   help="attention transfer on node (PPI) or point features")
    p.add_argument("--fitnet", action="store_true", help="FitNet hint with a linear regressor")
    p.add_argument("--kernel", choices=list(lsp_kd.KERNELS), default="rbf",
                   help="SIM in Eq. (3): Eq. (4) l2, Eq. (8) rbf/poly/linear, or the official "
                        "code's l1_official")
    p.add_argument("--lsp-weight", type=float, default=100.0, help="λ of Eq. (7)")
    p.add_argument("--teacher-first", action="store_true",
                   help="KL(LS_t || LS_s) as the official code, instead of Eq. (5)")
    p.add_argument("--sigma", type=sigma_arg, default=1.0,
                   help="RBF σ of Eq. (8); auto: each model's own median distance between "
                        "neighbours, the student's recomputed at every step (not the paper's)")
    p.add_argument("--degree", type=int, default=2, help="polynomial kernel degree d")
    p.add_argument("--c", type=float, default=0.0, help="polynomial kernel offset c")
    p.add_argument("--kd-alpha", type=float, default=0.1, help="weight α of the KD term")
    # NOTE: the paper gives KD's α = 0.1 (ModelNet40) but not T; here T = 4, a usual value.
    p.add_argument("--kd-T", type=float, default=4.0, help="KD temperature T")
    # NOTE: the paper gives no AT or FitNet weight; here AT 1000, because its attention maps
    # are L2-normalised per graph or cloud, so its MSE is of order 1/N, and FitNet 1.
    p.add_argument("--at-weight", type=float, default=1000.0, help="weight of the AT term")
    p.add_argument("--fitnet-weight", type=float, default=1.0, help="weight of the FitNet term")
    p.add_argument("--hkd", action="store_true",
                   help="holistic KD (Zhou et al., ICCV 2021; not in the LSP paper): InfoNCE "
                        "between GNN embeddings of kNN graphs of the batch's instances (PPI: "
                        "its nodes; ModelNet40: its clouds)")
    p.add_argument("--hkd-weight", type=float, default=HKD_WEIGHT, help="weight of the HKD term")
    p.add_argument("--hkd-k", type=int, default=HKD_DEFAULTS["hkd_k"][0],
                   help="HKD: neighbours of each instance in its kNN context graph")
    p.add_argument("--hkd-layers", type=int, default=HKD_DEFAULTS["hkd_layers"][0],
                   help="HKD: L, the hops of H = Σ_{l=0..L} Â^l F Θ_l")
    p.add_argument("--hkd-tau", type=float, default=HKD_DEFAULTS["hkd_tau"][0],
                   help="HKD: temperature τ of the cosine similarity f")
    p.add_argument("--hkd-dim", type=int, default=HKD_DEFAULTS["hkd_dim"][0],
                   help="HKD: common width d of the learned maps Θ_l")
    p.add_argument("--hkd-no-centre", action="store_true",
                   help="HKD on the features as they are, as the slides write it, instead of "
                        "centred over the batch (ours)")


def add_multilabel_args(p):
    """The flags of the multi-label KD of the HKD authors' slides (train_ppi.py only)."""
    p.add_argument("--kd-corr", action="store_true",
                   help="label-correlation KD: the conditional label matrices P(L_j | L_i) "
                        "of teacher and student over a batch's nodes, matched row by row")
    p.add_argument("--kd-corr-weight", type=float, default=KD_CORR_WEIGHT,
                   help="weight of the label-correlation term")


def require(parser, args, *rules):
    """Refuse flag values outside their range: rules (flag, ok(value) -> bool, "what it must
    be"), e.g. ("epochs", lambda v: v >= 1, ">= 1"); one line naming the flag. A rule whose
    flag the script lacks (--kd-corr outside PPI) is skipped."""
    for dest, ok, must in rules:
        if hasattr(args, dest) and not ok(getattr(args, dest)):
            parser.error(f"--{dest.replace('_', '-')} must be {must}, got {getattr(args, dest)}")


# Each method's own flags (dests): given without the method, they would change nothing.
METHOD_FLAGS = {"lsp": ("kernel", "lsp_weight", "teacher_first", "sigma", "degree", "c",
                        "lsp_epochs"),
                "kd": ("kd_alpha", "kd_T"), "at": ("at_weight",), "fitnet": ("fitnet_weight",),
                "hkd": ("hkd_weight", "hkd_k", "hkd_layers", "hkd_tau", "hkd_dim",
                        "hkd_no_centre"),
                "kd_corr": ("kd_corr_weight",)}


def check_distill_flags(parser, args, given):
    """Refuse a negative λ or weight, HKD settings out of their range, kernel
    hyper-parameters that args.kernel would ignore, and a method's flags without the method
    (given: given_flags). Written v >= 0 rather than not v < 0, so that nan is refused too."""
    require(parser, args, *[(dest, lambda v: v >= 0, ">= 0") for dest in (
                "lsp_weight", "at_weight", "fitnet_weight", "hkd_weight", "kd_corr_weight")],
            ("kd_alpha", lambda v: 0 <= v <= 1, "in [0, 1]"), ("kd_T", lambda v: v > 0, "> 0"),
            ("degree", lambda v: v >= 1, ">= 1"), ("hkd_k", lambda v: v >= 1, ">= 1"),
            ("hkd_layers", lambda v: v >= 0, ">= 0"), ("hkd_tau", lambda v: v > 0, "> 0"),
            ("hkd_dim", lambda v: v >= 1, ">= 1"))
    owner = {"sigma": "rbf", "degree": "poly", "c": "poly"}
    unused = [f"--{k}" for k, kernel in owner.items() if k in given and args.kernel != kernel]
    if unused:
        parser.error(f"{', '.join(unused)} would do nothing with --kernel {args.kernel}")
    for method, dests in METHOD_FLAGS.items():  # e.g. --sigma auto without --lsp
        stray = [f"--{d.replace('_', '-')}" for d in dests if d in given]
        if stray and not getattr(args, method, False):
            parser.error(f"{', '.join(stray)} would do nothing without "
                         f"--{method.replace('_', '-')}")


def distilling(args):
    """Whether args asks for any knowledge from the teacher (else the student is Student_Full)."""
    return (args.lsp or args.kd or args.at or args.fitnet or getattr(args, "hkd", False)
            or getattr(args, "kd_corr", False))


def hkd_label(args):
    """e.g. "hkd", or "hkd-k4-tau0.1" when a hyper-parameter is not HKD_DEFAULTS', and
    "hkd-uncentred" with --hkd-no-centre."""
    return "hkd" + "".join(f"-{letter}{getattr(args, dest):g}"
                           for dest, (default, letter) in HKD_DEFAULTS.items()
                           if getattr(args, dest) != default) + (
        "-uncentred" if args.hkd_no_centre else "")


def kernel_kwargs(args, sigma_t=None):
    """The hyper-parameters of --kernel, as keyword arguments of lsp_kd's kernels; under
    --sigma auto, σ = sigma_t when given (the teacher's σ, fixed once by the script)."""
    kw = {"rbf": {"sigma": args.sigma}, "poly": {"degree": args.degree, "c": args.c}
          }.get(args.kernel, {})
    if sigma_t is not None and kw.get("sigma") == "auto":
        kw["sigma"] = sigma_t
    return kw


def kernel_label(args):
    """e.g. "lsp_rbf", or "lsp_rbf-sigma10" when a hyper-parameter is not the paper's."""
    paper = {"rbf": {"sigma": 1.0}, "poly": {"degree": 2, "c": 0.0}}.get(args.kernel, {})
    return f"lsp_{args.kernel}" + "".join(f"-{k}{v:g}" if v != "auto" else f"-{k}{v}"
                                          for k, v in kernel_kwargs(args).items()
                                          if v != paper[k])


def teacher_sigma(args, samples):
    """The teacher's σ under --sigma auto (else None), one over several graphs [(feat (N, F),
    edge_index (2, E))]: lsp_kd.median_sigma of their features stacked, edges offset to match."""
    if kernel_kwargs(args).get("sigma") != "auto":
        return None
    offsets = np.cumsum([0] + [feat.size(0) for feat, _ in samples[:-1]])
    return lsp_kd.median_sigma(torch.cat([feat for feat, _ in samples]),           # (ΣN, F)
                               torch.cat([ei + int(o) for (_, ei), o               # (2, ΣE)
                                          in zip(samples, offsets)], 1))


def distill_terms(args, feat_s, logits_s, edge_index, teacher, batch, regressor=None,
                  multilabel=False, with_lsp=True, hkd_maps=None, inst_s=None):
    """The unweighted distillation terms that args asks for, {name: scalar tensor}.

    feat_s (N, F_s): the student's layer matching teacher.feat; logits_s (N, C) or (B, C);
    edge_index (2, E): the student's graph (the teacher's too, unless teacher.edge_index);
    teacher: a TeacherOutput; batch (N,): graph or cloud id, for AT; regressor: FitNet's
    F_s -> F_t map; multilabel: KD with per-label sigmoids; with_lsp False skips LSP;
    hkd_maps: HKD's lsp_kd.HolisticMaps; inst_s (B, F_g): the student's HKD instances when
    they are not feat_s's nodes (then teacher.inst holds the teacher's).
    """
    terms = {}
    if args.kd:
        terms["kd"] = lsp_kd.kd_loss(logits_s, teacher.logits, T=args.kd_T, multilabel=multilabel)
    if getattr(args, "kd_corr", False):  # P(L_j | L_i) over the batch's nodes (PPI)
        terms["kd_corr"] = lsp_kd.label_correlation_loss(logits_s, teacher.logits)
    if args.lsp and with_lsp:
        if teacher.edge_index is not None:  # Sec. 3.5: both structures over E^u = E^s ∪ E^t
            edge_index = lsp_kd.union_graph(edge_index, teacher.edge_index, feat_s.size(0))
        if args.kernel == "rbf" and args.sigma == "auto":
            # NOTE: the paper's σ is 1; here each model's median distance between neighbours,
            # the student's from its current features (detached) at every step, because σ = 1
            # leaves no structure once features lie far apart (README: Is my LSP term alive?)
            log_ls_s, sigma_s = lsp_kd.rbf_log_local_structure(feat_s, edge_index, "auto")
            log_ls_t = teacher.log_ls
            if log_ls_t is None:  # σ_t: fixed once by the script (None: this graph's median)
                with torch.no_grad():
                    log_ls_t = lsp_kd.log_local_structure(
                        teacher.feat, edge_index, "rbf",
                        sigma="auto" if teacher.sigma is None else teacher.sigma)
            terms["lsp"] = lsp_kd.local_structure_kl(log_ls_s, log_ls_t, edge_index,
                                                     feat_s.size(0), args.teacher_first)
            terms["sigma_s"] = torch.tensor(sigma_s)        # logged per epoch; not a loss
        else:
            terms["lsp"] = lsp_kd.lsp_loss_fast(feat_s, teacher.feat, edge_index, args.kernel,
                                                teacher_first=args.teacher_first,
                                                log_ls_t=teacher.log_ls, **kernel_kwargs(args))
    if args.at:
        terms["at"] = lsp_kd.at_loss(feat_s, teacher.feat, batch)
    if args.fitnet:
        terms["fitnet"] = lsp_kd.fitnet_loss(feat_s, teacher.feat, regressor)
    if args.hkd:
        # HKD's instances are what the task labels, as the images of its CIFAR experiments:
        # on PPI the nodes, with the features of the layer LSP uses (feat_s), so that both
        # methods distil the same layer; on ModelNet40 the clouds, with their pooled global
        # features (inst_s), the last features before the classifier, as HKD's on CIFAR
        terms["hkd"] = lsp_kd.hkd_loss(feat_s if inst_s is None else inst_s,
                                       teacher.feat if inst_s is None else teacher.inst,
                                       hkd_maps, k=args.hkd_k, tau=args.hkd_tau,
                                       centre=not args.hkd_no_centre)
    return terms


def total_loss(args, task_loss, terms):
    """Eq. (7), L = task + λ L_LSP, plus each other method's term (AT, FitNet, HKD, the
    label correlation) times its weight; with KD, as Hinton, the task loss becomes
    (1 - α) task + α KD."""
    loss = task_loss
    if "kd" in terms:
        loss = (1 - args.kd_alpha) * task_loss + args.kd_alpha * terms["kd"]
    for name, weight in (("lsp", args.lsp_weight), ("at", args.at_weight),
                         ("fitnet", args.fitnet_weight),
                         ("hkd", getattr(args, "hkd_weight", None)),
                         ("kd_corr", getattr(args, "kd_corr_weight", None))):
        if name in terms:
            loss = loss + weight * terms[name]              # "lsp": Eq. (7)
    return loss


def epoch_means(history):
    """{name: mean over the steps} of an epoch's history [{"loss": float, term: float, ...}]."""
    return {k: sum(step[k] for step in history) / len(history) for k in history[0]}


# ----------------------------------------------------------------------------------------
# Structure: how much of it the teacher offers, and how close the student's comes

# The RBF kernel lies in [0, 1], so within a neighbourhood LS_ij can differ by a factor e at
# most: even a strong structure holds ~0.1 nats (KL from uniform at degree 14). At a mean
# below 1e-4 nats the typical LS_i^t is within about 1.5% of uniform (KL ≈ ½ d_i Σ_j
# (ΔLS_ij)²), so L_LSP and its gradient are ~1e-4 of what the kernel allows: the student
# trains as Student_Full.
UNIFORM_KL = 1e-4
STRUCTURE_EPOCHS = (1, 5, 10, 20, 50, 100)  # Fig. 4's epochs: structure metrics after each


@torch.no_grad()
def teacher_structure(args, samples, sigma_t, log):
    """How much structure the frozen teacher offers LSP with args' kernel (σ = sigma_t under
    --sigma auto), over samples [(feat_t (N, F_t), edge_index (2, E))]: the mean over centres
    of KL(LS_i^t || uniform), and the share of edges whose kernel value is exactly 0 or 1 in
    float32, both over the edges j ≠ i (a self-loop's RBF value is 1 whatever the features:
    structure that neither model can learn or lose). Logs both, and a warning when the
    structures are practically uniform; the run goes on, since a faithful reproduction must
    stay possible. -> {kl_from_uniform, saturated_share, kernel, its parameters}."""
    kw = kernel_kwargs(args, sigma_t)
    kls, saturated, edges = [], 0.0, 0
    for feat, ei in samples:
        ei = ei[:, ei[0] != ei[1]]                                            # (2, E')
        log_ls = lsp_kd.log_local_structure(feat, ei, args.kernel, **kw)     # (E',)
        kls.append(lsp_kd.kl_from_uniform(log_ls, ei, feat.size(0)))           # (N,)
        saturated += lsp_kd.kernel_saturation(feat, ei, args.kernel, **kw) * ei.size(1)
        edges += ei.size(1)
    kl, share = torch.cat(kls).mean().item(), saturated / max(edges, 1)
    setting = ", ".join(f"{k} = {v:.4g}" for k, v in kw.items()) + (
        " (auto)" if args.kernel == "rbf" and args.sigma == "auto" else "")
    log(f"teacher's local structure, kernel {' '.join([args.kernel, setting]).strip()}: "
        f"KL from uniform {kl:.3e} nats per node; kernel exactly 0 or 1 on "
        f"{100 * share:.1f}% of edges")
    if kl < UNIFORM_KL:
        log(f"kernel {args.kernel} with {setting or 'its parameters'}: the teacher's local "
            f"structures are practically uniform (KL from uniform {kl:.1e} < {UNIFORM_KL:g}), "
            "so L_LSP and its gradient vanish and the student trains as Student_Full; "
            "try --sigma auto (with --kernel rbf)", warning=True)
    return {"kl_from_uniform": kl, "saturated_share": share, "kernel": args.kernel, **kw}


@torch.no_grad()
def structure_metrics(triples):
    """How close the student's structure is to the teacher's, over triples
    [(feat_s (N, F_s), feat_t (N, F_t), edge_index (2, E))] (a generator is fine):
    ls_kl, L_LSP of Eq. (5)-(6) with RBF σ = 1 (Fig. 1's quantity), mean over triples;
    ls_kl_auto, the same with each model's median σ (it cannot saturate); rank_corr, the mean
    over centres with >= 3 neighbours of neighbour_rank_correlation (1: same order)."""
    kl, kl_auto, rho = [], [], []
    for f_s, f_t, ei in triples:
        kl.append(lsp_kd.lsp_loss_fast(f_s, f_t, ei, "rbf").item())
        kl_auto.append(lsp_kd.lsp_loss_fast(f_s, f_t, ei, "rbf", sigma="auto").item())
        rho.append(lsp_kd.neighbour_rank_correlation(f_s, f_t, ei).cpu())
    return {"ls_kl": float(np.mean(kl)), "ls_kl_auto": float(np.mean(kl_auto)),
            "rank_corr": float(torch.cat(rho).nanmean())}


def log_structure(log, where, metrics):
    """One line of structure_metrics (and the test score, when metrics holds it)."""
    score = "".join(f"; test {name} {metrics[k]:.4f}"
                    for k, name in (("test_f1", "micro-F1"), ("acc", "acc")) if k in metrics)
    log(f"{where}: KL to the teacher σ = 1 {metrics['ls_kl']:.3e}, σ = median "
        f"{metrics['ls_kl_auto']:.3e}; neighbour rank correlation {metrics['rank_corr']:.4f}"
        + score)


def start_record(structure, log):
    """What train() records of a run from its first epoch: structure_by_epoch, which holds
    at 0 the untrained student's structure() (logged "before training"; None: nothing), and
    sigma_s_by_epoch. Epoch 0 says where the metrics start: both models see the same inputs,
    so an untrained student's rank correlation is already well above 0."""
    record = {"structure_by_epoch": {}, "sigma_s_by_epoch": []}
    if structure is not None:
        record["structure_by_epoch"][0] = metrics = structure()
        log_structure(log, "before training", metrics)
    return record


def log_epoch(log, epoch, means, shown, t0, structure, record, snapshot=None):
    """The end of an epoch of train(): its line, "epoch 012 | loss 0.4321 | ... | <shown> |
    1.2s" (means: epoch_means; shown: the script's own column; t0: when the epoch began);
    under --sigma auto the student's σ appended to record["sigma_s_by_epoch"]; after the
    epochs of STRUCTURE_EPOCHS, structure() -> metrics logged and kept in
    record["structure_by_epoch"][epoch + 1] (structure None: never); snapshot(epoch + 1)
    saves the weights when --save-epochs asks for them (None: never)."""
    if "sigma_s" in means:  # --sigma auto: the student's σ, mean over the epoch's steps
        record["sigma_s_by_epoch"].append(means["sigma_s"])
    cols = " | ".join(f"{k} {v:.4f}" for k, v in means.items())
    log(f"epoch {epoch:03d} | {cols} | {shown} | {time.time() - t0:.1f}s")
    if structure is not None and epoch + 1 in STRUCTURE_EPOCHS:
        metrics = structure()
        record["structure_by_epoch"][epoch + 1] = metrics
        log_structure(log, f"after epoch {epoch + 1}", metrics)
    if snapshot is not None:
        snapshot(epoch + 1)


def structure_results(structure, fit):
    """The structure entries of a run's results: the metrics at the end (structure), those
    before training and after the epochs of STRUCTURE_EPOCHS, the student's σ per epoch and
    the teacher's structure, all but the first from fit (train()'s dict, with
    teacher_structure)."""
    return {**structure, "structure_by_epoch": fit["structure_by_epoch"],
            "sigma_s_by_epoch": fit["sigma_s_by_epoch"],
            "teacher_structure": fit["teacher_structure"]}


# ----------------------------------------------------------------------------------------
# Cost: inference time; seconds per iteration and peak memory of a training phase

MEMORY = {"cuda": "CUDA allocator peak",
          "clear_refs": "peak RSS of the training phase (Linux VmHWM, reset at its start)",
          "ru_maxrss": "process peak RSS since start (ru_maxrss: no reset on this system)"}


def sync(device):
    """Wait for the GPU, so that wall-clock times are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def status_mb(key):  # a line of /proc/self/status (VmRSS, VmHWM), in MiB
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024


@torch.no_grad()
def cost_of(model, batches, repeats, fit, per):
    """The cost columns of Tables 2 and 4: parameters; RunTime, the median ms per sample of a
    forward model(*inputs) over batches [(inputs, samples)], each timed `repeats` times after
    a warm-up; from `fit` (train()'s dict, a teacher checkpoint) s per `per` and memory."""
    model.eval()
    times = []
    for inputs, samples in batches:
        model(*inputs)  # warm-up
        for _ in range(repeats):
            sync(inputs[0].device)
            t0 = time.time()
            model(*inputs)
            sync(inputs[0].device)
            times.append(1000 * (time.time() - t0) / samples)
    return {"params": sum(p.numel() for p in model.parameters()),
            "runtime_ms": float(np.median(times)), f"train_s_per_{per}": fit.get(f"s_per_{per}"),
            "peak_mem_mb": fit.get("peak_mb"), "memory": fit.get("memory")}


class Meter:
    """Seconds per training iteration and the peak memory of one phase (a training run, one
    bench.py step) from the Meter's creation on, so a student's peak holds no teacher's.
    `memory` names the measure (MEMORY); on a Linux CPU the peak RSS, reset at creation."""

    def __init__(self, device):
        self.device, self.seconds, self.iters = device, 0.0, 0
        gc.collect()
        sync(device)
        self.measure = "cuda" if device.type == "cuda" else "clear_refs"
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        else:
            try:  # glibc keeps freed pages resident: hand them back, the baseline = live set
                ctypes.CDLL("libc.so.6").malloc_trim(0)
            except (OSError, AttributeError):
                pass
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                self.measure = "ru_maxrss"
        self.memory = MEMORY[self.measure]

    def start(self):  # a timed iteration begins, once the GPU has done what came before
        sync(self.device)
        self.t0 = time.time()

    def stop(self):  # ... and ends
        sync(self.device)
        self.seconds += time.time() - self.t0
        self.iters += 1

    def s_per_iter(self):
        return self.seconds / max(self.iters, 1)

    def peak_mb(self):
        if self.measure == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.measure == "clear_refs":
            return status_mb("VmHWM")
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB -> MiB


# ----------------------------------------------------------------------------------------
# The paper's figures (real data, a 1080Ti), per row: Params, RunTime per sample, training
# time (PPI: s per iteration, Table 2; ModelNet40: s per epoch, Table 4), memory in GB, then
# the scores (PPI: test micro-F1; ModelNet40: Acc, mAcc of Tables 4-5). "-": not given.

PAPER = {
    "ppi": {"teacher": ("3.64M", "48.5ms", "1.7", "3.4", "97.6"),
            "student": ("0.16M", "41.3ms", "1.3", "1.2", "95.7"),
            "kd": ("0.16M", "-", "-", "-", "not run"),
            "at": ("0.16M", "41.3ms", "1.9", "1.4", "95.4"),
            "fitnet": ("0.16M", "41.3ms", "2.4", "1.6", "95.6"),
            "lsp_rbf": ("0.16M", "41.3ms", "2.0", "1.5", "96.1")},
    "modelnet": {"teacher": ("1.81M", "8.72ms", "30", "4.2", "92.4", "89.3"),
                 "student": ("0.1M", "3.31ms", "12", "1.4", "91.2", "87.5"),
                 "kd": ("0.1M", "3.31ms", "15", "1.4", "91.6", "88.1"),
                 "at": ("0.1M", "3.31ms", "21", "1.7", "91.6", "87.9"),
                 "fitnet": ("0.1M", "3.31ms", "28", "2.4", "91.1", "87.9"),
                 "lsp_rbf": ("0.1M", "3.31ms", "29", "2.2", "91.9", "88.6"),
                 "lsp_l2": ("0.1M", "-", "-", "-", "91.4", "88.3"),
                 "lsp_poly": ("0.1M", "-", "-", "-", "91.7", "87.7"),
                 "lsp_linear": ("0.1M", "-", "-", "-", "91.5", "87.8")},
}


def paper_cells(exp, row):
    """The paper's figures for `row` as printed, "3.64M 48.5ms 1.7s / 3.4G 97.6"; "- - - -"
    where the paper has no such row (None)."""
    if row not in PAPER[exp]:
        return " ".join("-" * (len(next(iter(PAPER[exp].values()))) - 1))
    params, runtime, seconds, gb, *scores = PAPER[exp][row]
    cost = f"{seconds}s / {gb}G" if seconds != "-" else "-"
    return " ".join([params, runtime, cost, *scores])


# ----------------------------------------------------------------------------------------
# A run beside the paper: its method's name, its row of the paper's tables, the table printed

def table_row(exp, name, cost, scores):
    """One row in the columns of Table 2 (exp "ppi", scores: [test micro-F1]) or Table 4
    ("modelnet", scores: [Acc, mAcc]) from a cost_of dict."""
    if exp == "ppi":
        return (f"{name:<27} {cost['params'] / 1e6:>6.3f}M {cost['runtime_ms']:>8.1f}ms "
                f"{cost['train_s_per_iter']:>7.3f}s / {cost['peak_mem_mb'] / 1024:.2f}G "
                f"{100 * scores[0]:>7.2f}")
    return (f"{name:<26} {cost['params'] / 1e6:>6.3f}M {cost['runtime_ms']:>7.2f}ms "
            f"{cost['train_s_per_epoch']:>8.1f}s / {cost['peak_mem_mb'] / 1024:.2f}G "
            f"{100 * scores[0]:>6.2f} {100 * scores[1]:>6.2f}")


def log_table(log, exp, rows):
    """The header of Table 2 (exp "ppi") or Table 4 ("modelnet"), then rows [(name, cost_of
    dict, scores, PAPER row)], each beside the paper's figures for its row; a row without a
    training time (a teacher checkpoint that holds none) is left out."""
    if exp == "ppi":
        log(f"{'Model':<27} {'Params':>7} {'RunTime':>10} {'Training (s/iter / mem)':>19} "
            f"{'F1':>7}   | paper (real PPI, 1080Ti)")
    else:
        log(f"{'Model':<26} {'Params':>7} {'RunTime':>9} {'Training (s/ep / mem)':>19} "
            f"{'Acc':>6} {'mAcc':>6}   | paper (real ModelNet40, 1080Ti)")
    per = "iter" if exp == "ppi" else "epoch"  # the training time's unit
    for name, cost, scores, row in rows:
        if cost[f"train_s_per_{per}"] is not None:
            log(table_row(exp, name, cost, scores) + "   | " + paper_cells(exp, row))
    sample = "graph" if exp == "ppi" else "cloud"
    log(f"RunTime = median inference time per {sample}; Training = seconds per training "
        f"{'iteration' if exp == 'ppi' else 'epoch'} / peak memory ({rows[-1][1]['memory']})")


def method_name(args):
    """The run's method: "Student", "[variant]" for a Table 6 variant (train_modelnet.py),
    then "_" and the methods it uses joined by "+", e.g. "Student_kd+lsp_rbf-sigmaauto",
    "Student_lsp_official" (train_ppi.py --official) or "Student_kd+hkd"; "Student_Full"
    without any."""
    used = [name for name in ("kd", "kd_corr", "at", "fitnet") if getattr(args, name, False)]
    if args.lsp:
        used.append("lsp_official" if getattr(args, "official", False) else kernel_label(args))
    if getattr(args, "hkd", False):
        used.append(hkd_label(args))
    variant = getattr(args, "variant", "base")
    variant = "" if variant == "base" else f"[{variant}]"
    return "Student" + variant + "_" + ("+".join(used) if used else "Full")


def paper_row(args, exp):
    """The row of PAPER[exp] this run corresponds to: a row of Table 2 (exp "ppi") or of
    Tables 4-5 ("modelnet"); None for a combination of methods, a Table 6 variant, or a
    method the paper does not have (HKD, the label correlation)."""
    used = [name for name in ("lsp", "kd", "at", "fitnet") if getattr(args, name)]
    if (getattr(args, "variant", "base") != "base" or len(used) > 1
            or getattr(args, "hkd", False) or getattr(args, "kd_corr", False)):
        return None
    if used == ["lsp"]:  # Table 2 has LSP's RBF row only: every PPI LSP run stands beside it
        return "lsp_rbf" if exp == "ppi" else f"lsp_{args.kernel}"
    return used[0] if used else "student"
