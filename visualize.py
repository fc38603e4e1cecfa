"""Pictures of finished runs: the paper's Fig. 4 (the structure of a student's feature space on
point clouds, without and with LSP, beside the teacher's) and the structure metrics against
the epoch. The one file that uses matplotlib, an optional dependency (pip install matplotlib).

    python visualize.py structure RUN_DIR... --out figures   # Fig. 4 from train_modelnet.py runs
    python visualize.py curves RUN_DIR... --out figures      # metrics and test score per epoch

structure: the runs given (or found under the folders given) must be ModelNet40 runs made with
--save-epochs, exactly one without LSP and one or more with it (a method whose name contains
"lsp"), on the same data, LSP layer and teacher. Each cell shows one test cloud coloured by
the distance in feature space (the EdgeConv output LSP compares, --lsp-layer) from one red
point to every point, divided by the cell's largest distance so that cells compare.
curves: every results.json under the folders given; one PNG per experiment (PPI, ModelNet40),
one line per method, mean ± std over its seeds as a band.
Each PNG carries the command that made it in its metadata ("Description") and in a .txt
beside it. Dimensions: B clouds, P points, F features.
"""
import argparse
import glob
import io
import json
import os
import shlex
import sys

import numpy as np
import torch

import train_modelnet
from models import dgcnn_student, dgcnn_teacher
from runs import Parser, with_teacher_flags
from teacher import read_checkpoint

try:
    import matplotlib
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator
    from PIL import Image, PngImagePlugin  # Pillow: a dependency of matplotlib
except ImportError:
    plt = None

DPI = 100
CELL, LABEL, GAP, TOP, BOTTOM = 1.25, 2.0, 0.25, 1.5, 1.0  # Fig. 4's layout, in inches
MIN_WIDTH = 8.0                                            # room for the title, inches
CURVES_SIZE = (13.0, 9.0)                                  # inches
SAME_SETUP = ("data", "data_seed", "num_points", "train_per_class", "test_per_class",
              "lsp_layer")  # what the runs of one Fig. 4 must share
SCORE = {"ppi": ("test_f1", "test micro-F1"), "modelnet": ("acc", "test accuracy")}
STRUCTURE_PANELS = (
    ("rank_corr", "neighbour rank correlation\nwith the teacher (1: same order)", "linear"),
    ("ls_kl_auto", "KL(LS_s || LS_t), RBF with each\nmodel's median σ (log scale)", "log"),
    ("ls_kl", "KL(LS_s || LS_t), RBF σ = 1,\nEq. (5)-(6) (log scale)", "log"))
EXPERIMENT_NAME = {"ppi": "PPI", "modelnet": "ModelNet40"}


def fail(msg):
    sys.exit(f"error: {msg}")


# ----------------------------------------------------------------------------------------
# Runs and files

def find_runs(paths):
    """[(run_dir, results)] of every results.json in or under `paths`, in name order; a run
    found twice (its folder and a folder above it both given) counts once."""
    runs, seen = [], set()
    for path in paths:
        if not os.path.isdir(path):
            fail(f"{path}: no such folder")
        found = sorted(glob.glob(os.path.join(glob.escape(path), "**", "results.json"),
                                 recursive=True))
        if not found:
            fail(f"{path}: no results.json in it or its folders (a run writes one only when "
                 "it completes)")
        for file in found:
            if os.path.realpath(file) in seen:
                continue
            seen.add(os.path.realpath(file))
            try:
                with open(file) as f:
                    runs.append((os.path.dirname(file), json.load(f)))
            except (OSError, ValueError) as e:
                fail(f"cannot read {file}: {e}")
    return runs


def saved_epochs(run_dir):
    """The epochs after which --save-epochs saved the student (student_epoch001.pt, ...)."""
    return sorted(int(os.path.basename(p)[len("student_epoch"):-len(".pt")])
                  for p in glob.glob(os.path.join(glob.escape(run_dir),
                                                  "student_epoch[0-9]*.pt")))


