"""What train_ppi.py and train_modelnet.py share: common flags, a run's folder and log, the
resumable epoch loop, the structure metrics (Fig. 1, Fig. 4). A run's folder,
<out_dir>/<data>_<method>_seed<seed>_<digest of its flags>/, holds log.txt (every attempt
appends), args.json, ckpt.pt (every SAVE_EVERY epochs and at the end: the same command goes
on from it) and, once complete, results.json. A teacher is the same kind of checkpoint,
named by a digest of its settings and data: trained once, then reused."""
import argparse
import contextlib
import glob
import hashlib
import itertools
import json
import math
import os
import signal
import sys
import time
import traceback

import numpy as np
import torch

import lsp_kd

SAVE_EVERY = 5                              # epochs between checkpoints
STRUCTURE_EPOCHS = (1, 5, 10, 20, 50, 100)  # Fig. 4's epochs: the structure after each
PROGRESS_EVERY = 60                         # seconds between progress lines in a log file
LOG = {"file": None, "tag": ""}             # the open log.txt of the current run


def log(msg, warning=False):
    """Print msg (warning: "warning: msg" to stderr) and append it to the run's log.txt."""
    line = "warning: " + msg if warning else msg
    print(line if warning else LOG["tag"] + line, file=sys.stderr if warning else sys.stdout,
          flush=True)
    if LOG["file"] is not None:
        LOG["file"].write(LOG["tag"] + line + "\n")
        LOG["file"].flush()


def fail(msg):
    """End the run with the one line "error: msg" (also the last line of its log.txt)."""
    if LOG["file"] is not None:
        with contextlib.suppress(OSError):  # a full disk: the line on screen still
            LOG["file"].write(f"{LOG['tag']}error: {msg}\n")
            LOG["file"].flush()
    sys.exit(f"error: {msg}")


def main_guard(main, resumes=True):
    """Run a script's main(); Ctrl-C (once or more) and a failed allocation end it with one
    line instead of a traceback."""
    try:
        main()
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C while it exits
        print("\ninterrupted" + (": rerun the same command to go on from its last checkpoint "
                                 f"(saved every {SAVE_EVERY} epochs)" if resumes else ""),
              file=sys.stderr)
        sys.exit(130)
    except (MemoryError, RuntimeError) as e:  # torch's CPU allocator raises RuntimeError
        if not isinstance(e, MemoryError) and "allocate" not in str(e):
            raise
        fail(f"out of memory ({(str(e).splitlines() or [type(e).__name__])[0][:150]}): make "
             "the sizes smaller")
    except ValueError as e:  # lsp_kd refuses features that are not finite or overflow SIM
        if not traceback.extract_tb(e.__traceback__)[-1].filename.endswith("lsp_kd.py"):
            raise
        fail(f"{e} (in training: try a smaller --lr or distillation weight)")


class Parser(argparse.ArgumentParser):  # --help shows every default; errors are one line
    def __init__(self, doc):
        super().__init__(description=doc.split("\n\n")[0],
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)

    def error(self, message):
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def number_or_auto(text):
    return text if text == "auto" else float(text)


def add_args(p, epochs, lr, out_dir):
    """The flags both scripts have: the methods, the schedule, the run."""
    p.add_argument("--lsp", action="store_true", help="local structure preserving, Eq. (7)")
    p.add_argument("--kernel", choices=lsp_kd.KERNELS, default="rbf", help="SIM of Eq. (3)")
    p.add_argument("--sigma", type=number_or_auto, default=1.0,
                   help="RBF σ of Eq. (8); auto: each model's median distance between "
                        "neighbours, at every step (not the paper's)")
    p.add_argument("--lsp-weight", type=float, default=100.0, help="λ of Eq. (7)")
    p.add_argument("--kd", action="store_true", help="Hinton KD")
    p.add_argument("--at", action="store_true", help="attention transfer")
    p.add_argument("--fitnet", action="store_true", help="FitNet hint, a learned regressor")
    p.add_argument("--hkd", action="store_true", help="holistic KD (not in the LSP paper)")
    p.add_argument("--epochs", type=int, default=epochs, help="epochs of the student")
    p.add_argument("--teacher-epochs", type=int, default=epochs, help="epochs of the teacher")
    p.add_argument("--lr", type=float, default=lr, help="the student's learning rate")
    p.add_argument("--seed", type=int, default=0, help="the student's seed")
    p.add_argument("--teacher-ckpt", help="the teacher's file, trained there if missing "
                   "(None: checkpoints/, named by its settings and data)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--out-dir", default=out_dir, help="each run gets its own folder in it")
    p.add_argument("--dry-run", action="store_true",
                   help="smoke test: 1 epoch of 1 batch on tiny synthetic data")
    p.add_argument("--summarize", metavar="DIR", help="mean ± std over seeds of runs in DIR")


