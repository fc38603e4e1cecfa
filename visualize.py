"""Pictures and a table of finished runs: the paper's Fig. 4 (a student's feature space on
point clouds, without and with LSP, beside the teacher's), the structure metrics and test
score by epoch, and the mean ± std over seeds of --summarize (which needs no matplotlib).

    python visualize.py structure RUN_DIR... --out figures  # Fig. 4: fig4_structure.png
    python visualize.py curves RUN_DIR... --out figures     # curves_ppi.png, curves_modelnet.png

RUN_DIR: a run's folder or a folder holding runs. Each PNG holds the command that made it in
its metadata ("Description"). B clouds, P points, F features."""
import glob
import json
import os
import shlex
import sys
import warnings

try:  # Ctrl-C while torch loads: one line, not a traceback
    import numpy as np
    import torch
    from scipy.stats import spearmanr

    import common
    import data
    import models
    import synthetic
    from common import fail
except KeyboardInterrupt:
    sys.exit("\ninterrupted")

try:  # optional: summarize, and so the training scripts, run without it
    import matplotlib
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator
except ImportError:
    plt = None
except KeyboardInterrupt:
    raise SystemExit("\ninterrupted") from None

DPI, CURVES_SIZE = 100, (13.0, 9.0)                                       # inches
OBJECTS, SEED = 3, 0  # Fig. 4: test clouds of so many classes, drawn (and red points) by seed
CELL, LABEL, GAP, TOP, BOTTOM, MIN_WIDTH = 1.25, 2.0, 0.25, 1.5, 1.0, 8.0  # Fig. 4, inches
SCORE = {"ppi": ("test_f1", "test micro-F1"), "modelnet": ("acc", "test accuracy")}
SUMMARY = {"ppi": ("test_f1",), "modelnet": ("acc", "macc")}  # the scores of --summarize
METRICS = ("ls_kl", "ls_kl_auto", "rank_corr")  # of the structure (structure.py)
PANELS = (("rank_corr", "neighbour rank correlation\nwith the teacher (1: same order)", "linear"),
          ("ls_kl_auto", "KL(LS_s || LS_t), RBF with each\nmodel's median σ (log scale)", "log"),
          ("ls_kl", "KL(LS_s || LS_t), RBF σ = 1,\nEq. (5)-(6) (log scale)", "log"))


def find_runs(paths):
    """[(run_dir, results)] of every results.json in or under the folders `paths`; a run
    found twice (its folder and one above it both given) counts once."""
    runs = {}
    for path in paths:
        files = sorted(glob.glob(os.path.join(glob.escape(path), "**", "results.json"),
                                 recursive=True))
        if not files:
            fail(f"no results.json in or under {path} (a run writes one when it completes)")
        for file in files:
            try:
                with open(file) as f:
                    res = json.load(f)
                readable(res)
            except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
                fail(f"cannot read {file}: not the results of a run of this version "
                     f"({type(e).__name__}: {e})")
            runs.setdefault(os.path.realpath(file), (os.path.dirname(file), res))
    return list(runs.values())


def readable(res):
    """Raise KeyError, TypeError or ValueError unless res holds what summarize and the figures
    read: its scores and metrics as numbers (null: not measured), at the end and by epoch."""
    scores = SUMMARY[res["experiment"]]
    values = [res[k] for k in (*scores, *METRICS, "seed")] + [res["teacher"][k] for k in scores]
    values += [m[k] for m in res["structure_by_epoch"].values() for k in (scores[0], *METRICS)]
    for v in values:
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise TypeError(f"{v!r} is not a number")
    [int(e) for e in res["structure_by_epoch"]]
    if not all(isinstance(v, t) for v, t in ((res["method"], str), (res["data"], str),
                                             (res["args"], dict), (res["teacher"]["file"], str))):
        raise TypeError("method, data, args or the teacher's file is of another type")


def mean_std(values):
    v = np.array([x for x in values if x is not None], dtype=float)  # null: not measured
    if not len(v):
        return "n/a"
    return (f"{v.mean():.4f} ± {v.std():.4f}" if abs(v.mean()) >= 1e-3
            else f"{v.mean():.2e} ± {v.std():.1e}")