def save_figure(fig, out_dir, name):
    """out_dir/name.png, with the command line in its metadata and in out_dir/name.txt."""
    command = "python visualize.py " + shlex.join(sys.argv[1:])
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name + ".png")
    buf, info = io.BytesIO(), PngImagePlugin.PngInfo()
    fig.savefig(buf, format="png", dpi=DPI)
    info.add_text("Description", command)
    # without matplotlib's alpha channel (all opaque): about 10% fewer bytes
    Image.open(buf).convert("RGB").save(path, pnginfo=info, optimize=True)
    with open(os.path.join(out_dir, name + ".txt"), "w") as f:
        f.write(command + "\n")
    w, h = fig.get_size_inches() * DPI
    print(f"{path}: {w:.0f} x {h:.0f} px, {os.path.getsize(path) / 1024:.0f} KB")
    plt.close(fig)


# ----------------------------------------------------------------------------------------
# Fig. 4: the structure of the feature space

def pick_pair(runs):
    """(the run without LSP, [the runs with LSP], [the epochs all of them saved]), or exit."""
    for run_dir, res in runs:
        if res.get("experiment") != "modelnet":
            fail(f"{run_dir} is a run of {res.get('experiment', 'an older version')}; structure "
                 "draws ModelNet40 runs of train_modelnet.py")
        if not saved_epochs(run_dir):
            fail(f"{run_dir} has no saved epochs: run train_modelnet.py with --save-epochs, "
                 "e.g. --save-epochs 1,5,10,20,50,100")
    with_lsp = [run for run in runs if "lsp" in run[1]["method"].lower()]
    without = [run for run in runs if "lsp" not in run[1]["method"].lower()]
    if len(without) != 1 or not with_lsp:
        fail(f"structure needs one run without LSP and at least one with it; got "
             f"{len(without)} without and {len(with_lsp)} with")
    for key in SAME_SETUP:
        if len({json.dumps(res["args"][key]) for _, res in runs}) > 1:
            fail(f"the runs differ in {key}; give runs of one data set and LSP layer")
    if len({json.dumps(res["teacher"]["config"], sort_keys=True) for _, res in runs}) > 1:
        fail("the runs were distilled from different teachers; give runs of one teacher")
    epochs = sorted(set.intersection(*(set(saved_epochs(d)) for d, _ in runs)))
    if not epochs:
        fail("the runs have no saved epoch in common (--save-epochs)")
    return without[0], with_lsp, epochs


def teacher_path(run_dir, res, override):
    """The teacher's checkpoint: --teacher-ckpt, else the run's teacher file as given at run
    time, relative to the current folder or to one of the run folder's parents."""
    if override:
        if not os.path.isfile(override):
            fail(f"--teacher-ckpt {override}: no such file")
        return override
    file = res["teacher"]["file"]
    parent = os.path.abspath(run_dir)
    candidates = [file]
    while os.path.dirname(parent) != parent:
        parent = os.path.dirname(parent)
        candidates.append(os.path.join(parent, file))
    for path in candidates:
        if os.path.isfile(path):
            return path
    fail(f"the teacher {file} of {run_dir} is not found from here or from the run folder's "
         "parents; give its path with --teacher-ckpt")


@torch.no_grad()
def distances(model, pts, red, layer):
    """Distance in feature space (EdgeConv `layer`) from point red[b] of cloud b to every
    point of it, divided by the largest in the cloud: pts (B, P, 3), red (B,) -> (B, P)."""
    B, P, _ = pts.shape
    feat, _ = model.eval().edge_features(pts)[layer]                 # (B*P, F)
    feat = feat.view(B, P, -1)                                        # (B, P, F)
    d = (feat - feat[torch.arange(B), red][:, None]).norm(dim=-1)    # (B, P)
    return d / d.amax(1, keepdim=True).clamp_min(1e-12)


def fig4_size(objects, runs, columns):
    """(width, height) in inches of Fig. 4 with objects x runs rows of cells and `columns`
    columns (the epochs and the teacher)."""
    return (max(LABEL + CELL * columns, MIN_WIDTH),
            TOP + BOTTOM + CELL * objects * runs + GAP * (objects - 1))


def rank_corr(a, b):
    """Spearman's correlation of two (P,) distance vectors (no ties: continuous values)."""
    ra, rb = (v.argsort().argsort().double() for v in (a, b))        # (P,) ranks
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra @ rb) / (ra.norm() * rb.norm()))