def check_args(p, args, rules=()):
    """Refuse values out of range and method flags without their method, with one line.
    rules: (flag, ok, what it must be) of the script's own flags."""
    for flag, ok, must in (("--epochs", args.epochs >= 1, ">= 1"),
                           ("--teacher-epochs", args.teacher_epochs >= 1, ">= 1"),
                           ("--lr", 0 < args.lr <= 100, "in (0, 100]"),
                           ("--lsp-weight", 0 <= args.lsp_weight <= 1e6, "in [0, 1e6]"),
                           ("--sigma", args.sigma == "auto" or 1e-15 <= args.sigma <= 1e15,
                            "in [1e-15, 1e15], or auto"),
                           ("--seed", 0 <= args.seed < 2 ** 32, "in [0, 2^32)"), *rules):
        if not ok:
            p.error(f"{flag} must be {must}")
    if not args.lsp and (args.kernel, args.sigma, args.lsp_weight) != ("rbf", 1.0, 100.0):
        p.error("--kernel, --sigma and --lsp-weight would do nothing without --lsp")
    if args.sigma != 1.0 and args.kernel != "rbf":
        p.error(f"--sigma would do nothing with --kernel {args.kernel}")


def method_name(args):
    """e.g. "Student_Full", "Student_kd+lsp_rbf-sigmaauto", "Student[layers]_lsp_rbf"."""
    used = [m for m in ("kd", "at", "fitnet") if getattr(args, m)]
    if args.lsp:
        used.append("lsp_official" if getattr(args, "official", False) else
                    f"lsp_{args.kernel}" + ("" if args.sigma == 1.0 else f"-sigma{args.sigma}"))
    used += ["hkd"] if args.hkd else []
    variant = getattr(args, "variant", "base")
    return f"Student{'' if variant == 'base' else f'[{variant}]'}_{'+'.join(used) or 'Full'}"


def digest(*parts):
    """8 hex digits that change with any of parts: tensors, arrays or JSON-like values."""
    h = hashlib.sha1()
    for part in parts:
        part = part.detach().cpu().numpy() if torch.is_tensor(part) else part
        h.update(f"{part.dtype}{part.shape}".encode() + np.ascontiguousarray(part).tobytes()
                 if isinstance(part, np.ndarray) else json.dumps(part, default=str).encode())
    return h.hexdigest()[:8]


def json_ready(obj):
    """obj with null for NaN and inf, which JSON does not have (a metric without a value)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (dict, list, tuple)):
        items = obj.items() if isinstance(obj, dict) else enumerate(obj)
        out = {k: json_ready(v) for k, v in items}
        return out if isinstance(obj, dict) else list(out.values())
    return obj


def save(obj, path):
    """JSON (path *.json) or torch.save, through a temp file: never a half-written file.
    The temp files of saves killed before (their process gone) are removed."""
    tmp = f"{path}.tmp{os.getpid()}"  # two runs saving one file do not share a temp file
    for old in glob.glob(glob.escape(path) + ".tmp*") if os.name == "posix" else ():
        try:
            os.kill(int(old.rsplit(".tmp", 1)[1]), 0)  # no error: its process is alive
        except ProcessLookupError:  # gone; but written in the last minute, it may be another
            with contextlib.suppress(OSError):       # machine's on a shared disk, alive
                if time.time() - os.path.getmtime(old) > 60:
                    os.remove(old)
        except (ValueError, OverflowError, OSError):  # not a PID; another user's process
            pass
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if path.endswith(".json"):
            with open(tmp, "w") as f:
                json.dump(json_ready(obj), f, indent=1, allow_nan=False)
        else:
            torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError, ValueError) as e:  # torch.save: RuntimeError; NaN: ValueError
        fail(f"cannot write {path}: {getattr(e, 'strerror', None) or e}")


def load(path):
    """A checkpoint's tensors and plain values only: no code pickled in it runs."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated, foreign or pickled-code file
        fail(f"cannot read the checkpoint {path} ({type(e).__name__}: "
             f"{str(e).splitlines()[0][:200]}); delete it or give another")


