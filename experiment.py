"""What the PPI and ModelNet40 experiments share: seeding, device, atomic saving, the run log,
the teacher checkpoint, the distillation flags and the terms of one step (Eq. 7, the
baselines of Sec. 4.1, and HKD and the label correlation, which the paper does not have),
the epoch line, the structure metrics, the memory measure, the paper's figures (with the
run's name and row) and the summary over seeds.

train_ppi.py, train_modelnet.py and bench.py import it; it imports no script.
Dimensions: N nodes (B*P points on ModelNet40), E edges, F features, C labels or classes.
"""
import argparse
import contextlib
import ctypes
import gc
import glob
import hashlib
import json
import os
import random
import resource
import sys
import tempfile
import time
from typing import NamedTuple, Optional

import numpy as np
import torch

import lsp_kd

try:
    import fcntl  # the run folder's lock; absent on Windows, where runs go unlocked
except ImportError:
    fcntl = None

TEST_BATCH = 16  # ModelNet40 clouds per inference batch, as DGCNN's test loader


# ----------------------------------------------------------------------------------------
# A run: seed, device, files

def set_seed(seed):
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def pick_device(name):
    """--device auto|cpu|cuda -> torch.device; a clear exit when CUDA is asked for but absent.
    On the CPU, torch's deterministic algorithms are switched on, so that a seeded run repeats
    bit for bit at a given thread count (the backward pass of x[index] otherwise accumulates
    in an order that varies between runs); on CUDA they are not (README: Reproducibility)."""
    if name == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda was asked for, but torch.cuda.is_available() is False "
                 "(no GPU, or a CPU-only torch build); use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    torch.use_deterministic_algorithms(name == "cpu")
    return torch.device(name)


def sync(device):
    """Wait for the GPU, so that wall-clock times are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def check_writable(folder, what):
    """Create `folder` if needed and write a file into it, or exit with one line: done before
    any training, so that no work is lost to an unwritable path at the end."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        sys.exit(f"error: cannot write {what} to {folder}: {e.strerror or e}")