def draw_cloud(ax, pts, d, red, title=None, note=None):
    """One cell: the cloud from a fixed viewpoint, coloured by d (P,), its red point on top;
    a note below it."""
    ax.computed_zorder = False
    size = float(np.clip(1500 / len(pts), 2, 25))
    x, y, z = pts[:, 0], pts[:, 2], pts[:, 1]  # the clouds' y axis drawn upwards
    ax.scatter(x, y, z, c=d, cmap="viridis", vmin=0, vmax=1, s=size, depthshade=False,
               linewidths=0)
    ax.scatter(x[red], y[red], z[red], c="red", s=4 * size, edgecolors="black", zorder=3)
    ax.view_init(elev=20, azim=-60)
    ax.set_box_aspect(np.ptp(np.stack([x, y, z]), axis=1), zoom=1.3)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=10)
    if note:
        ax.text2D(0.5, 0.02, note, transform=ax.transAxes, ha="center", fontsize=8)


def pick_clouds(ds, num_points, objects, seed):
    """`objects` test clouds of distinct classes and a red point in each, drawn from seed:
    -> (their indices [B], their first num_points points (B, P, 3), red (B,))."""
    rng = np.random.default_rng(seed)
    labels = ds["test_labels"]
    classes = rng.choice(np.unique(labels), min(objects, len(np.unique(labels))), False)
    picked = [int(rng.choice(np.flatnonzero(labels == c))) for c in classes]
    pts = torch.as_tensor(ds["test_points"][picked, :num_points]).float()  # (B, P, 3)
    return picked, pts, torch.as_tensor(rng.integers(num_points, size=len(picked)))


def structure(args):
    """Fig. 4: per object a row per student run (without LSP first) and a column per saved
    epoch, the teacher in the last column; -> args.out/fig4_structure.png."""
    without, with_lsp, epochs = pick_pair(find_runs(args.runs))
    rows = [without] + with_lsp
    run_args = argparse.Namespace(**with_teacher_flags(without[1]["args"]))
    ds = train_modelnet.load_data(run_args)
    picked, pts, red = pick_clouds(ds, run_args.num_points, args.objects, args.seed)
    layer = run_args.lsp_layer
    teacher = dgcnn_teacher(num_classes=len(ds["class_names"]))
    teacher.load_state_dict(read_checkpoint(teacher_path(*without, args.teacher_ckpt), teacher,
                                            without[1]["teacher"]["config"])["model"])
    d_t, d_s = distances(teacher, pts, red, layer), {}  # d_s: (row, epoch) -> (B, P)
    for r, (run_dir, res) in enumerate(rows):
        a = res["args"]
        student = dgcnn_student(a["variant"], a["channels_s"], a["mlp_s"], k=a["k_s"])
        for epoch in epochs:
            path = os.path.join(run_dir, f"student_epoch{epoch:03d}.pt")
            student.load_state_dict(torch.load(path, "cpu", weights_only=True)["model"])
            d_s[r, epoch] = distances(student, pts, red, layer)

    B, n_cols = len(picked), len(epochs) + 1
    width, height = fig4_size(B, len(rows), n_cols)
    fig = plt.figure(figsize=(width, height))
    x0 = (width - LABEL - CELL * n_cols) / 2 + LABEL  # inches: the cells, centred
    ratios = ([CELL] * len(rows) + [GAP]) * B  # a thin empty row between objects
    grid = fig.add_gridspec(len(ratios) - 1, n_cols, height_ratios=ratios[:-1],
                            left=x0 / width, right=(x0 + CELL * n_cols) / width,
                            top=1 - TOP / height, bottom=BOTTOM / height, wspace=0, hspace=0)
    for b, c in enumerate(picked):
        top, cloud = b * (len(rows) + 1), pts[b].numpy()
        for r, (_, res) in enumerate(rows):
            for e, epoch in enumerate(epochs):
                ax = fig.add_subplot(grid[top + r, e], projection="3d")
                draw_cloud(ax, cloud, d_s[r, epoch][b].numpy(), red[b],
                           f"after epoch {epoch}" if b == 0 and r == 0 else None,
                           f"ρ = {rank_corr(d_s[r, epoch][b], d_t[b]):.2f}")
            box = ax.get_position()
            fig.text(x0 / width - 0.01, box.y0 + box.height / 2,
                     f"{ds['class_names'][ds['test_labels'][c]]}\n{res['method']}\n"
                     f"({'with' if r else 'without'} LSP)", ha="right", va="center", fontsize=9)
        ax = fig.add_subplot(grid[top:top + len(rows), -1], projection="3d")
        draw_cloud(ax, cloud, d_t[b].numpy(), red[b])
    fig.text((x0 + CELL * (n_cols - 0.5)) / width, 1 - (TOP - 3 / 72) / height, "teacher",
             ha="center", va="bottom", fontsize=10)  # level with the epochs' titles (3 pt up)
    bar = fig.add_axes([x0 / width, 0.6 / height, min(CELL * n_cols, 4.5) / width,
                        0.15 / height])  # 0.6 inches from the bottom, 0.15 tall
    fig.colorbar(plt.cm.ScalarMappable(plt.Normalize(0, 1), "viridis"), cax=bar,
                 orientation="horizontal",
                 label="distance in feature space to the red point ÷ the largest in its picture")
    data = without[1]["data"] + (" (synthetic)" if without[1].get("synthetic") else "")
    where = "the last EdgeConv" if layer == -1 else f"EdgeConv {layer} (from 0)"
    fig.suptitle(
        f"Structure of the feature space (the paper's Fig. 4), ModelNet40 {data}\n"
        f"distance from the red point to each point, output of {where}, LSP's layer\n"
        f"per object: student without LSP, then with; rightmost: the teacher\n"
        f"ρ: Spearman correlation of the cell's distances with the teacher's (1: same order)",
        fontsize=10)
    save_figure(fig, args.out, "fig4_structure")


