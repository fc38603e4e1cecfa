"""A run's life, shared by train_ppi.py, train_modelnet.py and bench.py: its seed and device,
its folder, log and files, its command line's checks and one-line errors, Ctrl-C and
resumable training, a diverged run, and the summary over seeds.

What a run computes (the distillation terms, the structure metrics, the cost, the paper's
figures) is in experiment.py; where its teacher comes from is in teacher.py; this file is
about where the run goes and when it stops.
"""
import argparse
import contextlib
import glob
import hashlib
import json
import os
import random
import signal
import sys
import tempfile

import numpy as np
import torch

import lsp_kd
from experiment import method_name

try:
    import fcntl  # the run folder's lock; absent on Windows, where runs go unlocked
except ImportError:
    fcntl = None

# ----------------------------------------------------------------------------------------
# Seed, device, files, the run's folder and log

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



def atomic_save(obj, path, as_json=False):
    """Write to a temp file beside `path`, then rename: never a half-written file. A write
    that fails (a full disk, a folder in the way) removes the temp file and ends the run with
    one line."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if as_json:
            with open(tmp, "w") as f:
                json.dump(obj, f, indent=2)
        else:
            torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as RuntimeError
        with contextlib.suppress(OSError):
            os.remove(tmp)
        reason = getattr(e, "strerror", None) or f"{str(e).splitlines()[0]} (is the disk full?)"
        sys.exit(f"error: cannot write {path}: {reason}")
    except BaseException:  # Ctrl-C or SIGTERM while writing: the old file stays as it was
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


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


# What to print on Ctrl-C, kept up to date by the run (see main_guard); the log to write it
# and the run's error: lines to; the exit status (128 + the signal's number, as shells do).
NOTHING_SAVED = "nothing of the run was saved"
INTERRUPTED = {"hint": NOTHING_SAVED, "log": None, "status": 130}
# The open log.txt of this process's run, which holds its folder's lock (open_run).
RUN_LOG = {"file": None}


def stop(signum, frame):
    """SIGTERM (kill, timeout, a cluster's scheduler) stops a run as Ctrl-C does."""
    INTERRUPTED["status"] = 128 + signum
    raise KeyboardInterrupt


def main_guard(main):
    """Run a script's main(); on Ctrl-C or SIGTERM, one line saying what was kept and how to
    resume, exit status 130 (SIGTERM: 143), instead of a KeyboardInterrupt traceback;
    features that became NaN or inf (found by the structure metrics after an epoch's last
    step), one line too. A run's closing error: line goes into its log.txt as well."""
    signal.signal(signal.SIGTERM, stop)
    INTERRUPTED.update(hint=NOTHING_SAVED, log=None, status=130)
    try:
        try:
            main()
        except lsp_kd.NonFiniteError as e:  # found by a structure metric, after a diverged step
            what = str(e).split(":")[0]     # "the student's features contain NaN or inf"
            sys.exit(diverged(what, of_teacher="teacher" in what))
    except KeyboardInterrupt:
        msg = f"interrupted: {INTERRUPTED['hint']}"
        if INTERRUPTED["log"] is not None:
            with contextlib.suppress(OSError):  # a full disk: the line on screen still
                INTERRUPTED["log"](msg, to_screen=False)
        print("\n" + msg, file=sys.stderr)
        sys.exit(INTERRUPTED["status"])
    except SystemExit as e:
        if isinstance(e.code, str) and INTERRUPTED["log"] is not None:
            with contextlib.suppress(OSError):
                INTERRUPTED["log"](e.code, to_screen=False)
        raise


# The model in training, and the frozen teacher's checkpoint: what a diverged run advises.
TRAINING = {"who": "student", "teacher_ckpt": None}


def diverged(what, epoch=None, of_teacher=False):
    """The line that ends a diverged run: what was not finite, in which model, and what to
    try. of_teacher: the frozen teacher's outputs, so its saved weights, are at fault."""
    where = f" in epoch {epoch}" if epoch is not None else ""
    if of_teacher:
        return (f"error: the frozen teacher's outputs are not finite{where} ({what}): its "
                f"checkpoint {TRAINING['teacher_ckpt']} holds a diverged teacher; no results "
                "were written. Delete it and train the teacher again with a smaller "
                "--teacher-lr")
    advice = ("a smaller --teacher-lr" if TRAINING["who"] == "teacher" else
              "a smaller --lr or distillation weight (e.g. --lsp-weight)")
    return (f"error: the {TRAINING['who']}'s training diverged{where}: {what}; no results "
            f"were written. Try {advice}")


def check_weights(epoch, model):
    """check_finite for a model's weights at the end of an epoch: an epoch's last step can
    make them NaN after its loss was checked, and such a teacher must not be saved."""
    check_finite(epoch, weights=torch.cat([p.detach().flatten().float()
                                           for p in model.parameters()]))


def check_finite(epoch, **values):
    """Stop the run with one line when a step's tensors (features, logits, loss, its terms;
    the frozen teacher's outputs, named teacher_...) hold NaN or inf: the weights have
    diverged, nothing after would mean anything, and no results are written. Costs one sync
    on a GPU, like the step's .item()s. epoch None: outside the epochs."""
    finite = torch.stack([torch.isfinite(v).all() for v in values.values()])  # one sync
    if not finite.all():
        bad = [k for k, ok in zip(values, finite.tolist()) if not ok]
        shown = ", ".join(f"{k} {v.item():.4g}" for k, v in values.items() if v.dim() == 0)
        sys.exit(diverged(f"{' and '.join(bad)} not finite" + (f" ({shown})" if shown else ""),
                          epoch, of_teacher=any(k.startswith("teacher") for k in bad)))


# What an interrupted student's training leaves in its run folder (student_progress).
STUDENT_RESUME = "student.resume"
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
    if RUN_LOG["file"] is not None:  # main() called again in this process (a notebook):
        RUN_LOG["file"].close()      # the earlier run is over, and its lock released
    path = os.path.join(run_dir, "log.txt")
    log_file = RUN_LOG["file"] = open(path, "a")
    if fcntl is not None:
        try:  # held until the process exits, however it exits, or opens another run
            fcntl.flock(log_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            sys.exit(f"error: another run of the same command is writing to {run_dir}; "
                     "wait for it, or give another --out-dir")
        except OSError:  # a file system without locks (some network ones): run unlocked
            pass
    if os.path.exists(os.path.join(run_dir, STUDENT_RESUME)):  # to be resumed: log kept
        INTERRUPTED["hint"] = (f"the student's training of an earlier attempt is kept in "
                               f"{os.path.join(run_dir, STUDENT_RESUME)}; rerun the same "
                               "command to resume it")
    else:
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


def run_rules():
    """require() rules that both scripts share: epochs, learning rate, weight decay (the
    student's and the teacher's), seeds (numpy takes 0 <= seed < 2^32)."""
    return [*[(dest, lambda v: v >= 1, ">= 1") for dest in ("epochs", "teacher_epochs")],
            *[(dest, lambda v: v > 0, "> 0") for dest in ("lr", "teacher_lr")],
            *[(dest, lambda v: v >= 0, ">= 0") for dest in ("weight_decay", "teacher_weight_decay")],
            *[(dest, lambda v: 0 <= v < 2 ** 32, "in [0, 2^32)")
              for dest in ("seed", "teacher_seed", "data_seed")]]


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
    with contextlib.suppress(FileNotFoundError):  # the run is complete: nothing to resume
        os.remove(os.path.join(run_dir, STUDENT_RESUME))
    INTERRUPTED["hint"] = f"the run is complete: its results are in {path}"
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


# The settings the teacher has a flag of its own for: --teacher-epochs, --teacher-lr, ...
TEACHER_OWN = ("epochs", "seed", "lr", "weight_decay", "batch_size", "lr_min", "smoothing")


def with_teacher_flags(stored):
    """A run's stored arguments, with the teacher's own flags (--teacher-lr, ...) that a run
    made before they existed lacks: its teacher was trained with the student's values."""
    return {**{"teacher_" + k: stored[k] for k in TEACHER_OWN if k in stored}, **stored}


# What may differ between the runs that one row of --summarize averages: the seed, and where
# the outputs went.
NOT_IN_SETTING = ("seed", "out_dir", "summarize", "save_epochs")


def setting(args):
    """The digest of a run's arguments but its seed: runs with equal settings are seeds of one
    row of the summary; a --dry-run, another --lr or other data make another row."""
    return digest({k: v for k, v in args.items() if k not in NOT_IN_SETTING})


def name_setting(method, runs, groups):
    """The row's name: the method, and when the method has rows of other settings, the
    arguments in which this row's differ from the first of those rows."""
    others = [g[0]["args"] for (m, _), g in groups.items() if m == method and g is not runs]
    if not others:
        return method
    mine = runs[0]["args"]
    differ = sorted(k for k in set(mine) | set(others[0])
                    if k not in NOT_IN_SETTING and mine.get(k) != others[0].get(k))
    return f"{method} ({', '.join(f'{k}={mine.get(k)}' for k in differ[:3])})"


def summarize(out_dir, experiment, keys):
    """Mean ± std over seeds of the results.json of every run folder under out_dir, one row
    per method and setting (setting: runs that differ in more than their seed are not
    averaged together); then, per row, the structure metrics before training and after
    the epochs of STRUCTURE_EPOCHS. Exits with one line when there are none, or when they
    are another experiment's."""
    if not os.path.isdir(out_dir):
        sys.exit(f"error: --summarize {out_dir}: no such folder")
    runs_of = {}
    pattern = os.path.join(glob.escape(out_dir), "**", "results.json")
    for path in sorted(glob.glob(pattern, recursive=True)):
        try:
            with open(path) as f:
                r = json.load(f)
        except (OSError, ValueError) as e:
            sys.exit(f"error: cannot read {path}: {e}")
        if r.get("experiment") != experiment:
            sys.exit(f"error: {path} holds results of {r.get('experiment', 'an older version')}"
                     f", not of the {experiment} experiment; summarize it with its own script")
        r["args"] = with_teacher_flags(r["args"])  # a run made before they existed
        runs_of.setdefault((r["method"], setting(r["args"])), []).append(r)
    if not runs_of:
        sys.exit(f"error: --summarize {out_dir}: no results.json in it or its folders (a run "
                 "writes one only when it completes)")
    runs_of = {name_setting(method, runs, runs_of): runs for (method, _), runs in runs_of.items()}
    keys = keys + ["ls_kl", "ls_kl_auto", "rank_corr"]
    print(f"{'method':<28} {'seeds':>5} " + " ".join(f"{k:>17}" for k in keys))
    for method, runs in runs_of.items():
        print(f"{method:<28} {len(runs):>5} "
              + " ".join(f"{mean_std([r[k] for r in runs]):>17}" for k in keys)
              + f"   seeds {sorted(r['seed'] for r in runs)}")
    per_epoch = [keys[0], "ls_kl", "ls_kl_auto", "rank_corr"]  # the test score, structure
    for method, runs in runs_of.items():
        print(f"\n{method}: on the test data by epoch, 0: before training ({len(runs)} "
              "seeds)")
        print(f"{'epoch':>5} " + " ".join(f"{k:>21}" for k in per_epoch))
        by_epoch = [r["structure_by_epoch"] for r in runs]
        for epoch in sorted({int(e) for b in by_epoch for e in b}):
            at = [b[str(epoch)] for b in by_epoch if str(epoch) in b]
            print(f"{epoch:>5} " + " ".join(f"{mean_std([m[k] for m in at]):>21}"
                                            for k in per_epoch))


# ----------------------------------------------------------------------------------------
# Resumable training: the teacher's (teacher.py) and the student's

SAVE_EVERY = 5  # epochs between the resumable checkpoints of a model in training


def saved_hint(who, epoch, path, epochs=None):
    """What Ctrl-C says once who's ("teacher", "student") training is saved in path after
    `epoch` (counted from 0) of `epochs`."""
    of = f" of {epochs}" if epochs else ""
    INTERRUPTED["hint"] = (f"the {who}'s training is saved in {path} after {epoch + 1}{of} "
                           f"epochs (the last: epoch {epoch:03d} in the log); rerun the same "
                           "command to resume it")


def training_state(epoch, model, opt, gen, sched=None, learned=None, **extra):
    """What train() needs to go on after `epoch` exactly as if it had never stopped: the
    weights (of the model, and of the modules in learned {name: module or None} trained with
    it: FitNet's regressor, HKD's maps), the optimiser (and scheduler), the batch-order
    generator, every RNG; + extra."""
    rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
           "python": random.getstate(),
           "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    return {"epoch": epoch, "model": model.state_dict(), "opt": opt.state_dict(),
            "learned": {k: m.state_dict() for k, m in (learned or {}).items() if m is not None},
            "sched": sched.state_dict() if sched is not None else None, "gen": gen.get_state(),
            "rng": rng, **extra}


def restore_training_state(state, model, opt, gen, sched=None, learned=None):
    """Undo training_state: the same weights, optimiser, generator and RNGs. -> next epoch."""
    model.load_state_dict(state["model"])
    for k, weights in state.get("learned", {}).items():
        learned[k].load_state_dict(weights)
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


def arch_of(model):
    """The architecture as {parameter name: shape}: two models match iff their dicts do."""
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def fingerprint(student, teacher):
    """What a student.resume must have been saved with to be resumed: the student's
    architecture and the teacher's very weights (a digest of them: a teacher trained again
    under the same settings, on a GPU say, is another teacher)."""
    h = hashlib.sha1()
    for k, v in teacher.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return {"student": arch_of(student), "teacher": h.hexdigest()[:16]}


def student_progress(run_dir, log, mark):
    """The student's resumable training, in run_dir/student.resume. -> (resume,
    save_progress): resume is the training_state that an interrupted attempt of the same
    command left there (None if none), for train() to go on from; save_progress(state) writes
    it atomically every SAVE_EVERY epochs, with mark (fingerprint()): a student.resume of
    another student architecture or another teacher stops the run with one line. save_results
    removes it when the run completes."""
    path = os.path.join(run_dir, STUDENT_RESUME)
    resume = None
    if os.path.exists(path):
        try:
            resume = torch.load(path, map_location="cpu", weights_only=False)
            epoch, theirs = resume["epoch"], resume["fingerprint"]
        except Exception as e:  # a truncated or foreign file
            sys.exit(f"error: cannot read the student's resumable checkpoint {path} "
                     f"({type(e).__name__}); delete it to train the student from the start")
        names = {"student": "another student architecture", "teacher": "another teacher"}
        differ = [names[k] for k in mark if theirs.get(k) != mark[k]]
        if differ:
            sys.exit(f"error: {path} was saved with {' and '.join(differ)} than this run's; "
                     "delete it to train the student from the start")
        log(f"resuming the student's training from {path}: {epoch + 1} epochs done, on with "
            f"epoch {epoch + 1:03d}")

    def save_progress(state):
        atomic_save({**state, "fingerprint": mark}, path)
        saved_hint("student", state["epoch"], path)

    if resume is None:
        INTERRUPTED["hint"] = (f"the student had not reached its first checkpoint (every "
                               f"{SAVE_EVERY} epochs): nothing of its training was saved")
    else:
        saved_hint("student", epoch, path)
    return resume, save_progress