def digest(obj):
    """8 hex digits that change whenever the JSON form of obj does."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:8]


# What to print on Ctrl-C, kept up to date by the run (see main_guard); the log to write it to.
INTERRUPTED = {"hint": "nothing of the run was saved", "log": None}


def main_guard(main):
    """Run a script's main(); on Ctrl-C, one line saying what was kept and how to resume,
    exit status 130, instead of a KeyboardInterrupt traceback."""
    try:
        main()
    except KeyboardInterrupt:
        msg = f"interrupted: {INTERRUPTED['hint']}"
        if INTERRUPTED["log"] is not None:
            INTERRUPTED["log"](msg, to_screen=False)
        print("\n" + msg, file=sys.stderr)
        sys.exit(130)


# Arguments that do not change what a run computes: left out of its folder's name.
NOT_IN_RUN_NAME = ("out_dir", "summarize")


def open_run(args, data_name, experiment):
    """The run's folder and log. -> (run_dir, log).

    The folder is <out_dir>/<data>_<method>_seed<seed>_<digest of every other argument>, so
    runs with different arguments never share one, and the same command always finds its
    own. A run that starts there removes what an earlier attempt of the same command left
    (results.json is written only at the end of a complete run), then holds a lock on the
    folder until it exits. log(msg) prints and appends to run_dir/log.txt, each line prefixed
    with "[synthetic] " on synthetic data; log(msg, warning=True) prints "warning: msg" to
    stderr instead. The log starts with the command line; args.json is written at once."""
    key = {k: v for k, v in vars(args).items() if k not in NOT_IN_RUN_NAME}
    run_dir = os.path.join(args.out_dir, f"{data_name}_{method_name(args)}_seed{args.seed}_"
                                         f"{digest({'experiment': experiment, **key})}")
    check_writable(run_dir, "the run's outputs")
    path = os.path.join(run_dir, "log.txt")
    log_file = open(path, "a")
    if fcntl is not None:
        try:  # held until the process exits, however it exits
            fcntl.flock(log_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            sys.exit(f"error: another run of the same command is writing to {run_dir}; "
                     "wait for it, or give another --out-dir")
    log_file.truncate(0)  # the same command's earlier attempt: replaced, not mixed in
    for name in ("results.json", "cost.json", "student.pt"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(run_dir, name))
    tag = "[synthetic] " if args.data == "synthetic" else ""

    def log(msg, warning=False, to_screen=True):
        msg = "warning: " + msg if warning else msg
        if to_screen:
            print(msg if warning else tag + msg, file=sys.stderr if warning else sys.stdout,
                  flush=True)
        log_file.write(tag + msg + "\n")
        log_file.flush()

    INTERRUPTED["log"] = log
    log(f"command: {' '.join(sys.argv)}")
    log(f"run folder: {run_dir}")
    atomic_save({"experiment": experiment, **vars(args)}, os.path.join(run_dir, "args.json"),
                as_json=True)
    return run_dir, log


class Parser(argparse.ArgumentParser):
    """argparse, but a bad command line ends with the one line "error: ..." (exit status 2)
    instead of the usage text and the program's name."""

    def error(self, message):
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def parser_for(doc):
    """An argument parser whose --help shows every flag's default, described by doc's 1st line."""
    return Parser(description=doc.split("\n\n")[0],
                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def int_list(text):
    """An argparse type for widths: "32,32,64" -> (32, 32, 64)."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}")


def add_run_args(p, out_dir, dry_run):
    """The run's flags, shared by both scripts: seed, device, output folder, smoke test."""
    p.add_argument("--seed", type=int, default=0, help="student seed")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: cuda when there is one")
    p.add_argument("--out-dir", default=out_dir,
                   help="each run writes into its own folder in it, named by its arguments")
    p.add_argument("--save-epochs", type=int_list, default=(),
                   help="also save the student after these epochs, e.g. 1,5,10,20,50,100 "
                        "(student_epoch001.pt, ...)")
    p.add_argument("--dry-run", action="store_true", help=f"smoke test: {dry_run}")
    p.add_argument("--summarize", metavar="DIR", default=None,
                   help="print mean ± std over seeds of the results in DIR, then exit")


def require(parser, args, *rules):
    """Refuse flag values outside their range: rules (flag, ok(value) -> bool, "what it must
    be"), e.g. ("epochs", lambda v: v >= 1, ">= 1"); one line naming the flag."""
    for dest, ok, must in rules:
        value = getattr(args, dest)
        if not ok(value):
            parser.error(f"--{dest.replace('_', '-')} must be {must}, got {value}")


def save_results(args, run_dir, res, cost, student, fit):
    """Write into run_dir, atomically: student.pt {model, args, epoch, best_val} (fit:
    train()'s dict), cost.json (cost: the run's times and memory, which vary from run to
    run), then results.json (res + seed and command line: what the same command on the same
    machine and thread count repeats bit for bit), last, so that it exists only for a
    complete run. Returns the results' path."""
    atomic_save({"model": student.state_dict(), "args": vars(args), "epoch": fit["epoch"],
                 "best_val": fit["best_val"]}, os.path.join(run_dir, "student.pt"))
    atomic_save(cost, os.path.join(run_dir, "cost.json"), as_json=True)
    res.update(synthetic=args.data == "synthetic", seed=args.seed, command=" ".join(sys.argv),
               args=vars(args))
    path = os.path.join(run_dir, "results.json")
    atomic_save(res, path, as_json=True)
    return path


def save_snapshot(args, run_dir, model, epoch):
    """--save-epochs: the student's weights after `epoch` (counted from 1), run_dir/
    student_epoch<epoch>.pt, for figures drawn after the fact."""
    if epoch in args.save_epochs:
        atomic_save({"model": model.state_dict(), "args": vars(args), "epoch": epoch},
                    os.path.join(run_dir, f"student_epoch{epoch:03d}.pt"))


def given_flags(parser, argv=None):
    """The dests of the flags given in argv (None: sys.argv[1:]), not left at their defaults:
    argparse sets a default only where the namespace lacks it, so a marker stays unset."""
    unset = object()
    marked = argparse.Namespace(**{dest: unset for dest in vars(parser.parse_args(argv))})
    return {dest for dest, v in vars(parser.parse_args(argv, marked)).items() if v is not unset}


def mean_std(values):
    v = np.array(values, dtype=float)
    return (f"{v.mean():.4f} ± {v.std():.4f}" if abs(v.mean()) >= 1e-3
            else f"{v.mean():.2e} ± {v.std():.1e}")


def summarize(out_dir, experiment, keys):
    """Mean ± std over seeds of the results.json of every run folder under out_dir, one row
    per method; then, per method, the structure metrics after the epochs of STRUCTURE_EPOCHS.
    Exits with one line when there are none, or when they are another experiment's."""
    if not os.path.isdir(out_dir):
        sys.exit(f"error: --summarize {out_dir}: no such folder")
    runs_of = {}
    for path in sorted(glob.glob(os.path.join(out_dir, "**", "results.json"), recursive=True)):
        try:
            with open(path) as f:
                r = json.load(f)
        except (OSError, ValueError) as e:
            sys.exit(f"error: cannot read {path}: {e}")
        if r.get("experiment") != experiment:
            sys.exit(f"error: {path} holds results of {r.get('experiment', 'an older version')}"
                     f", not of the {experiment} experiment; summarize it with its own script")
        runs_of.setdefault(r["method"], []).append(r)
    if not runs_of:
        sys.exit(f"error: --summarize {out_dir}: no results.json in it or its folders (a run "
                 "writes one only when it completes)")
    keys = keys + ["ls_kl", "ls_kl_auto", "rank_corr"]
    print(f"{'method':<28} {'seeds':>5} " + " ".join(f"{k:>17}" for k in keys))
    for method, runs in runs_of.items():
        print(f"{method:<28} {len(runs):>5} "
              + " ".join(f"{mean_std([r[k] for r in runs]):>17}" for k in keys))
    per_epoch = [keys[0], "ls_kl", "ls_kl_auto", "rank_corr"]  # the test score, structure
    for method, runs in runs_of.items():
        print(f"\n{method}: on the test data after epoch ({len(runs)} seeds)")
        print(f"{'epoch':>5} " + " ".join(f"{k:>21}" for k in per_epoch))
        by_epoch = [r["structure_by_epoch"] for r in runs]
        for epoch in sorted({int(e) for b in by_epoch for e in b}):
            at = [b[str(epoch)] for b in by_epoch if str(epoch) in b]
            print(f"{epoch:>5} " + " ".join(f"{mean_std([m[k] for m in at]):>21}"
                                            for k in per_epoch))


# ----------------------------------------------------------------------------------------
# The teacher: load its checkpoint, or train it (resumably) and save it

SAVE_EVERY = 5  # epochs between the resumable checkpoints of a teacher in training


def arch_of(model):
    """The architecture as {parameter name: shape}: two models match iff their dicts do."""
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def read_checkpoint(path, teacher, config):
    """A teacher checkpoint {model, arch, config, ...} (or a resumable one) at path, checked
    against `teacher`'s architecture and the config this run would train it with; exits with
    one line naming the differences otherwise."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file
        sys.exit(f"error: cannot read the teacher checkpoint {path} ({type(e).__name__}); "
                 "delete it to train the teacher again")
    if not isinstance(ckpt, dict) or not {"model", "arch", "config"} <= set(ckpt):
        sys.exit(f"error: {path} is not a teacher checkpoint of this version of the code; "
                 "delete it to train the teacher again, or pass another --teacher-ckpt")
    arch = arch_of(teacher)
    if ckpt["arch"] != arch:
        diff = [k for k in sorted(set(arch) | set(ckpt["arch"]))
                if ckpt["arch"].get(k) != arch.get(k)][:3]
        sys.exit(f"error: the teacher checkpoint {path} holds another architecture than "
                 f"this script's teacher (first differences: {diff}); pass another "
                 "--teacher-ckpt or delete the file to train a new teacher")
    diff = [f"{k} {ckpt['config'].get(k)!r} there, {v!r} here"
            for k, v in config.items() if ckpt["config"].get(k) != v]
    if diff:
        sys.exit(f"error: the teacher checkpoint {path} was trained otherwise than this run "
                 f"would train it ({'; '.join(diff)}); pass the teacher flags it was trained "
                 "with, another --teacher-ckpt, or delete it to train the teacher again")
    return ckpt


def add_teacher_args(p, name, epochs, seed):
    """The teacher's flags: its checkpoint (checkpoints/<name>_<data>_<digest>.pt), epochs, seed."""
    p.add_argument("--teacher-ckpt", default=None,
                   help=f"teacher checkpoint, trained and saved there if missing; None: "
                        f"checkpoints/{name}_<data>_<digest of its settings>.pt, one per "
                        "setting (a dry run: in the run folder)")
    p.add_argument("--teacher-epochs", type=int, default=epochs, help="epochs of the teacher")
    p.add_argument("--teacher-seed", type=int, default=seed,
                   help="seed of the teacher's initialisation and batch order")


def training_state(epoch, model, opt, gen, sched=None, **extra):
    """What train() needs to go on after `epoch` exactly as if it had never stopped: the
    weights, the optimiser (and scheduler), the batch-order generator, every RNG; + extra."""
    rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
           "python": random.getstate(),
           "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    return {"epoch": epoch, "model": model.state_dict(), "opt": opt.state_dict(),
            "sched": sched.state_dict() if sched is not None else None, "gen": gen.get_state(),
            "rng": rng, **extra}