# ----------------------------------------------------------------------------------------
# Curves: the structure metrics and the test score against the epoch

def by_epoch(res):
    """{epoch: metrics} of a run: structure_by_epoch, and for ModelNet40 the last epoch's
    (the results are of the last epoch there; PPI's are of the best-validation epoch)."""
    if "structure_by_epoch" not in res:
        fail(f"the results of {res['method']} hold no structure_by_epoch (an older version)")
    points = {int(e): m for e, m in res["structure_by_epoch"].items()}
    if res["experiment"] == "modelnet":
        points.setdefault(res["args"]["epochs"], res)
    return points


def mean_std_by_epoch(runs, key):
    """epochs, mean, std over the runs' finite values, and how many were not finite."""
    points = [by_epoch(res) for res in runs]
    epochs = sorted({e for p in points for e in p})
    values = [np.array([p[e].get(key, np.nan) for p in points if e in p], float) for e in epochs]
    finite = [v[np.isfinite(v)] for v in values]
    return (np.array(epochs), np.array([v.mean() if len(v) else np.nan for v in finite]),
            np.array([v.std() if len(v) else np.nan for v in finite]),
            sum(int((~np.isfinite(v)).sum()) for v in values))


def draw_panel(ax, methods, key, label, scale):
    """One metric against the epoch, methods {name: (colour, dashes, runs)}: a line per method, the
    mean over its runs, in a band ± std; on a log scale a mean of 0 is left out (and said)
    and a band that reaches 0 is cut at the panel's bottom."""
    notes, lines = [], []
    for method, (colour, dashes, group) in methods.items():
        epochs, mean, std, bad = mean_std_by_epoch(group, key)
        if bad:
            notes.append(f"{method}: {bad} values not finite, left out")
        if scale == "log" and (mean <= 0).any():
            notes.append(f"{method}: 0 at epoch {', '.join(map(str, epochs[mean <= 0]))}, "
                         "not drawn")
            mean = np.where(mean > 0, mean, np.nan)
        ax.plot(epochs, mean, marker="o", linestyle=dashes, color=colour, ms=4,
                label=f"{method} ({len(group)} seed{'s' if len(group) > 1 else ''})")
        lines.append((epochs, mean, std, colour))
    drawn = np.concatenate([mean[np.isfinite(mean)] for _, mean, _, _ in lines])
    bottom = drawn.min() / 3 if scale == "log" and len(drawn) else -np.inf
    for epochs, mean, std, colour in lines:
        ax.fill_between(epochs, np.maximum(mean - std, bottom), mean + std, color=colour,
                        alpha=0.15, lw=0)
    ticks = sorted({e for *_, group in methods.values() for res in group for e in by_epoch(res)})
    # the paper's epochs 1, 5, 10, 20, 50, 100 about evenly spaced on a log scale, and
    # epoch 0 (before training) one step before 1: linear between 0 and 1
    ax.set_xscale("symlog", linthresh=1, linscale=0.5)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_yscale(scale)
    ax.set(xlabel="epoch (log scale; 0: before training)", ylabel=label)
    ax.grid(alpha=0.3)
    if notes:
        ax.text(0.01, 0.01, "\n".join(notes), transform=ax.transAxes, fontsize=8, va="bottom")


