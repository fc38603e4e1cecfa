"""The teacher of a run, shared by train_ppi.py and train_modelnet.py: its flags, its
checkpoint, and training it when the checkpoint is missing.

The paper trains the teacher first and distils from it frozen (Sec. 4.1, 4.2); here one
command does both, so the teacher's checkpoint must be the one this run would train: it is
named by a digest of every setting that decides the teacher (data, architecture, the
teacher's own epochs, seed and optimiser flags), and a checkpoint given by hand that was
trained otherwise is refused, naming the flags that differ. A missing teacher is trained
resumably (a checkpoint of the whole training state every SAVE_EVERY epochs), under a lock
that makes other runs needing the same teacher wait for it.
"""
import argparse
import contextlib
import os
import sys

import torch

from runs import (INTERRUPTED, NOTHING_SAVED, SAVE_EVERY, TEACHER_OWN, TRAINING, arch_of,
                  atomic_save, check_writable, digest, saved_hint)

try:
    import fcntl  # the lock while a teacher trains; absent on Windows, where it is not taken
except ImportError:
    fcntl = None

# ----------------------------------------------------------------------------------------
# Its flags

def add_teacher_args(p, name, epochs, seed):
    """The teacher's flags: its checkpoint (checkpoints/<name>_<data>_<digest>.pt), epochs, seed."""
    p.add_argument("--teacher-ckpt", default=None,
                   help=f"teacher checkpoint, trained and saved there if missing; None: "
                        f"checkpoints/{name}_<data>_<digest of its settings>.pt, one per "
                        "setting (a dry run: in the run folder)")
    p.add_argument("--teacher-epochs", type=int, default=epochs, help="epochs of the teacher")
    p.add_argument("--teacher-seed", type=int, default=seed,
                   help="seed of the teacher's initialisation and batch order")


def add_optimiser_args(p, flags):
    """The optimiser's flags, each twice with the same default: --lr, ... for the student and
    --teacher-lr, ... for the teacher. The teacher's are its own, so that a sweep over the
    student's --lr trains one teacher, not one per value. flags: (flag, type, default, help)."""
    for who in ("", "teacher-"):
        for flag, kind, default, text in flags:
            p.add_argument(f"--{who}{flag[2:]}", type=kind, default=default,
                           help=f"{text}, of the {who[:-1] or 'student'}")


def as_teacher(args):
    """args as the teacher trains with them: its own --teacher-epochs, --teacher-lr, ... in
    place of the student's --epochs, --lr, ...; the rest (data, dry run) is the run's."""
    own = {k: getattr(args, "teacher_" + k) for k in TEACHER_OWN if hasattr(args, "teacher_" + k)}
    return argparse.Namespace(**{**vars(args), **own})


# ----------------------------------------------------------------------------------------
# Its checkpoint: read and checked, or trained (resumably) and saved

def flag_of(key):
    """The command-line flag that sets a teacher config's key: "lr" -> "--teacher-lr"."""
    if key in TEACHER_OWN:
        return "--teacher-" + key.replace("_", "-")
    named = {"data": "the data", "files": "the data files", "model": "the architecture",
             "experiment": "the experiment"}
    return named.get(key, "--" + key.replace("_", "-"))


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
    diff = [f"{flag_of(k)} {ckpt['config'].get(k)!r} there, {v!r} here"
            for k, v in config.items() if ckpt["config"].get(k) != v]
    if diff:
        sys.exit(f"error: the teacher checkpoint {path} was trained otherwise than this run "
                 f"would train it ({'; '.join(diff)}): pass the values it was trained with, "
                 "another --teacher-ckpt, or delete it to train the teacher again")
    return ckpt


