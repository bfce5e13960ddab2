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


Procs = dict[int, "subprocess.Popen[bytes]"]


def process_state(k: int, procs: Procs) -> str:
    """queued (not started), running, done, or `exit N` for a failed expert process."""
    if k not in procs:
        return "queued"
    rc = procs[k].poll()
    return "running" if rc is None else "done" if rc == 0 else f"exit {rc}"


def _progress_table(cfg: RunConfig, progress: dict[int, dict[str, Any]], procs: Procs) -> Table:
    table = Table(title="experts (one process each)")
    for col in ("cluster", "state", "progress", "step", "loss", "samples/s"):
        table.add_column(col)
    for k in range(cfg.data.clusters):
        p = progress[k]
        loss = p.get("loss")
        table.add_row(
            str(k),
            process_state(k, procs),
            ProgressBar(total=p.get("total", cfg.train.steps), completed=p.get("step", 0), width=24),
            f"{p.get('step', 0)}/{p.get('total', cfg.train.steps)}",
            f"{loss:.4f}" if isinstance(loss, float) else "-",
            str(p.get("samples_per_s", "-")),
        )
    return table


def progress_line(k: int, state: str, p: dict[str, Any], total: int) -> str:
    loss = p.get("loss")
    return (
        f"expert {k}: {state}, step {p.get('step', 0)}/{p.get('total', total)}"
        + (f", loss {loss:.4f}" if isinstance(loss, float) else "")
        + (f", {p['samples_per_s']} samples/s" if p.get("samples_per_s") else "")
    )


def _milestone(k: int, procs: Procs, p: dict[str, Any], total: int) -> tuple[str, int]:
    """What a log line reports a change of: the state, and progress in tenths."""
    return process_state(k, procs), int(10 * p.get("step", 0) / max(1, p.get("total", total)))


def train_experts(cfg: RunConfig, store: Store, log_dir: Path) -> None:
    """Run every expert in its own process, `cfg.parallel` at a time.

    On a terminal a live table; in logs (CI, `kubectl logs`) one line per expert whenever its
    state changes or it passes another tenth of its steps."""
    threads = cfg.train.threads or max(1, (os.cpu_count() or 1) // cfg.parallel)
    child = cfg.model_copy(deep=True)
    child.train.threads = threads
    env = {**os.environ, "PARIS_CONFIG": yaml.safe_dump(child.model_dump(mode="json"))}
    log_dir.mkdir(parents=True, exist_ok=True)
    procs: Procs = {}
    logs = {}
    pending = list(range(cfg.data.clusters))
    reported: dict[int, tuple[str, int]] = {}
    total = cfg.train.steps

    def poll_progress() -> dict[int, dict[str, Any]]:
        return {
            k: store.get_json_or_none(f"{expert_prefix(cfg.model, k)}/progress.json") or {}
            for k in range(cfg.data.clusters)
        }

    def report(progress: dict[int, dict[str, Any]]) -> None:
        for k, p in progress.items():
            now = _milestone(k, procs, p, total)
            if k in procs and reported.get(k) != now:
                console.print(progress_line(k, now[0], p, total))
                reported[k] = now

    def show(live: Any) -> None:
        progress = poll_progress()
        if interactive():
            live.update(_progress_table(cfg, progress, procs))
        else:
            report(progress)

    live_ctx = (
        Live(_progress_table(cfg, poll_progress(), procs), console=console, refresh_per_second=1, transient=False)
        if interactive()
        else _NoLive()
    )
    with live_ctx as live:
        while pending or any(process_state(k, procs) == "running" for k in procs):
            running = sum(process_state(k, procs) == "running" for k in procs)
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
            failed = [k for k in procs if process_state(k, procs).startswith("exit")]
            if failed:
                for p in procs.values():
                    if p.poll() is None:
                        p.terminate()
                k = failed[0]
                tail = (log_dir / f"expert-{k}.log").read_text(errors="replace").strip().splitlines()[-1:]
                raise ParisError(
                    f"expert {k} failed ({tail[0] if tail else 'no output'}); log: {log_dir / f'expert-{k}.log'}"
                )
            show(live)
            time.sleep(1.0)
        show(live)
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
