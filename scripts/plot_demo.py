#!/usr/bin/env python3
"""Pictures of scripts/demo.sh (matplotlib, no display needed).

    plot_demo.py DATA_DIR OUT_DIR

DATA_DIR holds what the demo's programs wrote:
    mlp/<optimizer>.csv     train_mlp --log-csv: a row per epoch
    mlp/labels.csv          optimizer,label (the label names the learning rate the demo used)
    paths/functions.csv, paths/<function>.csv, paths/<function>_surface.csv   (examples/paths)
OUT_DIR receives loss_curves.png and paths_<function>.png; their paths are printed.
"""
import csv
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

# Fifteen colours told apart at a glance (tab10 plus five), the same optimizer the same colour in
# every picture; line styles separate the families further.
COLOURS = {
    "SGD": "#1f77b4", "SGD+momentum": "#17becf", "RMSprop": "#ff7f0e", "Adagrad": "#2ca02c",
    "Adadelta": "#98df8a", "Adam": "#d62728", "AdamW": "#9467bd", "Adamax": "#8c564b",
    "Nadam": "#e377c2", "Lion": "#7f7f7f", "Lamb": "#bcbd22", "Ftrl": "#000000",
    "ScheduleFreeAdamW": "#ff9896", "Adafactor": "#aec7e8", "Muon": "#c5b0d5",
}
STYLES = {"SGD": "-", "SGD+momentum": "--", "Adagrad": "-.", "Adadelta": ":", "Ftrl": "-.",
          "ScheduleFreeAdamW": "--", "Adafactor": "--", "Muon": ":"}


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot_loss_curves(mlp_dir, out_dir):
    labels = {row["optimizer"]: row["label"] for row in read_rows(os.path.join(mlp_dir, "labels.csv"))}
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(14, 5.5))
    for name, label in labels.items():
        rows = read_rows(os.path.join(mlp_dir, name + ".csv"))
        epochs = [int(r["epoch"]) for r in rows]
        # Epoch 0 is before training: its "loss" is the whole training split's, then the
        # running mean of each epoch (as Keras's fit reports it).
        loss = [float(r["loss"]) for r in rows]
        test_acc = [100.0 * float(r["test_accuracy"]) for r in rows]
        style = dict(color=COLOURS.get(name), linestyle=STYLES.get(name, "-"), linewidth=1.8)
        ax_loss.plot(epochs, loss, label=label, **style)
        ax_acc.plot(epochs, test_acc, label=label, **style)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss (softmax cross-entropy, log scale)")
    ax_loss.set_title("Training loss")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("test accuracy (%)")
    ax_acc.set_title("Accuracy on the held-out points")
    ax_acc.set_ylim(0, 100)
    for ax in (ax_loss, ax_acc):
        ax.grid(True, which="both", alpha=0.3)
    ax_acc.axhline(100.0 / 5, color="grey", linewidth=1, linestyle=":")
    ax_acc.annotate("chance", (0, 100.0 / 5), textcoords="offset points", xytext=(4, 4), color="grey")
    ax_acc.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), title="optimizer (learning rate)", fontsize=9)
    fig.suptitle("An MLP trained on interleaved spirals with every cuoptim optimizer")
    fig.tight_layout()
    path = os.path.join(out_dir, "loss_curves.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def read_surface(path):
    xs, ys, fs = [], [], []
    for row in read_rows(path):
        xs.append(float(row["x"]))
        ys.append(float(row["y"]))
        fs.append(float(row["loss"]))
    n = int(round(math.sqrt(len(fs))))
    shape = (n, n)  # rows of constant y, x growing along each
    return np.array(xs).reshape(shape), np.array(ys).reshape(shape), np.array(fs).reshape(shape)


def plot_paths(paths_dir, function, out_dir):
    x, y, f = read_surface(os.path.join(paths_dir, function["function"] + "_surface.csv"))
    fig, ax = plt.subplots(figsize=(11, 7.5))
    # Contour levels evenly spaced in log(f - min f): the valleys and the cliffs both show.
    shifted = f - f.min()
    positive = shifted[shifted > 0]
    levels = np.geomspace(max(positive.min(), positive.max() * 1e-7), positive.max(), 25)
    ax.contour(x, y, shifted, levels=levels, cmap="Greys_r", linewidths=0.7, alpha=0.6)
    trajectories = {}
    for row in read_rows(os.path.join(paths_dir, function["function"] + ".csv")):
        trajectories.setdefault((row["optimizer"], row["learning_rate"]), []).append(
            (float(row["x"]), float(row["y"])))
    for (name, lr), points in trajectories.items():
        px, py = zip(*points)
        colour = COLOURS.get(name)
        ax.plot(px, py, color=colour, linestyle=STYLES.get(name, "-"), linewidth=1.6, marker=".", markersize=2.5,
                label=f"{name} (lr {lr})")
        # Where each one ended: how far along it got.
        ax.plot(px[-1], py[-1], "o", color=colour, markersize=8, markeredgecolor="black", zorder=5)
    ax.plot(float(function["start_x"]), float(function["start_y"]), "o", color="black", markersize=8,
            label="start")
    ax.plot(float(function["minimum_x"]), float(function["minimum_y"]), "*", color="gold", markersize=16,
            markeredgecolor="black", label="minimum", zorder=6)
    ax.set_xlim(float(function["x_min"]), float(function["x_max"]))
    ax.set_ylim(float(function["y_min"]), float(function["y_max"]))
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    steps = len(next(iter(trajectories.values()))) - 1
    ax.set_title(f"{function['title']}: {steps} steps of each optimizer (dots: where each ended)")
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=9)
    fig.tight_layout()
    path = os.path.join(out_dir, "paths_" + function["function"] + ".png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    data_dir, out_dir = sys.argv[1], sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    written = [plot_loss_curves(os.path.join(data_dir, "mlp"), out_dir)]
    paths_dir = os.path.join(data_dir, "paths")
    for function in read_rows(os.path.join(paths_dir, "functions.csv")):
        written.append(plot_paths(paths_dir, function, out_dir))
    for path in written:
        print(os.path.abspath(path))


if __name__ == "__main__":
    main()
