"""`paris data prepare`: the work units of paris.data.work, run on this machine.

With one worker the units run in this process, one after the other. With N workers each
indexed stage runs in a pool of N processes (each loads its encoders once); a unit that
fails is retried alone, and units whose output is already published are skipped, so a
preparation that was interrupted resumes where it stopped. The dataset manifest is
written last: until it exists the dataset is invisible.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from paris.config import DataConfig
from paris.data.encoders import Encoders
from paris.data.work import done_key, fingerprint, make_plan, run_finalize, run_unit
from paris.errors import DataError, ParisError
from paris.layout import dataset_prefix
from paris.progress import console, status
from paris.storage import Store

RETRIES = 2  # a unit that crashed (not a user error) runs again at most this many times

_encoders: dict[str, Encoders] = {}  # per worker process: encoders are loaded once


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _worker_unit(cfg: DataConfig, store: Store, stage: str, index: int) -> dict[str, Any]:
    enc = _encoders.get(fingerprint(cfg)) or _encoders.setdefault(fingerprint(cfg), Encoders(cfg, store))
    return run_unit(cfg, store, stage, index, enc)


def _summary(stage: str, index: int, result: dict[str, Any], total: int) -> str:
    what = "already done" if result.get("reused") else f"{result.get('samples', 0)} samples"
    return f"{stage}: index {index + 1}/{total} {what}"


class _Workers:
    """A pool of worker processes kept across stages (each loads its encoders once), made
    again if a worker dies (the pool is then broken for every pending unit)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.threads = max(1, (os.cpu_count() or 1) // workers)
        self.pool: ProcessPoolExecutor | None = None

    def get(self) -> ProcessPoolExecutor:
        if self.pool is None:
            ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
            self.pool = ProcessPoolExecutor(
                self.workers, mp_context=ctx, initializer=_worker_init, initargs=(self.threads,)
            )
        return self.pool

    def reset(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        self.pool = None


def run_stage(cfg: DataConfig, store: Store, stage: str, indexes: int, workers: _Workers | None, enc: Encoders) -> None:
    todo = [i for i in range(indexes) if not store.exists(done_key(cfg.name, stage, i))]
    if len(todo) < indexes:
        console.print(f"{stage}: {indexes - len(todo)}/{indexes} indexes already done")
    if workers is None or len(todo) <= 1:
        for i in todo:
            console.print(_summary(stage, i, run_unit(cfg, store, stage, i, enc), indexes))
        return
    attempts: Counter[int] = Counter()
    while todo:
        retry: list[int] = []
        pool = workers.get()
        running: dict[Future[dict[str, Any]], int] = {pool.submit(_worker_unit, cfg, store, stage, i): i for i in todo}
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                i = running.pop(fut)
                try:
                    console.print(_summary(stage, i, fut.result(), indexes))
                except ParisError:
                    workers.reset()
                    raise
                except Exception as err:  # a crash, or a killed worker: retry this index alone
                    attempts[i] += 1
                    if attempts[i] > RETRIES:
                        workers.reset()
                        raise DataError(f"{stage} index {i} failed {attempts[i]} times: {err!r}") from err
                    console.print(f"{stage}: index {i} failed ({err!r}); retrying it")
                    retry.append(i)
        if retry:
            workers.reset()  # a dead worker breaks the pool: start a fresh one for the retries
        todo = sorted(set(retry))


def prepare_dataset(cfg: DataConfig, store: Store, workers: int = 1) -> dict[str, Any]:
    t0 = time.time()
    existing = store.get_json_or_none(done_key(cfg.name, "finalize"))
    if existing is not None and existing.get("fingerprint") == fingerprint(cfg):
        console.print(f"dataset {cfg.name!r} already prepared with this config: reusing it")
        return dict(existing)
    with status(f"listing the {cfg.source} input"):
        plan = make_plan(cfg, store, reset=True)
    n = plan.indexes
    console.print(f"preparing {cfg.name!r}: {len(plan.parts)} input parts in {n} indexes, {workers} worker(s)")
    enc = Encoders(cfg, store)  # loads each model on first use only: the cluster unit loads none
    pool = _Workers(workers) if workers > 1 and n > 1 else None
    try:
        run_stage(cfg, store, "features", n, pool, enc)
        with status(f"two-stage k-means: {cfg.fine_clusters} fine centroids -> K={cfg.clusters}"):
            fit = run_unit(cfg, store, "cluster", None)
        if not fit.get("reused"):
            console.print(f"cluster: fitted on {fit['sample']} of {fit['training_samples']} training samples")
        run_stage(cfg, store, "encode", n, pool, enc)
    finally:
        if pool is not None:
            pool.reset()
    manifest = run_finalize(cfg, store, time.time() - t0)
    sizes = ", ".join(str(c["size"]) for c in manifest["clusters"])
    console.print(
        f"prepared {manifest['num_samples']} samples into {cfg.clusters} clusters ({sizes}; "
        f"held out {manifest['holdout']['size']}) at {store.uri(dataset_prefix(cfg.name))}"
    )
    return manifest
