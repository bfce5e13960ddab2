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