def summarize(out_dir, experiment):
    """Mean ± std over seeds of the results.json under out_dir, a row per method and setting
    (a method's later settings named by how they differ from its first), the teachers' scores,
    then per row the first score and the structure metrics by epoch."""
    scores = SUMMARY[experiment]
    rows, keys = {}, [*scores, *METRICS]
    for run_dir, r in find_runs([out_dir]):
        if r["experiment"] != experiment:
            fail(f"{run_dir} holds a run of {r['experiment']}: summarize it with its own script")
        first = next((rs[0]["args"] for rs in rows.values() if rs[0]["method"] == r["method"]),
                     r["args"])
        differ = [f"{k}={v}" for k, v in r["args"].items()
                  if k not in ("seed", "out_dir", "save_epochs") and first.get(k) != v]
        rows.setdefault(r["method"] + (f" ({', '.join(differ)})" if differ else ""), []).append(r)
    print(f"{'method':<34} {'seeds':>5} " + " ".join(f"{k:>17}" for k in keys))
    for name, runs in rows.items():
        print(f"{name:<34} {len(runs):>5} " + " ".join(
            f"{mean_std([r[k] for r in runs]):>17}" for k in keys)
            + f"   seeds {sorted(r['seed'] for r in runs)}")
    for file, got in sorted({(r["teacher"]["file"], tuple(r["teacher"][k] for k in scores))
                             for runs in rows.values() for r in runs}):
        print(f"teacher {file}: " + ", ".join(f"{k} {v:.4f}" for k, v in zip(scores, got)))
    keys = keys[:1] + keys[len(scores):]
    for name, runs in rows.items():
        print(f"\n{name}: on the test data by epoch (0: before training)\n{'epoch':>5} "
              + " ".join(f"{k:>21}" for k in keys))
        for epoch in sorted({int(e) for r in runs for e in r["structure_by_epoch"]}):
            at = [r["structure_by_epoch"][str(epoch)] for r in runs
                  if str(epoch) in r["structure_by_epoch"]]
            print(f"{epoch:>5} " + " ".join(f"{mean_std([m[k] for m in at]):>21}" for k in keys))


def save_figure(fig, out_dir, name, command):
    """out_dir/name.png, with the command that made it in its metadata."""
    path = os.path.join(out_dir, name + ".png")
    try:
        os.makedirs(out_dir, exist_ok=True)
        fig.savefig(path, dpi=DPI, metadata={"Description": command})
    except OSError as e:
        fail(f"cannot write {path}: {e.strerror or e}")
    plt.close(fig)
    print(f"{path}: {os.path.getsize(path) / 1024:.0f} KB")


# Fig. 4: the structure of the feature space ----------------------------------------------
def saved_epochs(run_dir):  # after which --save-epochs saved the student: student_epoch001.pt
    return {int(p[-6:-3]) for p in glob.glob(os.path.join(glob.escape(run_dir), "student_epoch*"))}


def pick_runs(runs):
    """(the run without LSP, [the runs with LSP], [the epochs all of them saved]), or exit."""
    for run_dir, res in runs:
        if res["experiment"] != "modelnet" or not saved_epochs(run_dir):
            fail(f"{run_dir} is no train_modelnet.py run made with --save-epochs (e.g. "
                 "--save-epochs 1,5,10,20,50,100)")
    without = [run for run in runs if "lsp" not in run[1]["method"].lower()]
    if len(without) != 1 or len(runs) == 1:
        fail(f"structure needs one run without LSP and at least one with it; got "
             f"{len(without)} without and {len(runs) - len(without)} with")
    if len({(r["data"], r["args"]["num_points"], r["teacher"]["file"]) for _, r in runs}) > 1:
        fail("the runs differ in data, points per cloud or teacher file: give runs of one data "
             "set and one teacher")
    epochs = sorted(set.intersection(*(saved_epochs(run_dir) for run_dir, _ in runs)))
    if not epochs:
        fail("the runs have no saved epoch in common (--save-epochs)")
    return without[0], [run for run in runs if run is not without[0]], epochs


@torch.no_grad()
def distances(model, pts, red):
    """Distance in the last EdgeConv's feature space from point red[b] of cloud b to every
    point of it, divided by the largest in the cloud: pts (B, P, 3), red (B,) -> (B, P)."""
    B, P, _ = pts.shape
    feat = model.eval().edge_features(pts)[-1][0].view(B, P, -1)    # (B, P, F)
    d = (feat - feat[torch.arange(B), red][:, None]).norm(dim=-1)    # (B, P)
    return d / d.amax(1, keepdim=True).clamp_min(1e-12)


def draw_cloud(ax, pts, d, red, note=None):
    """One cell: the cloud from a fixed viewpoint coloured by d (P,), its red point on top."""
    ax.computed_zorder = False
    size = float(np.clip(1500 / len(pts), 2, 25))
    x, y, z = pts[:, 0], pts[:, 2], pts[:, 1]  # the clouds' y axis drawn upwards
    ax.scatter(x, y, z, c=np.asarray(d), cmap="viridis", vmin=0, vmax=1, s=size,
               depthshade=False, linewidths=0)
    ax.scatter(x[red], y[red], z[red], c="red", s=4 * size, edgecolors="black", zorder=3)
    ax.view_init(elev=20, azim=-60)
    ax.set_box_aspect(np.ptp(np.stack([x, y, z]), axis=1), zoom=1.3)
    ax.set_axis_off()
    if note:
        ax.text2D(0.5, 0.02, note, transform=ax.transAxes, ha="center", fontsize=8)


