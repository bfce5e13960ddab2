"""Pictures a person would rather look at than read: loss curves and sample grids."""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from PIL import Image

from paris.storage import Store


def _figure_png(fig: Figure) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def loss_plot_png(curves: dict[str, list[tuple[int, float]]], title: str = "training loss") -> bytes:
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    for name, hist in curves.items():
        if hist:
            steps, losses = zip(*hist, strict=True)
            ax.plot(steps, losses, label=name, linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (smoothed)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend(fontsize=7, ncol=2)
    return _figure_png(fig)


def save_loss_plot(store: Store, key: str, curves: dict[str, list[tuple[int, float]]]) -> None:
    store.put_bytes(key, loss_plot_png(curves))


def accuracy_plot_png(rows: list[dict[str, float]], title: str = "router held-out accuracy") -> bytes:
    """Router accuracy per noise bin: where along the trajectory routing becomes reliable."""
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    mids = [(r["t_lo"] + r["t_hi"]) / 2 for r in rows]
    ax.plot(mids, [r["accuracy"] for r in rows], marker="o")
    ax.set_xlabel("noise level t (1 = pure noise)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _figure_png(fig)


def grid(images: list[Image.Image], cols: int, scale: int = 1, pad: int = 2) -> Image.Image:
    """Tile images row-major; small images (digits) are enlarged with nearest-neighbour."""
    if not images:
        raise ValueError("no images to tile")
    w, h = images[0].size
    w, h = w * scale, h * scale
    rows = math.ceil(len(images) / cols)
    out = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + pad) + pad), (40, 40, 40))
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        out.paste(
            im.convert("RGB").resize((w, h), Image.Resampling.NEAREST), (pad + c * (w + pad), pad + r * (h + pad))
        )
    return out


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------------------
# `paris study`: ensemble against monolith
# --------------------------------------------------------------------------------------

Spread = tuple[float, float]  # mean, standard deviation


def bars_png(accuracy: dict[str, Spread], frechet: dict[str, Spread], chance: float, title: str) -> bytes:
    """Each method's score, mean and spread over seeds; the monolith's level as a line."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), dpi=110)
    for ax, (label, values) in zip(
        axes, (("prompted-class accuracy (higher is better)", accuracy), ("Fréchet (lower is better)", frechet)),
        strict=True,
    ):
        names = list(values)
        colors = ["tab:gray" if n == "monolith" else "tab:orange" if n.startswith("text-blind") else "tab:blue"
                  for n in names]
        ax.bar(range(len(names)), [values[n][0] for n in names], yerr=[values[n][1] for n in names],
               color=colors, capsize=3)
        if "monolith" in values:
            ax.axhline(values["monolith"][0], color="tab:gray", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].axhline(chance, color="tab:red", linestyle=":", linewidth=1, label=f"chance {chance:.2f}")
    axes[0].set_ylim(0, 1.02)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _figure_png(fig)


def compute_png(series: dict[str, list[tuple[float, float, float]]], title: str) -> bytes:
    """Score against training TFLOPs: one line per method, points (TFLOP, accuracy, Fréchet)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), dpi=110)
    for name, points in series.items():
        pts = sorted(points)
        style = {"color": "black", "linestyle": "--"} if name == "monolith" else {}
        for ax, i in zip(axes, (1, 2), strict=True):
            ax.plot([p[0] for p in pts], [p[i] for p in pts], marker="o", label=name, **style)
    for ax, label in zip(axes, ("prompted-class accuracy", "Fréchet (judge features)"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("training compute (TFLOP)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _figure_png(fig)


def router_png(curves: dict[str, list[dict[str, float]]]) -> bytes:
    """Held-out router accuracy per noise bin, one line (mean, spread band) per router."""
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    for name, rows in curves.items():
        mids = [(r["t_lo"] + r["t_hi"]) / 2 for r in rows]
        mean = [r["mean"] for r in rows]
        std = [r["std"] for r in rows]
        ax.plot(mids, mean, marker="o", label=name)
        ax.fill_between(mids, [m - s for m, s in zip(mean, std, strict=True)],
                        [m + s for m, s in zip(mean, std, strict=True)], alpha=0.2)
    ax.set_xlabel("noise level t (1 = pure noise)")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title("router: cluster of x_0 from x_t")
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=8)
    return _figure_png(fig)


def side_by_side_png(panels: dict[str, bytes], gap: int = 12, header: int = 18) -> bytes:
    """Grids (PNG bytes) next to each other, each under its name."""
    from PIL import ImageDraw

    images = {name: Image.open(io.BytesIO(data)).convert("RGB") for name, data in panels.items()}
    width = sum(im.width for im in images.values()) + gap * (len(images) + 1)
    height = max(im.height for im in images.values()) + header + gap
    out = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    x = gap
    for name, im in images.items():
        draw.text((x, 3), name, fill=(0, 0, 0))
        out.paste(im, (x, header))
        x += im.width + gap
    return png_bytes(out)