def draw_curves(experiment, runs, out):
    """One PNG: a panel per metric (the test score, STRUCTURE_PANELS), a line per method."""
    data = sorted({res["data"] for res in runs})
    if len(data) > 1:
        fail(f"the {experiment} runs are on different data ({', '.join(data)}); give one data "
             "set per experiment")
    methods = {}
    for res in runs:
        methods.setdefault(res["method"], []).append(res)
    colours = plt.cm.tab10(np.arange(len(methods)) % 10)  # past 10 methods: dashed lines
    dashes = [("-", "--", ":", "-.")[i // 10 % 4] for i in range(len(methods))]
    methods = {m: (c, d, group) for c, d, (m, group) in zip(colours, dashes, methods.items())}
    score, score_label = SCORE[experiment]
    fig, axes = plt.subplots(2, 2, figsize=CURVES_SIZE)
    fig.subplots_adjust(left=0.1, right=0.98, top=0.9, bottom=0.2, hspace=0.3, wspace=0.25)
    for ax, panel in zip(axes.flat, ((score, score_label, "linear"),) + STRUCTURE_PANELS):
        draw_panel(ax, methods, *panel)
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=3, fontsize=9, frameon=False)
    data = runs[0]["data"] + (" (synthetic)" if runs[0].get("synthetic") else "")
    fig.suptitle(f"{EXPERIMENT_NAME[experiment]}, data {data}: the students during training, "
                 f"on the test {'graphs' if experiment == 'ppi' else 'clouds'}\n"
                 "structure against the teacher's over the graph LSP uses, and the test score;"
                 " line: mean over seeds, band: ± std (on a log scale cut where it reaches 0)",
                 fontsize=11)
    save_figure(fig, out, f"curves_{experiment}")


def curves(args):
    """One PNG per experiment among the runs: args.out/curves_<experiment>.png."""
    runs = []
    for run_dir, res in find_runs(args.runs):
        if res.get("experiment") not in SCORE:
            fail(f"{run_dir} holds results of an older version (no experiment named)")
        runs.append(res)
    for experiment in SCORE:
        of_it = [res for res in runs if res.get("experiment") == experiment]
        if of_it:
            draw_curves(experiment, of_it, args.out)


# ----------------------------------------------------------------------------------------
# The command line

def make_parser():
    p = Parser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("structure", help="the paper's Fig. 4 from train_modelnet.py runs",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="run folders, or folders holding them: one without LSP, one or more with")
    s.add_argument("--objects", type=int, default=3, help="how many test clouds (rows)")
    s.add_argument("--seed", type=int, default=0, help="picks the clouds and their red points")
    s.add_argument("--teacher-ckpt", default=None,
                   help="the teacher's checkpoint; None: the one the runs' results name")
    s.add_argument("--out", default="figures", help="folder of fig4_structure.png and .txt")
    c = sub.add_parser("curves", help="metrics and test score against the epoch",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    c.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="run folders, or folders holding them (searched for results.json)")
    c.add_argument("--out", default="figures", help="folder of curves_<experiment>.png and .txt")
    return p


def main(argv=None):
    if plt is None:
        fail("visualize.py needs matplotlib: pip install matplotlib")
    args = make_parser().parse_args(argv)
    if args.command == "curves":
        curves(args)
    elif args.objects < 1:
        fail(f"--objects must be >= 1, got {args.objects}")
    else:
        structure(args)


if __name__ == "__main__":
    main()