def structure(args):
    """Fig. 4 -> args.out/fig4_structure.png: per object a row per student (without LSP
    first) and a column per saved epoch, the teacher in the last column."""
    without, with_lsp, epochs = pick_runs(find_runs(args.runs))
    rows, a = [without] + with_lsp, without[1]["args"]
    try:
        ds = (synthetic.synthetic_modelnet40(a["train_per_class"], a["test_per_class"],
                                             a["num_points"]) if a["data"] == "synthetic"
              else data.load_modelnet40(a["data_dir"]))
    except data.DataError as e:
        fail(str(e))
    rng, labels = np.random.default_rng(SEED), ds["test_labels"]  # objects of B classes
    there = [ds["class_names"][c] for c in np.unique(labels)]  # the classes of test clouds
    if set(args.classes or ()) - set(there):
        fail(f"--classes: no test cloud is of {', '.join(sorted(set(args.classes) - set(there)))}")
    classes = ([ds["class_names"].index(c) for c in args.classes] if args.classes else
               rng.choice(np.unique(labels), min(OBJECTS, len(np.unique(labels))), False))
    picked = [int(rng.choice(np.flatnonzero(labels == c))) for c in classes]
    pts = torch.as_tensor(ds["test_points"][picked, :a["num_points"]]).float()  # (B, P, 3)
    red = torch.as_tensor(rng.integers(a["num_points"], size=len(picked)))      # (B,)
    teacher = models.dgcnn_teacher(num_classes=len(ds["class_names"]))
    teacher.load_state_dict(common.load(without[1]["teacher"]["file"])["modules"]["model"])
    d_t, d_s = distances(teacher, pts, red), {}  # d_s: (row, epoch) -> (B, P)
    for r, (run_dir, res) in enumerate(rows):
        student = models.dgcnn_student(res["args"]["variant"])
        for epoch in epochs:
            file = os.path.join(run_dir, f"student_epoch{epoch:03d}.pt")
            student.load_state_dict(common.load(file)["model"])
            d_s[r, epoch] = distances(student, pts, red)

    B, R, C = len(picked), len(rows), len(epochs) + 1
    width, height = max(LABEL + CELL * C, MIN_WIDTH), TOP + BOTTOM + (CELL * R + GAP) * B - GAP
    x0 = (width + LABEL - CELL * C) / 2  # inches: the cells centred, right of the labels
    fig = plt.figure(figsize=(width, height))
    grid = fig.add_gridspec(B * (R + 1) - 1, C, height_ratios=(([CELL] * R + [GAP]) * B)[:-1],
                            left=x0 / width, right=(x0 + CELL * C) / width, top=1 - TOP / height,
                            bottom=BOTTOM / height, wspace=0, hspace=0)  # a gap between objects
    for b, c in enumerate(picked):
        top, cloud, name = b * (R + 1), pts[b].numpy(), ds["class_names"][labels[c]]
        for r, (_, res) in enumerate(rows):
            for e, epoch in enumerate(epochs):
                ax = fig.add_subplot(grid[top + r, e], projection="3d")
                draw_cloud(ax, cloud, d_s[r, epoch][b], red[b],
                           f"ρ = {spearmanr(d_s[r, epoch][b], d_t[b]).statistic:.2f}")
                if e == 0:  # the row's label, left of it
                    ax.text2D(0, 0.5, f"{name}\n{res['method']}\n({'with' if r else 'without'}"
                              " LSP)", transform=ax.transAxes, ha="right", va="center", fontsize=9)
        draw_cloud(fig.add_subplot(grid[top:top + R, -1], projection="3d"), cloud, d_t[b], red[b])
    for e, title in enumerate([f"after epoch {epoch}" for epoch in epochs] + ["teacher"]):
        fig.text((x0 + CELL * (e + 0.5)) / width, 1 - (TOP - 3 / 72) / height, title,
                 ha="center", va="bottom", fontsize=10)  # 3 pt above the cells
    bar = fig.add_axes([x0 / width, 0.6 / height, min(CELL * C, 4.5) / width, 0.15 / height])
    fig.colorbar(plt.cm.ScalarMappable(plt.Normalize(0, 1), "viridis"), cax=bar,
                 orientation="horizontal",
                 label="distance in feature space to the red point ÷ the largest in its picture")
    fig.suptitle(f"The structure of the feature space (the paper's Fig. 4), {without[1]['data']}\n"
                 "distance from the red point in the last EdgeConv's output (LSP's layer)\n"
                 "ρ: Spearman correlation with the teacher's distances (1: the same order)",
                 fontsize=10)
    save_figure(fig, args.out, "fig4_structure", args.command_line)