def open_run(args, data_name):
    """Make the run's folder, open its log, write args.json. -> run_dir."""
    key = {k: v for k, v in vars(args).items() if k not in ("out_dir", "summarize")}
    run_dir = os.path.join(args.out_dir,
                           f"{data_name}_{method_name(args)}_seed{args.seed}_{digest(key)}")
    if LOG["file"] is not None:  # main() called again in this process
        LOG["file"].close()
    LOG["file"], LOG["tag"] = None, "[synthetic] " if args.data == "synthetic" else ""
    try:
        os.makedirs(run_dir, exist_ok=True)
        LOG["file"] = open(os.path.join(run_dir, "log.txt"), "a")
    except OSError as e:
        fail(f"cannot write the run's folder {run_dir}: {e.strerror or e}")
    log("command: " + " ".join(sys.argv))
    log(f"run folder: {run_dir}")
    save(vars(args), os.path.join(run_dir, "args.json"))
    return run_dir


def save_results(args, experiment, data_name, run_dir, results):
    """run_dir/results.json: what the run is, its results, then its command and flags."""
    path = os.path.join(run_dir, "results.json")
    save({"experiment": experiment, "method": method_name(args), "data": data_name,
          "synthetic": args.data == "synthetic", "seed": args.seed, **results,
          "command": " ".join(sys.argv), "args": vars(args)}, path)
    log(f"results in {path}")


def teacher_run(args, lr, config, data_name, run_dir):
    """How the teacher trains: the run's args with the paper's learning rate and no
    distillation; where it is kept: --teacher-ckpt, else a file named by a digest of config
    (its settings and data), in the run's folder for a dry run. -> (args, path)."""
    off = dict.fromkeys(("lsp", "kd", "at", "fitnet", "hkd", "official"), False)
    path = args.teacher_ckpt or (os.path.join(run_dir, "teacher.pt") if args.dry_run else
                                 os.path.join("checkpoints", f"{config['experiment']}_teacher_"
                                              f"{data_name}_{digest(config)}.pt"))
    if len(os.path.basename(path)) > 240:  # + ".tmp<PID>" must fit the file system's 255
        fail(f"--teacher-ckpt: the file name is {len(os.path.basename(path))} characters "
             "long; at most 240")
    return argparse.Namespace(**{**vars(args), **off, "lr": lr}), path


def pick_device(name):
    """--device -> torch.device; deterministic algorithms on the CPU: seeded runs repeat. Not
    their NaN-filling of each new tensor (torch.empty), a check for reads of uninitialised
    memory that none here makes: 4-7% of a ModelNet40 CPU step, 14% of its LSP term."""
    if name == "cuda" and not torch.cuda.is_available():
        fail("--device cuda, but torch.cuda.is_available() is False (no GPU, or a CPU-only "
             "torch build); use --device cpu or auto")
    name = ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name
    torch.use_deterministic_algorithms(name == "cpu")
    torch.utils.deterministic.fill_uninitialized_memory = False
    return torch.device(name)


