"""Runs a user can trust: every bad input ends in one line "error: ..."; the teacher is reused
only by runs that would train the same one, and resumes after Ctrl-C; a seeded command
repeats bit for bit; each run has its own folder, and results only when complete."""
import concurrent.futures
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import types

import pytest
import torch

import runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["train_ppi.py", "train_modelnet.py"]


def run(script, *args, cwd=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def run_dirs(out_dir):
    return sorted(p for p in out_dir.iterdir() if p.is_dir()) if out_dir.is_dir() else []


def assert_one_error_line(p, message):
    """Exit status != 0, and stderr is the one line "error: ..." holding message."""
    assert p.returncode != 0, p.stdout
    assert "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    assert message in lines[0], lines[0]


# ----------------------------------------------------------------------------------------
# Bad input: one line, non-zero exit, nothing half-written

BAD_FLAGS = [  # (script, flags, what the error line says); both scripts where None
    (None, ["--epochs", "0"], "--epochs must be >= 1, got 0"),
    (None, ["--epochs", "-5"], "--epochs must be >= 1, got -5"),
    (None, ["--teacher-epochs", "0"], "--teacher-epochs must be >= 1"),
    (None, ["--batch-size", "0"], "--batch-size must be >= "),
    ("train_modelnet.py", ["--batch-size", "1"], "BatchNorm"),
    (None, ["--lr", "-1"], "--lr must be > 0"),
    (None, ["--teacher-lr", "0"], "--teacher-lr must be > 0"),
    (None, ["--teacher-weight-decay", "-1"], "--teacher-weight-decay must be >= 0"),
    (None, ["--teacher-batch-size", "0"], "--teacher-batch-size must be >= "),
    ("train_modelnet.py", ["--teacher-lr-min", "1"], "--teacher-lr-min must be in [0, --teacher-lr]"),
    ("train_modelnet.py", ["--teacher-smoothing", "-0.1"], "--teacher-smoothing must be in [0, 1)"),
    (None, ["--weight-decay", "-1"], "--weight-decay must be >= 0"),
    (None, ["--sigma", "0"], "σ must be > 0"),
    (None, ["--sigma", "nan"], "σ must be > 0"),
    (None, ["--lsp-weight", "-1"], "--lsp-weight must be >= 0"),
    (None, ["--kernel", "gaussian"], "invalid choice"),
    (None, ["--save-epochs", "1,x"], "integers separated by commas"),
    (None, ["--epochs"], "expected one argument"),
    ("train_ppi.py", ["--scale", "0"], "--scale must be in (0, 1]"),
    ("train_ppi.py", ["--lsp-layer-t", "5"], "--lsp-layer-t must be a hidden layer"),
    ("train_ppi.py", ["--lsp-epochs", "0"], "--lsp-epochs must be >= 1"),
    ("train_modelnet.py", ["--smoothing", "1"], "--smoothing must be in [0, 1)"),
    ("train_modelnet.py", ["--lr-min", "1"], "--lr-min must be in [0, --lr]"),
    ("train_modelnet.py", ["--num-points", "20"], "--num-points must be > 20"),
    ("train_modelnet.py", ["--lsp-layer", "-5"], "--lsp-layer must be an EdgeConv layer"),
    ("train_modelnet.py", ["--channels-s", "8,,8"], "integers separated by commas"),
    ("train_modelnet.py", ["--channels-s", "0,0"], "--channels-s must be widths >= 1"),
    ("train_modelnet.py", ["--k-s", "200"], "--k-s must be in [1, --num-points = 128)"),
    (None, ["--seed", "-1"], "--seed must be in [0, 2^32)"),
    (None, ["--teacher-seed", "-1"], "--teacher-seed must be in [0, 2^32)"),
    (None, ["--lsp", "--lsp-weight", "nan"], "--lsp-weight must be >= 0"),
    (None, ["--kd", "--kd-T", "0"], "--kd-T must be > 0"),
    (None, ["--kd", "--kd-alpha", "2"], "--kd-alpha must be in [0, 1]"),
    (None, ["--save-epochs", "2"], "--save-epochs must be epochs in [1, --epochs = 1]"),
    (None, ["--teacher-ckpt", os.sep], "is a folder"),
    # a method's flags without the method would silently train without it
    (None, ["--sigma", "auto"], "--sigma would do nothing without --lsp"),
    (None, ["--kernel", "l2", "--lsp-weight", "5"],
     "--kernel, --lsp-weight would do nothing without --lsp"),
    (None, ["--kd-T", "2"], "--kd-T would do nothing without --kd"),
    (None, ["--hkd-k", "4"], "--hkd-k would do nothing without --hkd"),
    ("train_ppi.py", ["--kd-corr-weight", "2"], "--kd-corr-weight would do nothing without "
     "--kd-corr"),
    ("train_modelnet.py", ["--teacher-amp"], "--teacher-amp would do nothing without a "
     "distillation method"),
    # an epoch's last step that diverges: found at the end of the epoch, not a traceback
    (None, ["--lr", "1e30"], "error: the student's training diverged"),
    (None, ["--lr", "1e30"], "Try a smaller --lr or distillation weight"),
    (None, ["--teacher-lr", "1e30"], "a smaller --teacher-lr"),  # in training, or once saved
    # diverged: a NaN or infinite loss stops the run instead of writing results of nonsense
    ("train_ppi.py", ["--lsp", "--kernel", "poly", "--degree", "9", "--lsp-weight", "1e38"],
     "training diverged in epoch 0: loss not finite"),
]


BAD_CASES = [(s, f, m) for script, f, m in BAD_FLAGS for s in ([script] if script else SCRIPTS)]


@pytest.fixture(scope="module")
def bad_flag_runs(request, tmp_path_factory):
    """The commands of the selected BAD_CASES, two at a time (each is mostly Python and torch
    starting up, so this halves their time on two cores): {case: (its --out-dir, process)}."""
    cases = sorted({item.callspec.params["case"] for item in request.session.items
                    if item.originalname == "test_bad_flags_end_in_one_error_line"})
    outs = {case: tmp_path_factory.mktemp("bad") / "out" for case in cases}

    def start(case):
        script, flags, _ = BAD_CASES[case]
        return case, (outs[case], run(script, "--dry-run", "--out-dir", str(outs[case]), *flags))

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        return dict(pool.map(start, cases))


@pytest.mark.parametrize("case", range(len(BAD_CASES)),
                         ids=[f"{s}-{' '.join(f)}" for s, f, _ in BAD_CASES])
def test_bad_flags_end_in_one_error_line(bad_flag_runs, case):
    out, p = bad_flag_runs[case]
    assert_one_error_line(p, BAD_CASES[case][2])
    assert not list(out.rglob("results.json"))
    for log in out.rglob("log.txt"):  # a run folder: the line ends its log too
        assert log.read_text().splitlines()[-1].endswith(p.stderr.strip())


@pytest.mark.parametrize("script", SCRIPTS)
def test_unwritable_paths_are_refused_before_training(tmp_path, script):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for flags, message in ((["--out-dir", str(a_file)], "cannot write the run's outputs"),
                           (["--out-dir", str(a_file / "sub")], "cannot write the run's outputs"),
                           (["--teacher-ckpt", str(a_file / "t.pt")],
                            "cannot write the teacher's checkpoint")):
        p = run(script, "--dry-run", *(["--out-dir", str(tmp_path / "o")] if "--out-dir"
                                       not in flags else []), *flags)
        assert_one_error_line(p, message)
        assert "teacher epoch" not in p.stdout  # found before the teacher trained


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_corrupt_or_foreign_teacher_checkpoint(tmp_path, script):
    bad = tmp_path / "t.pt"
    bad.write_bytes(b"not a checkpoint")
    p = run(script, "--dry-run", "--teacher-ckpt", str(bad), "--out-dir", str(tmp_path / "o"))
    assert_one_error_line(p, "delete it to train the teacher again")
    torch.save({"model": {}}, bad)  # a dict, but not one of ours
    p = run(script, "--dry-run", "--teacher-ckpt", str(bad), "--out-dir", str(tmp_path / "o"))
    assert_one_error_line(p, "is not a teacher checkpoint of this version")


def test_summarize_averages_only_runs_that_differ_in_their_seed(tmp_path):
    for flags in ([], ["--seed", "1"], ["--lr", "0.05"]):
        p = run("train_ppi.py", "--dry-run", "--out-dir", str(tmp_path), *flags)
        assert p.returncode == 0, p.stderr
    p = run("train_ppi.py", "--summarize", str(tmp_path))
    assert p.returncode == 0, p.stderr
    rows = [line for line in p.stdout.splitlines() if "   seeds [" in line]
    assert len(rows) == 2, p.stdout
    assert any("seeds [0, 1]" in r for r in rows) and any("lr=0.05" in r for r in rows)


def test_summarize_errors(tmp_path):
    assert_one_error_line(run("train_ppi.py", "--summarize", str(tmp_path / "none")),
                          "no such folder")
    assert_one_error_line(run("train_ppi.py", "--summarize", str(tmp_path)), "no results.json")
    p = run("train_modelnet.py", "--dry-run", "--out-dir", str(tmp_path))
    assert p.returncode == 0, p.stderr
    assert_one_error_line(run("train_ppi.py", "--summarize", str(tmp_path)),
                          "summarize it with its own script")
    assert run("train_modelnet.py", "--summarize", str(tmp_path)).returncode == 0


# ----------------------------------------------------------------------------------------
# The same command, the same numbers; each run in its own folder

@pytest.mark.parametrize("script", SCRIPTS)
def test_a_seeded_command_repeats_bit_for_bit(tmp_path, script):
    """The same command twice gives the same results.json, byte for byte (times and memory,
    which cannot repeat, are in cost.json). The second run replaces the first's files."""
    cmd = ["--dry-run", "--lsp", "--sigma", "auto", "--fitnet", "--out-dir", str(tmp_path)]
    first = run(script, *cmd)
    assert first.returncode == 0, first.stderr
    (run_dir,) = run_dirs(tmp_path)
    before = (run_dir / "results.json").read_bytes()
    second = run(script, *cmd)
    assert second.returncode == 0, second.stderr
    assert run_dirs(tmp_path) == [run_dir]
    assert (run_dir / "results.json").read_bytes() == before
    log = (run_dir / "log.txt").read_text()
    assert log.count("command: ") == 1  # the rerun's log replaced the first, not mixed in


def test_runs_with_other_arguments_get_their_own_folders(tmp_path):
    for flags in ([], ["--lr", "0.01"], ["--lr", "0.01", "--lsp-weight", "10", "--lsp"]):
        p = run("train_ppi.py", "--dry-run", "--out-dir", str(tmp_path), *flags)
        assert p.returncode == 0, p.stderr
    dirs = run_dirs(tmp_path)
    assert len(dirs) == 3
    commands = [(d / "log.txt").read_text().splitlines()[0] for d in dirs]
    assert len(set(commands)) == 3 and all(all(
        line.count("command: ") == 0 for line in (d / "log.txt").read_text().splitlines()[1:])
        for d in dirs)


def test_a_running_command_is_not_run_twice_at_once(tmp_path):
    p = run("train_ppi.py", "--dry-run", "--out-dir", str(tmp_path))
    assert p.returncode == 0, p.stderr
    (run_dir,) = run_dirs(tmp_path)
    with open(run_dir / "log.txt", "a") as f:  # as the first run holds it while it runs
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        p = run("train_ppi.py", "--dry-run", "--out-dir", str(tmp_path))
    assert_one_error_line(p, "another run of the same command is writing to")
    assert (run_dir / "results.json").exists()  # the running one's files were left alone


def test_a_restarted_run_first_removes_what_its_last_attempt_left(tmp_path, capsys):
    args = types.SimpleNamespace(out_dir=str(tmp_path), summarize=None, data="synthetic",
                                 seed=0, lsp=False, kd=False, at=False, fitnet=False)
    run_dir, log = runs.open_run(args, "synthetic-x", "ppi")
    for name in ("results.json", "cost.json", "student.pt"):
        open(os.path.join(run_dir, name), "w").close()
    # the same run again in this process (main() called twice, in a notebook): the first
    # attempt's log is closed and its lock released
    run_dir_again, _ = runs.open_run(args, "synthetic-x", "ppi")
    assert run_dir_again == run_dir
    assert sorted(os.listdir(run_dir)) == ["args.json", "log.txt"]


# ----------------------------------------------------------------------------------------
# The teacher: the right one, its provenance logged, resumable

PPI_SMALL = ["--data", "synthetic", "--scale", "0.03", "--epochs", "1", "--out-dir", "runs"]


def test_a_teacher_is_reused_only_by_runs_that_would_train_the_same_one(tmp_path):
    first = run("train_ppi.py", *PPI_SMALL, "--teacher-epochs", "1", cwd=tmp_path)
    other = run("train_ppi.py", *PPI_SMALL, "--teacher-epochs", "2", cwd=tmp_path)
    again = run("train_ppi.py", *PPI_SMALL, "--teacher-epochs", "1", "--lsp", cwd=tmp_path)
    for p in (first, other, again):
        assert p.returncode == 0, p.stderr
    ckpts = sorted((tmp_path / "checkpoints").iterdir())
    assert len(ckpts) == 2  # one teacher per setting, never a stale one
    assert "no teacher at" in first.stdout and "no teacher at" in other.stdout
    assert "teacher loaded from" in again.stdout
    for p, epochs in ((first, 1), (other, 2), (again, 1)):  # the provenance, always logged
        (line,) = [l for l in p.stdout.splitlines() if "teacher trained and saved to" in l
                   or "teacher loaded from" in l]
        assert f"{epochs} epochs, seed 0, best val f1" in line
    res = json.loads(next((tmp_path / "runs").rglob("*lsp*/results.json")).read_text())
    assert res["teacher"]["config"]["epochs"] == 1 and res["teacher"]["file"] in again.stdout
    # an explicit checkpoint trained otherwise stops the run, naming the difference
    p = run("train_ppi.py", *PPI_SMALL, "--teacher-epochs", "3", "--teacher-ckpt",
            str(ckpts[0]), cwd=tmp_path)
    assert_one_error_line(p, "was trained otherwise than this run would train it "
                             "(--teacher-epochs ")


def test_the_teacher_has_its_own_optimiser_flags(tmp_path):
    """A sweep over the student's --lr and --batch-size reuses one teacher; --teacher-lr
    trains another, and a checkpoint trained at another --teacher-lr is refused by name."""
    first = run("train_ppi.py", *PPI_SMALL, "--teacher-epochs", "1", cwd=tmp_path)
    sweep = run("train_ppi.py", *PPI_SMALL, "--teacher-epochs", "1", "--lr", "0.01",
                "--batch-size", "4", cwd=tmp_path)
    other = run("train_ppi.py", *PPI_SMALL, "--teacher-epochs", "1", "--teacher-lr", "0.01",
                cwd=tmp_path)
    for p in (first, sweep, other):
        assert p.returncode == 0, p.stderr
    assert "teacher loaded from" in sweep.stdout and "no teacher at" in other.stdout
    (ckpt,) = [c for c in (tmp_path / "checkpoints").iterdir()
               if torch.load(c, weights_only=False)["config"]["lr"] == 0.01]
    p = run("train_ppi.py", *PPI_SMALL, "--teacher-epochs", "1", "--lr", "0.01",
            "--teacher-ckpt", str(ckpt), cwd=tmp_path)
    assert_one_error_line(p, "(--teacher-lr 0.01 there, 0.005 here)")


def test_a_run_waits_for_another_that_trains_the_same_teacher(tmp_path):
    """While another run holds the teacher's lock, a run that needs the same teacher waits,
    then loads the checkpoint that the other run saved, instead of training its own."""
    made = run("train_ppi.py", *PPI_SMALL, "--teacher-epochs", "1", "--teacher-ckpt",
               str(tmp_path / "made.pt"), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    ckpt = tmp_path / "t.pt"
    with open(str(ckpt) + ".lock", "a") as lock:  # as a run training this teacher holds it
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train_ppi.py"), *PPI_SMALL,
                                 "--teacher-epochs", "1", "--teacher-ckpt", str(ckpt)],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        deadline = threading.Timer(120, proc.kill)  # a test that fails, not one that hangs
        deadline.start()
        waiting = any("waiting for it to finish" in line for line in proc.stdout)
        os.replace(tmp_path / "made.pt", ckpt)  # the other run saves the teacher, and ends
    deadline.cancel()
    assert waiting
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "teacher loaded from" in out and "no teacher at" not in out
    assert not os.path.exists(str(ckpt) + ".lock")


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_saved_teacher_with_nan_weights_is_named_with_its_file(tmp_path, script):
    """A teacher checkpoint whose outputs are NaN (a diverged teacher, saved) stops the
    student's run with one line that names the file and --teacher-lr."""
    ckpt, flags = tmp_path / "t.pt", ["--dry-run", "--kd", "--out-dir", str(tmp_path / "o")]
    p = run(script, *flags, "--teacher-ckpt", str(ckpt))
    assert p.returncode == 0, p.stderr
    saved = torch.load(ckpt, weights_only=False)
    for v in saved["model"].values():
        if v.is_floating_point():
            v.fill_(float("nan"))
    torch.save(saved, ckpt)
    p = run(script, *flags, "--teacher-ckpt", str(ckpt))
    assert_one_error_line(p, f"its checkpoint {ckpt} holds a diverged teacher")
    assert "--teacher-lr" in p.stderr


def test_a_failed_write_leaves_no_temp_file_and_one_line(tmp_path):
    in_the_way = tmp_path / "results.json"  # a folder where the file should go
    (in_the_way / "x").mkdir(parents=True)
    with pytest.raises(SystemExit) as e:
        runs.atomic_save({"a": 1}, str(in_the_way), as_json=True)
    assert str(e.value).startswith(f"error: cannot write {in_the_way}: ")
    assert sorted(os.listdir(tmp_path)) == ["results.json"]


def test_modelnet_teacher_records_its_number_of_points(tmp_path):
    ckpt = str(tmp_path / "t.pt")
    p = run("train_modelnet.py", "--dry-run", "--num-points", "64", "--teacher-ckpt", ckpt,
            "--out-dir", str(tmp_path / "o"))
    assert p.returncode == 0, p.stderr
    p = run("train_modelnet.py", "--dry-run", "--num-points", "32", "--teacher-ckpt", ckpt,
            "--out-dir", str(tmp_path / "o"))
    assert_one_error_line(p, "(--num-points 64 there, 32 here)")


def test_ctrl_c_says_how_to_resume_and_the_rerun_resumes_exactly(tmp_path):
    """A teacher interrupted after its checkpoint at epoch 5 resumes from it when the same
    command is rerun, and ends bit for bit as a teacher trained without a stop; so does the
    whole run's results.json."""
    cmd = [sys.executable, os.path.join(ROOT, "train_ppi.py"), *PPI_SMALL,
           "--teacher-epochs", "12"]
    (tmp_path / "a").mkdir()
    # a shell without job control starts background jobs with SIGINT ignored, and Python
    # then keeps ignoring it: the child gets the default disposition back, as in a terminal
    proc = subprocess.Popen(cmd, cwd=tmp_path / "a", stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stdout:
        if "teacher epoch 005" in line:  # its checkpoint after epoch 5 is written
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith("interrupted: ") and "rerun the same command to resume" in line
    (resume,) = (tmp_path / "a" / "checkpoints").glob("*.resume")
    resumed = subprocess.run(cmd, cwd=tmp_path / "a", capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming the teacher's training from " in resumed.stdout
    assert "epochs done, on with epoch " in resumed.stdout
    assert "teacher epoch 000" not in resumed.stdout  # on from its checkpoint, not from 0
    assert not resume.exists()
    (tmp_path / "b").mkdir()
    straight = subprocess.run(cmd, cwd=tmp_path / "b", capture_output=True, text=True,
                              timeout=300)
    assert straight.returncode == 0, straight.stderr
    (ckpt_a,), (ckpt_b,) = ((tmp_path / d / "checkpoints").glob("*.pt") for d in "ab")
    a, b = (torch.load(c, weights_only=False) for c in (ckpt_a, ckpt_b))
    assert a["epoch"] == b["epoch"] and a["best_val"] == b["best_val"]
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    results = [next((tmp_path / d / "runs").rglob("results.json")).read_bytes() for d in "ab"]
    assert results[0] == results[1]


STUDENT_RESUMES = {  # a student with every kind of state: σ per epoch, a learned module
    "train_ppi.py": [*PPI_SMALL, "--teacher-epochs", "1", "--epochs", "12", "--lsp",
                     "--sigma", "auto", "--fitnet"],
    "train_modelnet.py": ["--data", "synthetic", "--train-per-class", "1", "--test-per-class",
                          "1", "--num-points", "64", "--batch-size", "8", "--teacher-epochs",
                          "1", "--epochs", "12", "--lsp", "--sigma", "auto", "--hkd",
                          "--hkd-k", "4", "--out-dir", "runs"]}


@pytest.mark.parametrize("script", SCRIPTS)
def test_an_interrupted_student_resumes_exactly(tmp_path, script):
    """Ctrl-C (PPI) or SIGTERM (ModelNet40: kill, timeout, a cluster's scheduler) after the
    student's checkpoint at epoch 5; the same command again goes on from it, keeps the first
    attempt's log, and writes the same results.json, byte for byte, as a run that was never
    stopped (its structure by epoch and σ per epoch included)."""
    cmd = [sys.executable, os.path.join(ROOT, script), *STUDENT_RESUMES[script]]
    (tmp_path / "a").mkdir()
    proc = subprocess.Popen(cmd, cwd=tmp_path / "a", stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stdout:
        if "] epoch 005 |" in line:  # the student's checkpoint after epoch 5 is written
            proc.send_signal(signal.SIGINT if script == "train_ppi.py" else signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == (130 if script == "train_ppi.py" else 143), err  # 128 + signal
    (line,) = err.strip().splitlines()
    assert line.startswith("interrupted: the student's training is saved in ")
    assert "student.resume after 5 epochs (the last: epoch 004 in the log); rerun" in line
    (resume,) = (tmp_path / "a" / "runs").rglob("student.resume")
    # stopped again once the teacher is loaded: the line still names the student's progress
    proc = subprocess.Popen(cmd, cwd=tmp_path / "a", stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stdout:
        if "teacher loaded from" in line:
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "student.resume" in err, err
    resumed = subprocess.run(cmd, cwd=tmp_path / "a", capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "student.resume: 5 epochs done, on with epoch 005" in resumed.stdout
    assert "] epoch 004 |" not in resumed.stdout and "] epoch 005 |" in resumed.stdout
    assert not resume.exists()
    log = (resume.parent / "log.txt").read_text()
    assert log.count("command: ") == 3 and "] epoch 000 |" in log  # the attempts kept
    (tmp_path / "b").mkdir()
    straight = subprocess.run(cmd, cwd=tmp_path / "b", capture_output=True, text=True,
                              timeout=300)
    assert straight.returncode == 0, straight.stderr
    a, b = [next((tmp_path / d / "runs").rglob("results.json")).read_bytes() for d in "ab"]
    assert a == b


def test_a_student_resume_of_another_teacher_or_student_is_refused(tmp_path):
    """student.resume holds the fingerprint of the student's architecture and the teacher's
    weights: a run with a retrained teacher, or another student, does not resume from it."""
    student, teacher = torch.nn.Linear(3, 2), torch.nn.Linear(4, 3)
    mark = runs.fingerprint(student, teacher)
    _, save_progress = runs.student_progress(str(tmp_path), print, mark)
    save_progress({"epoch": 4, "model": student.state_dict()})
    resume, _ = runs.student_progress(str(tmp_path), print, mark)  # the same run: resumes
    assert resume["epoch"] == 4
    with torch.no_grad():
        teacher.weight[0, 0] += 1e-6  # the same settings, trained again: other weights
    for other, what in ((runs.fingerprint(student, teacher), "another teacher"),
                        (runs.fingerprint(torch.nn.Linear(3, 5), torch.nn.Linear(4, 3)),
                         "another student architecture")):
        with pytest.raises(SystemExit) as e:
            runs.student_progress(str(tmp_path), print, other)
        assert str(e.value).startswith("error: ") and f"was saved with {what}" in str(e.value)
        assert "delete it to train the student from the start" in str(e.value)


def test_modelnet_epoch_line_shows_the_epochs_own_learning_rate(tmp_path):
    p = run("train_modelnet.py", "--dry-run", "--lr", "0.05", "--out-dir", str(tmp_path))
    assert p.returncode == 0, p.stderr
    assert "epoch 000 |" in p.stdout and "| lr 0.0500 |" in p.stdout