def restore_training_state(state, model, opt, gen, sched=None):
    """Undo training_state: the same weights, optimiser, generator and RNGs. -> next epoch."""
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    if sched is not None:
        sched.load_state_dict(state["sched"])
    gen.set_state(state["gen"])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    if state["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state["epoch"] + 1


def load_or_train_teacher(teacher, args, config, name, train_teacher, describe, run_dir, log):
    """The frozen teacher and its checkpoint. config: every setting that decides the teacher
    (data and its options, architecture, epochs, optimiser, seed). Its file is --teacher-ckpt,
    else checkpoints/<name>_<digest of config>.pt (a dry run's: in run_dir), so a teacher is
    reused only by runs that would train the same one; a --teacher-ckpt trained otherwise
    stops the run (read_checkpoint). When missing, train_teacher(resume, save_progress) ->
    {epoch, best_val, ...} trains it, saving a resumable <file>.resume every SAVE_EVERY epochs
    and resuming from one left by an interrupted run; then {model, arch, config, args, ...}
    is saved atomically. Logs where the teacher comes from."""
    path = args.teacher_ckpt or (os.path.join(run_dir, "teacher.pt") if args.dry_run else
                                 os.path.join("checkpoints", f"{name}_{digest(config)}.pt"))
    if os.path.exists(path):
        ckpt = read_checkpoint(path, teacher, config)
        teacher.load_state_dict(ckpt["model"])
        how = "loaded from"
    else:
        check_writable(os.path.dirname(os.path.abspath(path)), "the teacher's checkpoint")
        resume_path = path + ".resume"
        resume = read_checkpoint(resume_path, teacher, config) if os.path.exists(
            resume_path) else None
        if resume is None:
            log(f"no teacher at {path}: training it ({config['epochs']} epochs)")
            INTERRUPTED["hint"] = (f"the teacher had not reached its first checkpoint (every "
                                   f"{SAVE_EVERY} epochs): nothing was saved")
        else:
            log(f"resuming the teacher's training after epoch {resume['epoch'] + 1} of "
                f"{config['epochs']} from {resume_path}")

        def save_progress(state):
            atomic_save({**state, "arch": arch_of(teacher), "config": config}, resume_path)
            INTERRUPTED["hint"] = (f"the teacher's training is saved after epoch "
                                   f"{state['epoch'] + 1} of {config['epochs']} in "
                                   f"{resume_path}; rerun the same command to resume it")

        fit = train_teacher(resume, save_progress)
        ckpt = {"model": teacher.state_dict(), "arch": arch_of(teacher), "config": config,
                "args": vars(args), **fit}
        atomic_save(ckpt, path)
        with contextlib.suppress(FileNotFoundError):
            os.remove(resume_path)
        how = "trained and saved to"
    INTERRUPTED["hint"] = (f"the teacher is saved in {path}; the student's training is not "
                           "resumable: rerun the same command to train it again")
    log(f"teacher {how} {path}: {config['epochs']} epochs, seed {config['seed']}, "
        f"{describe(ckpt)}")
    teacher.eval().requires_grad_(False)
    return {**ckpt, "path": path}


def teacher_provenance(ckpt):
    """Where the run's teacher comes from, for its results: file, settings, chosen epoch."""
    return {"file": ckpt["path"], "config": ckpt["config"], "epoch": ckpt["epoch"],
            "best_val": ckpt["best_val"]}


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


def check_distill_flags(parser, args, given):
    """Refuse a negative λ or weight, HKD settings out of their range, and kernel
    hyper-parameters that args.kernel would ignore (given: given_flags)."""
    if args.lsp_weight < 0:
        parser.error(f"--lsp-weight must be >= 0, got {args.lsp_weight}")
    require(parser, args, ("hkd_weight", lambda v: v >= 0, ">= 0"),
            ("hkd_k", lambda v: v >= 1, ">= 1"), ("hkd_layers", lambda v: v >= 0, ">= 0"),
            ("hkd_tau", lambda v: v > 0, "> 0"), ("hkd_dim", lambda v: v >= 1, ">= 1"))
    if hasattr(args, "kd_corr_weight"):
        require(parser, args, ("kd_corr_weight", lambda v: v >= 0, ">= 0"))
    owner = {"sigma": "rbf", "degree": "poly", "c": "poly"}
    unused = [f"--{k}" for k, kernel in owner.items() if k in given and args.kernel != kernel]
    if unused:
        parser.error(f"{', '.join(unused)} would do nothing with --kernel {args.kernel}")


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


def check_finite(epoch, **values):
    """Stop the run with one line when a step's tensors (features, logits, loss, its terms)
    hold NaN or inf: the weights have diverged, nothing after would mean anything, and no
    results are written. Costs one sync per tensor on a GPU, like the step's .item()s."""
    bad = [k for k, v in values.items() if not torch.isfinite(v).all()]
    if bad:
        shown = ", ".join(f"{k} {v.item():.4g}" for k, v in values.items() if v.dim() == 0)
        sys.exit(f"error: training diverged in epoch {epoch}: {' and '.join(bad)} not finite"
                 + (f" ({shown})" if shown else "") + "; no results were written. Try a "
                 "smaller --lr or distillation weight (e.g. --lsp-weight)")


def structure_results(structure, fit):
    """The structure entries of a run's results: the metrics at the end (structure), those
    after the epochs of STRUCTURE_EPOCHS, the student's σ per epoch and the teacher's
    structure, all but the first from fit (train()'s dict, with teacher_structure)."""
    return {**structure, "structure_by_epoch": fit["structure_by_epoch"],
            "sigma_s_by_epoch": fit["sigma_s_by_epoch"],
            "teacher_structure": fit["teacher_structure"]}


# ----------------------------------------------------------------------------------------
# Cost: inference time; seconds per iteration and peak memory of a training phase

MEMORY = {"cuda": "CUDA allocator peak",
          "clear_refs": "peak RSS of the training phase (Linux VmHWM, reset at its start)",
          "ru_maxrss": "process peak RSS since start (ru_maxrss: no reset on this system)"}


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
