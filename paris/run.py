"""`paris run`: the whole Paris recipe on one machine.

Experts train in separate OS processes that share nothing but files in the store, exactly
as they would on separate machines; this process only starts them and watches their
`progress.json`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table

from paris.config import RunConfig
from paris.errors import ParisError
from paris.layout import dataset_prefix, expert_prefix, model_prefix
from paris.progress import console, interactive
from paris.storage import Store


def ensure_dataset(cfg: RunConfig, store: Store) -> dict[str, Any]:
    """Prepare the data unless an identical preparation is already in the store."""
    from paris.data.prepare import prepare_dataset

    existing = store.get_json_or_none(f"{dataset_prefix(cfg.data.name)}/manifest.json")
    if existing is not None and existing.get("config") == cfg.data.model_dump():
        console.print(f"dataset {cfg.data.name!r} already prepared with this config: reusing it")
        return dict(existing)
    return prepare_dataset(cfg.data, store)


def _progress_table(cfg: RunConfig, store: Store, procs: dict[int, subprocess.Popen[bytes] | None]) -> Table:
    table = Table(title="experts (one process each)")
    for col in ("cluster", "state", "progress", "step", "loss", "samples/s"):
        table.add_column(col)
    for k in range(cfg.data.clusters):
        p = store.get_json_or_none(f"{expert_prefix(cfg.model, k)}/progress.json") or {}
        proc = procs.get(k)
        state = (
            "queued"
            if k not in procs
            else (
                "running"
                if proc is not None and proc.poll() is None
                else "done"
                if proc is None or proc.returncode == 0
                else f"exit {proc.returncode}"
            )
        )
        loss = p.get("loss")
        table.add_row(
            str(k),
            state,
            ProgressBar(total=p.get("total", cfg.train.steps), completed=p.get("step", 0), width=24),
            f"{p.get('step', 0)}/{p.get('total', cfg.train.steps)}",
            f"{loss:.4f}" if isinstance(loss, float) else "-",
            str(p.get("samples_per_s", "-")),
        )
    return table


def train_experts(cfg: RunConfig, store: Store, log_dir: Path) -> None:
    """Run every expert in its own process, `cfg.parallel` at a time."""
    threads = cfg.train.threads or max(1, (os.cpu_count() or 1) // cfg.parallel)
    child = cfg.model_copy(deep=True)
    child.train.threads = threads
    env = {**os.environ, "PARIS_CONFIG": yaml.safe_dump(child.model_dump(mode="json"))}
    log_dir.mkdir(parents=True, exist_ok=True)
    procs: dict[int, subprocess.Popen[bytes] | None] = {}
    logs = {}
    pending = list(range(cfg.data.clusters))
    last_print = 0.0
    with (
        Live(_progress_table(cfg, store, procs), console=console, refresh_per_second=1, transient=False)
        if interactive()
        else _NoLive() as live
    ):
        while pending or any(p is not None and p.poll() is None for p in procs.values()):
            running = sum(1 for p in procs.values() if p is not None and p.poll() is None)
            while pending and running < cfg.parallel:
                k = pending.pop(0)
                logs[k] = open(log_dir / f"expert-{k}.log", "wb")  # noqa: SIM115 (closed below)
                procs[k] = subprocess.Popen(
                    [sys.executable, "-m", "paris", "train", "expert", "--cluster", str(k)],
                    env=env,
                    stdout=logs[k],
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                running += 1
            failed = [k for k, p in procs.items() if p is not None and p.poll() not in (None, 0)]
            if failed:
                for p in procs.values():
                    if p is not None and p.poll() is None:
                        p.terminate()
                k = failed[0]
                tail = (log_dir / f"expert-{k}.log").read_text(errors="replace").strip().splitlines()[-1:]
                raise ParisError(
                    f"expert {k} failed ({tail[0] if tail else 'no output'}); log: {log_dir / f'expert-{k}.log'}"
                )
            live.update(_progress_table(cfg, store, procs))
            if not interactive() and time.time() - last_print > 30:
                console.print(_progress_table(cfg, store, procs))
                last_print = time.time()
            time.sleep(1.0)
        live.update(_progress_table(cfg, store, procs))
    for f in logs.values():
        f.close()


class _NoLive:
    def __enter__(self) -> _NoLive:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, _: Any) -> None:
        return None


def run(cfg: RunConfig, store: Store, log_dir: Path | None = None) -> dict[str, Any]:
    from paris.plots import save_loss_plot
    from paris.router.assemble import build_pipeline, publish_pipeline
    from paris.router.generate import sample_and_score
    from paris.router.train import train_router

    times: dict[str, float] = {}
    t0 = time.time()
    manifest = ensure_dataset(cfg, store)
    times["prepare"] = time.time() - t0

    t = time.time()
    train_experts(cfg, store, log_dir or Path(tempfile.mkdtemp(prefix="paris-logs-")))
    times["experts"] = time.time() - t
    progress = [store.get_json(f"{expert_prefix(cfg.model, k)}/progress.json") for k in range(cfg.data.clusters)]

    t = time.time()
    router_result, router_acc = train_router(cfg, store)
    times["router"] = time.time() - t

    t = time.time()
    pipe = build_pipeline(cfg, store)
    pipeline_uri = publish_pipeline(pipe, store, cfg.model)
    pipe.set_progress_bar_config(disable=True)
    scores = sample_and_score(cfg, store, pipe)
    times["sample+eval"] = time.time() - t
    times["total"] = time.time() - t0

    curves = {}
    for k in range(cfg.data.clusters):
        ckpt = store.get_json(f"{expert_prefix(cfg.model, k)}/latest.json")
        state = store.get_json(f"{ckpt['prefix']}/state.json")
        curves[f"expert {k}"] = [tuple(h) for h in state["history"]]
    save_loss_plot(store, f"{model_prefix(cfg.model)}/loss.png", curves)

    summary = {
        "model": cfg.model,
        "clusters": [
            {"id": c["id"], "size": c["size"], "label_histogram": c.get("label_histogram")}
            for c in manifest["clusters"]
        ],
        "experts": [
            {"cluster": p["cluster"], "loss": p["loss"], "steps": p["step"], "samples_per_s": p["samples_per_s"]}
            for p in progress
        ],
        "router": {"loss": router_result.loss, "held_out_accuracy": router_acc},
        "eval": scores,
        "pipeline": pipeline_uri,
        "seconds": {k: round(v, 1) for k, v in times.items()},
    }
    store.put_json(f"{model_prefix(cfg.model)}/summary.json", summary)
    print_summary(summary, store, cfg)
    return summary


def print_summary(s: dict[str, Any], store: Store, cfg: RunConfig) -> None:
    t = Table(title="clusters and experts")
    for col in ("cluster", "images", "digits in it (0-9)", "final loss", "samples/s"):
        t.add_column(col)
    for c, e in zip(s["clusters"], s["experts"], strict=True):
        hist = " ".join(str(h) for h in c["label_histogram"]) if c["label_histogram"] else "-"
        t.add_row(str(c["id"]), str(c["size"]), hist, f"{e['loss']:.4f}", str(e["samples_per_s"]))
    console.print(t)
    acc = s["router"]["held_out_accuracy"]
    if acc:
        r = Table(title="router held-out accuracy by noise level t")
        for row in acc:
            r.add_column(f"<{row['t_hi']:.1f}")
        r.add_row(*(f"{row['accuracy']:.2f}" for row in acc))
        console.print(r)
    e = Table(title="samples by routing mode")
    for col in ("routing", "judge accuracy", "Fréchet (judge features)", "expert usage", "grid"):
        e.add_column(col)
    for mode, row in s["eval"]["modes"].items():
        e.add_row(
            mode,
            f"{row['accuracy']:.3f}" if "accuracy" in row else "-",
            f"{row['frechet']:.2f}" if "frechet" in row else "-",
            " ".join(f"{u:.2f}" for u in row["usage"]),
            row["grid"],
        )
    console.print(e)
    secs = s["seconds"]
    console.print("wall time: " + ", ".join(f"{k} {v:.0f}s" for k, v in secs.items()))
    console.print(f"summary: {store.uri(f'{model_prefix(cfg.model)}/summary.json')}")
