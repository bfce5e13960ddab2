"""`paris run`: the whole Paris recipe on one machine.

Experts and the router train in separate OS processes that share nothing but files in the
store, exactly as they would on separate machines; this process only starts them and
watches their `progress.json`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table

from paris.config import RunConfig
from paris.devices import cpu_threads
from paris.errors import ParisError
from paris.layout import dataset_prefix, expert_prefix, model_prefix, router_prefix
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


Procs = dict[str, "subprocess.Popen[bytes]"]


@dataclass(frozen=True)
class Job:
    """One training process: an expert, or the router (which needs the data, not the experts)."""

    name: str  # "expert 3", "router"
    argv: list[str]
    prefix: str  # where its progress.json appears
    total: int
    env: dict[str, str] | None = None  # over the common environment (`paris study`: each job's own config)
    beside: bool = False  # runs beside the `parallel` slots instead of taking one (the router)


def jobs(cfg: RunConfig) -> list[Job]:
    train = [sys.executable, "-m", "paris", "train"]
    out = [
        Job(f"expert {k}", [*train, "expert", "--cluster", str(k)], expert_prefix(cfg.model, k), cfg.train.steps)
        for k in range(cfg.data.clusters)
    ]
    # The router trains on the data alone: it starts with the first experts instead of after
    # the last one (see train_models).
    router = Job(
        "router", [*train, "router", "--no-publish"], router_prefix(cfg.model), cfg.router.train.steps, beside=True
    )
    return [router, *out]


def process_state(name: str, procs: Procs) -> str:
    """queued (not started), running, done, or `exit N` for a failed process."""
    if name not in procs:
        return "queued"
    rc = procs[name].poll()
    return "running" if rc is None else "done" if rc == 0 else f"exit {rc}"


def _progress_table(todo: list[Job], progress: dict[str, dict[str, Any]], procs: Procs) -> Table:
    table = Table(title="experts and router (one process each)")
    for col in ("job", "state", "progress", "step", "loss", "samples/s"):
        table.add_column(col)
    for job in todo:
        p = progress[job.name]
        loss = p.get("loss")
        table.add_row(
            job.name,
            process_state(job.name, procs),
            ProgressBar(total=p.get("total", job.total), completed=p.get("step", 0), width=24),
            f"{p.get('step', 0)}/{p.get('total', job.total)}",
            f"{loss:.4f}" if isinstance(loss, float) else "-",
            str(p.get("samples_per_s", "-")),
        )
    return table


def progress_line(name: str, state: str, p: dict[str, Any], total: int) -> str:
    loss = p.get("loss")
    return (
        f"{name}: {state}, step {p.get('step', 0)}/{p.get('total', total)}"
        + (f", loss {loss:.4f}" if isinstance(loss, float) else "")
        + (f", {p['samples_per_s']} samples/s" if p.get("samples_per_s") else "")
    )


def _milestone(name: str, procs: Procs, p: dict[str, Any], total: int) -> tuple[str, int]:
    """What a log line reports a change of: the state, and progress in tenths."""
    return process_state(name, procs), int(10 * p.get("step", 0) / max(1, p.get("total", total)))


def visible_gpus() -> list[str]:
    """The CUDA devices this process may hand out, as CUDA_VISIBLE_DEVICES spells them."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed:
        return [d.strip() for d in listed.split(",") if d.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


class GpuPool:
    """Hands each running job a GPU of its own (CUDA_VISIBLE_DEVICES) and takes it back when
    the job ends. With one GPU or none, nothing is pinned."""

    def __init__(self, gpus: list[str]) -> None:
        self.free = list(gpus) if len(gpus) > 1 else []
        self.held: dict[str, str] = {}

    def env_for(self, name: str) -> dict[str, str]:
        if not self.free:
            return {}
        self.held[name] = self.free.pop(0)
        return {"CUDA_VISIBLE_DEVICES": self.held[name]}

    def release(self, name: str) -> None:
        if name in self.held:
            self.free.append(self.held.pop(name))


def job_threads(cfg: RunConfig) -> int:
    """CPU threads per process: the cores shared by the `parallel` training processes. The
    sampling stage after them gets the same share (see paris.devices.cpu_threads)."""
    return cfg.train.threads or max(1, (os.cpu_count() or 1) // cfg.parallel)


def train_models(cfg: RunConfig, store: Store, log_dir: Path) -> None:
    """Run every expert and the router in its own process, `cfg.parallel` at a time.

    With several GPUs each process gets one of its own (CUDA_VISIBLE_DEVICES), instead of
    every process landing on GPU 0. On a terminal a live table; in logs (CI, `kubectl
    logs`) one line per job whenever its state changes or it passes another tenth of its steps."""
    run_jobs(jobs(cfg), store, log_dir, cfg.parallel, {**os.environ, **config_env(cfg, job_threads(cfg))})


def config_env(cfg: RunConfig, threads: int) -> dict[str, str]:
    """The environment that hands a child process `cfg` (PARIS_CONFIG), with `threads` for its
    training and its router's wherever the config leaves them unset."""
    child = cfg.model_copy(deep=True)
    child.train.threads = child.train.threads or threads
    child.router.train.threads = child.router.train.threads or threads
    return {"PARIS_CONFIG": yaml.safe_dump(child.model_dump(mode="json"))}


def run_jobs(todo: list[Job], store: Store, log_dir: Path, parallel: int, env: dict[str, str]) -> None:
    """Run the jobs as processes, `parallel` at a time (a `beside` job takes no slot), in
    order; the first failure stops the others and raises naming its log."""
    gpus = GpuPool(visible_gpus())
    log_dir.mkdir(parents=True, exist_ok=True)
    procs: Procs = {}
    logs = {}
    log_of = {job.name: log_dir / f"{job.name.replace(' ', '-')}.log" for job in todo}
    pending = list(todo)
    reported: dict[str, tuple[str, int]] = {}
    beside = {job.name for job in todo if job.beside}

    def poll_progress() -> dict[str, dict[str, Any]]:
        return {job.name: store.get_json_or_none(f"{job.prefix}/progress.json") or {} for job in todo}

    def report(progress: dict[str, dict[str, Any]]) -> None:
        for job in todo:
            p = progress[job.name]
            now = _milestone(job.name, procs, p, job.total)
            if job.name in procs and reported.get(job.name) != now:
                console.print(progress_line(job.name, now[0], p, job.total))
                reported[job.name] = now

    def show(live: Any) -> None:
        progress = poll_progress()
        if interactive():
            live.update(_progress_table(todo, progress, procs))
        else:
            report(progress)

    live_ctx = (
        Live(_progress_table(todo, poll_progress(), procs), console=console, refresh_per_second=1, transient=False)
        if interactive()
        else _NoLive()
    )
    with live_ctx as live:
        while pending or any(process_state(n, procs) == "running" for n in procs):
            for name in [n for n in gpus.held if process_state(n, procs) != "running"]:
                gpus.release(name)
            # The router runs beside the `parallel` experts, one process more: 5 jobs in 2 slots
            # left a core idle for the last one's whole run (the router, ran alone after the
            # experts); 3 processes on 2 cores keep both busy until the end.
            running = sum(process_state(n, procs) == "running" and n not in beside for n in procs)
            while pending and (running < parallel or pending[0].beside):
                job = pending.pop(0)
                job_env = {**env, **(job.env or {}), **gpus.env_for(job.name)}  # several GPUs: one of its own
                logs[job.name] = open(log_of[job.name], "wb")  # noqa: SIM115 (closed below)
                procs[job.name] = subprocess.Popen(
                    job.argv, env=job_env, stdout=logs[job.name], stderr=subprocess.STDOUT, start_new_session=True
                )
                running += not job.beside
            failed = [n for n in procs if process_state(n, procs).startswith("exit")]
            if failed:
                for p in procs.values():
                    if p.poll() is None:
                        p.terminate()
                name = failed[0]
                log = log_of[name]
                tail = log.read_text(errors="replace").strip().splitlines()[-1:]
                raise ParisError(f"{name} failed ({tail[0] if tail else 'no output'}); log: {log}")
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

    times: dict[str, float] = {}
    t0 = time.time()
    manifest = ensure_dataset(cfg, store)
    times["prepare"] = time.time() - t0

    t = time.time()
    train_models(cfg, store, log_dir or Path(tempfile.mkdtemp(prefix="paris-logs-")))
    times["experts+router"] = time.time() - t
    progress = [store.get_json(f"{expert_prefix(cfg.model, k)}/progress.json") for k in range(cfg.data.clusters)]
    router_progress = store.get_json(f"{router_prefix(cfg.model)}/progress.json")
    router_acc = (store.get_json_or_none(f"{router_prefix(cfg.model)}/accuracy.json") or {}).get("held_out", [])

    t = time.time()
    pipe = build_pipeline(cfg, store)
    pipeline_uri = publish_pipeline(pipe, store, cfg.model)
    pipe.set_progress_bar_config(disable=True)
    with cpu_threads(job_threads(cfg)):
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
        "router": {"loss": router_progress["loss"], "held_out_accuracy": router_acc},
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