def load_or_train_teacher(teacher, args, config, name, train_teacher, describe, run_dir, log):
    """The frozen teacher and its checkpoint. config: every setting that decides the teacher
    (data and its options, architecture, epochs, optimiser, seed). Its file is --teacher-ckpt,
    else checkpoints/<name>_<digest of config>.pt (a dry run's: in run_dir), so a teacher is
    reused only by runs that would train the same one; a --teacher-ckpt trained otherwise
    stops the run (read_checkpoint). When missing, it is trained (train_and_save), under a
    lock that makes other runs needing the same teacher wait for it. Logs where the teacher
    comes from."""
    path = args.teacher_ckpt or (os.path.join(run_dir, "teacher.pt") if args.dry_run else
                                 os.path.join("checkpoints", f"{name}_{digest(config)}.pt"))
    if os.path.isdir(path):
        sys.exit(f"error: --teacher-ckpt {path} is a folder; give a file name")
    TRAINING["teacher_ckpt"] = path
    kept = INTERRUPTED["hint"]  # a student's earlier attempt, to be resumed (runs.open_run)
    ckpt, how = None, "loaded from"
    if not os.path.exists(path):
        check_writable(os.path.dirname(os.path.abspath(path)), "the teacher's checkpoint")
        with teacher_lock(path, log):
            if not os.path.exists(path):  # no other run has trained it while this one waited
                ckpt = train_and_save(teacher, args, config, path, train_teacher, log)
                how = "trained and saved to"
    if ckpt is None:
        ckpt = read_checkpoint(path, teacher, config)
        teacher.load_state_dict(ckpt["model"])
    INTERRUPTED["hint"] = (kept if kept != NOTHING_SAVED else f"the teacher is saved in "
                           f"{path}; rerun the same command to go on from it")
    log(f"teacher {how} {path}: {config['epochs']} epochs, seed {config['seed']}, "
        f"{describe(ckpt)}")
    teacher.eval().requires_grad_(False)
    return {**ckpt, "path": path}


@contextlib.contextmanager
def teacher_lock(path, log):
    """Hold <path>.lock while the teacher of `path` is trained: a run that needs the same
    teacher meanwhile (another seed, another method) waits, then loads it, instead of training
    it a second time beside it. The lock file is removed once the checkpoint exists."""
    if fcntl is None:
        yield
        return
    with open(path + ".lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another run is training the teacher {path}; waiting for it to finish (if "
                "it fails, this run trains the teacher itself)")
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError:  # a file system without locks: go on unlocked
            pass
        yield
        if os.path.exists(path):  # a run that opens the lock after this finds the teacher
            with contextlib.suppress(FileNotFoundError):
                os.remove(path + ".lock")


def train_and_save(teacher, args, config, path, train_teacher, log):
    """Train the teacher: train_teacher(resume, save_progress) -> {epoch, best_val, ...},
    which saves a resumable <path>.resume every SAVE_EVERY epochs and goes on from one that an
    interrupted run left; then save {model, arch, config, args, ...} to path atomically."""
    resume_path = path + ".resume"
    resume = read_checkpoint(resume_path, teacher, config) if os.path.exists(
        resume_path) else None
    if resume is None:
        log(f"no teacher at {path}: training it ({config['epochs']} epochs)")
        INTERRUPTED["hint"] = (f"the teacher had not reached its first checkpoint (every "
                               f"{SAVE_EVERY} epochs): nothing was saved")
    else:
        log(f"resuming the teacher's training from {resume_path}: {resume['epoch'] + 1} of "
            f"{config['epochs']} epochs done, on with epoch {resume['epoch'] + 1:03d}")
        saved_hint("teacher", resume["epoch"], resume_path, config["epochs"])

    def save_progress(state):
        atomic_save({**state, "arch": arch_of(teacher), "config": config}, resume_path)
        saved_hint("teacher", state["epoch"], resume_path, config["epochs"])

    TRAINING["who"] = "teacher"
    fit = train_teacher(resume, save_progress)
    TRAINING["who"] = "student"
    ckpt = {"model": teacher.state_dict(), "arch": arch_of(teacher), "config": config,
            "args": vars(args), **fit}
    atomic_save(ckpt, path)
    with contextlib.suppress(FileNotFoundError):
        os.remove(resume_path)
    return ckpt


def teacher_provenance(ckpt):
    """Where the run's teacher comes from, for its results: file, settings, chosen epoch."""
    return {"file": ckpt["path"], "config": ckpt["config"], "epoch": ckpt["epoch"],
            "best_val": ckpt["best_val"]}