# Curves: the structure metrics and the test score against the epoch ----------------------
def by_epoch(res):
    """{epoch: metrics} of a run; ModelNet40's results, of its last epoch, are that epoch's
    point (PPI's are of the best-validation epoch: no point of the curve)."""
    points = {int(e): m for e, m in res["structure_by_epoch"].items()}
    if res["experiment"] == "modelnet":
        points.setdefault(res["args"]["epochs"], res)
    return points


def draw_panel(ax, methods, key, label, scale):
    """One metric against the epoch, methods {name: runs}: a line per method, the mean over
    its seeds, in a band ± std (on a log scale cut at a third of the lowest mean)."""
    lines = []
    for i, (method, runs) in enumerate(methods.items()):
        points = [by_epoch(res) for res in runs]
        epochs = sorted({e for p in points for e in p})
        values = np.array([[np.nan if p.get(e, {}).get(key) is None else p[e][key]
                            for p in points] for e in epochs])     # (epochs, seeds), nan: none
        with warnings.catch_warnings():  # no seed has a value: nan, without a warning
            warnings.simplefilter("ignore")
            mean, std = np.nanmean(values, 1), np.nanstd(values, 1)
        colour = plt.cm.tab10(i % 10)  # past 10 methods they repeat, dashed
        ax.plot(epochs, mean, marker="o", ms=4, color=colour, linestyle="-" if i < 10 else "--",
                label=f"{method} ({len(runs)} seed{'s' if len(runs) > 1 else ''})")
        lines.append((epochs, mean, std, colour))
    means = np.concatenate([mean for _, mean, _, _ in lines])
    bottom = np.min(means, where=means > 0, initial=np.inf) / 3 if scale == "log" else -np.inf
    for epochs, mean, std, colour in lines:
        ax.fill_between(epochs, np.maximum(mean - std, bottom), mean + std, color=colour,
                        alpha=0.15, lw=0)
    ticks = sorted({e for epochs, *_ in lines for e in epochs})
    ax.set_xscale("symlog", linthresh=1, linscale=0.5)  # 1, 5, 10, 20, 50, 100; 0 before 1
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set(yscale=scale, xlabel="epoch (log scale; 0: before training)", ylabel=label)
    ax.grid(alpha=0.3)


def curves(args):
    """One PNG per experiment among the runs: args.out/curves_<experiment>.png."""
    runs = [res for _, res in find_runs(args.runs)]
    for experiment, (score, score_label) in SCORE.items():
        methods = {}
        for res in (res for res in runs if res["experiment"] == experiment):
            methods.setdefault(res["method"], []).append(res)
        names = sorted({res["data"] for group in methods.values() for res in group})
        if len(names) != 1:  # none, or several data sets in one figure
            continue
        fig, axes = plt.subplots(2, 2, figsize=CURVES_SIZE)
        fig.subplots_adjust(left=0.1, right=0.98, top=0.9, bottom=0.2, hspace=0.3, wspace=0.25)
        for ax, panel in zip(axes.flat, ((score, score_label, "linear"),) + PANELS):
            draw_panel(ax, methods, *panel)
        fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="lower center", ncol=3,
                   fontsize=9, frameon=False)
        fig.suptitle(f"{experiment}, {names[0]}: the students on the test data by epoch; line: "
                     "mean over seeds, band: ± std", fontsize=11)
        save_figure(fig, args.out, f"curves_{experiment}", args.command_line)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    p = common.Parser(__doc__)
    p.add_argument("figure", choices=["structure", "curves"],
                   help="structure: Fig. 4 from train_modelnet.py runs made with --save-epochs, "
                        "one without LSP and one or more with; curves: metrics by epoch")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="run folders, or folders holding them (found by their results.json)")
    p.add_argument("--out", default="figures", help="the folder of the PNGs")
    p.add_argument("--classes", type=lambda t: t.split(","), help="structure: a test cloud of "
                   f"each of these classes, e.g. airplane,chair,guitar (None: {OBJECTS} drawn)")
    args = p.parse_args(argv)
    if plt is None:
        fail("visualize.py needs matplotlib: pip install matplotlib")
    # the command that made a figure, with no absolute path of this machine in it
    args.command_line = "python visualize.py " + shlex.join(
        os.path.relpath(a) if os.path.isabs(a) else a for a in argv)
    {"structure": structure, "curves": curves}[args.figure](args)


if __name__ == "__main__":
    common.main_guard(main, resumes=False)