# The epoch loop, resumable ---------------------------------------------------------------
def fit(modules, opt, epochs, train_epoch, path, config, gen, who, sched=None,
        validate=None, structure=None, snapshot=None):
    """Train for `epochs` as nanoGPT resumes: the checkpoint at path, saved every SAVE_EVERY
    epochs, is gone on from when it exists; after the last epoch it holds the weights kept and no
    more. One saved under another config is refused. modules: {"model": ..., modules trained with
    it}; train_epoch(epoch) -> {term: mean}; validate() -> a score, the best epoch's weights kept
    (None: the last epoch's); structure() -> metrics before training and after STRUCTURE_EPOCHS;
    snapshot(epoch). -> {"epoch": the one kept, "best_val", "structure_by_epoch"}."""
    model = modules["model"]
    if os.path.exists(path):
        state = load(path)
        theirs = state.get("config") if isinstance(state, dict) else None
        if not isinstance(theirs, dict):
            fail(f"{path} is not a checkpoint of this code: give another, or delete it")
        if theirs != config:
            differ = sorted(k for k in set(config) | set(theirs) if config.get(k) != theirs.get(k))
            fail(f"{path} was not saved by this {who}'s settings (they differ in "
                 f"{', '.join(differ)}): give another, or delete it to train anew")
        for k, m in modules.items():
            m.load_state_dict(state["modules"][k])
        if state["epoch"] + 1 < epochs:  # not complete: on from where it stopped
            opt.load_state_dict(state["opt"])
            if sched is not None:
                sched.load_state_dict(state["sched"])
            gen.set_state(state["gen"])
            torch.set_rng_state(state["rng"])  # the CPU's; CUDA runs do not repeat anyway
            log(f"resuming the {who} from {path}: {state['epoch'] + 1} of {epochs} epochs "
                f"done, on with epoch {state['epoch'] + 1:03d}")
    else:
        state = {"epoch": -1, "best": {"val": -float("inf"), "epoch": -1, "weights": None},
                 "record": {}, "config": config}
        if structure is not None:
            state["record"][0] = structure()
            log_structure("before training", state["record"][0])
    t_start, start = time.time(), state["epoch"] + 1
    for epoch in range(start, epochs):
        t0 = time.time()
        means = train_epoch(epoch)
        if sched is not None:
            sched.step()
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            fail(f"the {who}'s weights are not finite after epoch {epoch}: it diverged; "
                 "try a smaller learning rate or distillation weight")
        cols = " | ".join(f"{k} {v:.4f}" for k, v in means.items())
        val = validate() if validate is not None else None
        if val is not None and val > state["best"]["val"]:
            state["best"] = {"val": val, "epoch": epoch, "weights": {
                k: v.detach().clone() for k, v in model.state_dict().items()}}
        log(f"{'teacher ' if who == 'teacher' else ''}epoch {epoch:03d} | {cols}"
            + (f" | val {val:.4f}" if val is not None else "") + f" | {time.time() - t0:.1f}s")
        hours = (time.time() - t_start) * (epochs - start) / 3600
        if epoch == start and hours > 1:
            log(f"at this pace the {who} needs {hours:.1f} hours for its {epochs - start} "
                "epochs", warning=True)
        if structure is not None and epoch + 1 in STRUCTURE_EPOCHS:
            state["record"][epoch + 1] = structure()
            log_structure(f"after epoch {epoch + 1}", state["record"][epoch + 1])
        if snapshot is not None:
            snapshot(epoch + 1)
        if (epoch + 1) % SAVE_EVERY == 0 and epoch + 1 < epochs:
            state.update(epoch=epoch, modules={k: m.state_dict() for k, m in modules.items()},
                         opt=opt.state_dict(), sched=sched.state_dict() if sched else None,
                         gen=gen.get_state(), rng=torch.get_rng_state())
            save(state, path)
    if start < epochs:  # trained here: the weights kept, and what was measured, saved
        if validate is not None:
            model.load_state_dict(state["best"].pop("weights"))
        save({"epoch": epochs - 1, "modules": {k: m.state_dict() for k, m in modules.items()},
              "best": state["best"], "record": state["record"], "config": config}, path)
    best = state["best"] if validate else {"epoch": epochs - 1, "val": None}
    return {"epoch": best["epoch"], "best_val": best["val"], "structure_by_epoch": state["record"]}


def progress(batches, total, what):
    """The first `total` of batches, and how far they are: on a terminal one line redrawn
    after each, else a plain line (in log.txt too) every PROGRESS_EVERY seconds."""
    t0 = last = time.time()
    try:
        for i, batch in enumerate(itertools.islice(batches, total), 1):
            yield batch
            now = time.time()
            line = f"{what}: {i}/{total} batches, {(now - t0) / i * (total - i):.0f} s left"
            if sys.stdout.isatty():
                print(f"\r\033[K{line}", end="", flush=True)
            elif now - last >= PROGRESS_EVERY and i < total:
                log(line)
                last = now
    finally:  # the line wiped before the epoch's line, or an error's
        if sys.stdout.isatty():
            print("\r\033[K", end="", flush=True)


def log_structure(when, metrics):
    log(f"{when}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
