"""The `paris` command. Every subcommand takes the same YAML config (or $PARIS_CONFIG)."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from paris.config import DEFAULT_ROUTING, RunConfig, describe_errors, load_config, parse_routing, sample_overrides
from paris.errors import ParisError, Preempted
from paris.progress import console
from paris.storage import Store, open_store

app = typer.Typer(
    help="Train text-to-image diffusion the Paris way: clusters, isolated experts, a router.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Prepare datasets: encode, cluster, shard.", no_args_is_help=True)
train_app = typer.Typer(help="Train one expert or the router.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")

ConfigArg = Annotated[
    Path | None,
    typer.Argument(
        help="YAML config (see examples/digits.yaml); default: YAML text in $PARIS_CONFIG", show_default=False
    ),
]


def _load(config: Path | None) -> tuple[RunConfig, Store]:
    cfg = load_config(config)
    return cfg, open_store(cfg.storage)


@data_app.command("prepare")
def data_prepare(
    config: ConfigArg = None,
    workers: Annotated[int, typer.Option(min=1, help="Local processes running the work units")] = 1,
) -> None:
    """Encode images and captions, cluster with two-stage k-means, write per-cluster shards."""
    from paris.data.prepare import prepare_dataset

    cfg, store = _load(config)
    manifest = prepare_dataset(cfg.data, store, workers)
    for c in manifest["clusters"]:
        console.print(f"cluster {c['id']}: {c['size']} images")


@data_app.command("add")
def data_add(
    config: ConfigArg = None,
    source: Annotated[str, typer.Option(help="digits, folder or webdataset")] = "digits",
    path: Annotated[str | None, typer.Option(help="folder: a dir with captions.jsonl; webdataset: tars")] = None,
    label: Annotated[list[int] | None, typer.Option("--label", help="digits: a digit to add; repeat")] = None,
) -> None:
    """Add new data to the prepared dataset as one new cluster, encoded with its encoders.

    The old clusters are untouched, so their experts stay valid; train the new cluster's
    expert alone (`paris train expert --cluster K`), then grow the router by one class
    (`paris train router --grow-from PREFIX`)."""
    from paris.config import DataConfig
    from paris.data.add import add_cluster

    cfg, store = _load(config)
    try:
        new = DataConfig.model_validate({**cfg.data.model_dump(), "source": source, "path": path, "labels": label,
                                         "limit": None})
    except ValidationError as err:
        raise ParisError(f"command-line option: {describe_errors(err, root='data')}") from None
    manifest = add_cluster(cfg.data, new, store)
    console.print(f"dataset {cfg.data.name!r} now has {manifest['num_clusters']} clusters")


@data_app.command("work")
def data_work(
    stage: Annotated[str, typer.Argument(help="features, cluster, encode or finalize")],
    config: ConfigArg = None,
    index: Annotated[
        int | None, typer.Option(min=0, envvar="JOB_COMPLETION_INDEX", help="Work unit (Indexed Job: automatic)")
    ] = None,
) -> None:
    """Run one work unit of a preparation: what each pod of a ParisDataset's Jobs runs."""
    from paris.data.work import run_unit

    cfg, store = _load(config)
    result = run_unit(cfg.data, store, stage, index)
    what = "already done" if result.get("reused") else "done"
    console.print(f"{stage}{'' if index is None else f' index {index}'}: {what}")


@train_app.command("expert")
def train_expert(
    config: ConfigArg = None,
    cluster: Annotated[int, typer.Option("--cluster", "-k", help="Which cluster's expert to train", min=0)] = 0,
    prefix: Annotated[
        str | None,
        typer.Option(help="Store prefix of its checkpoints (default: models/<model>/experts/<k>)"),
    ] = None,
) -> None:
    """Train one expert on its cluster only. Re-running resumes from the last checkpoint."""
    from paris.trainer.expert import train_expert as run_expert

    cfg, store = _load(config)
    result = run_expert(cfg, cluster, store, _prefix(prefix))
    console.print(f"expert {cluster}: step {result.step}, loss {result.loss:.4f}")


def _prefix(value: str | None, option: str = "--prefix") -> str | None:
    if value is None:
        return None
    cleaned = value.strip().strip("/")
    if not cleaned or ".." in cleaned.split("/"):
        raise ParisError(f"{option} {value!r}: expected a store prefix such as models/<model>/experts/0")
    return cleaned


def parse_experts(values: list[str] | None, model: str) -> dict[int, str] | None:
    """`--expert K` or `--expert K=PREFIX` (repeated) -> {cluster: store prefix of its expert}."""
    from paris.layout import expert_prefix

    if not values:
        return None
    out: dict[int, str] = {}
    for v in values:
        k, _, prefix = v.partition("=")
        if not k.strip().isdigit():
            raise ParisError(f"--expert {v!r}: expected CLUSTER or CLUSTER=PREFIX, e.g. 3=models/{model}/experts/3")
        if int(k) in out:
            raise ParisError(f"--expert: cluster {int(k)} given twice")
        out[int(k)] = prefix.strip().strip("/") or expert_prefix(model, int(k))
    return out


@train_app.command("router")
def train_router(
    config: ConfigArg = None,
    publish: Annotated[bool, typer.Option(help="Also assemble the pipeline from the experts")] = True,
    expert: Annotated[
        list[str] | None,
        typer.Option(
            "--expert",
            help="Route over this expert only: CLUSTER or CLUSTER=PREFIX (its store prefix); repeat for "
            "each. Default: every cluster's expert",
        ),
    ] = None,
    prefix: Annotated[
        str | None, typer.Option(help="Store prefix of the router's checkpoints (default: models/<model>/router)")
    ] = None,
    grow_from: Annotated[
        str | None,
        typer.Option(
            help="Prefix of a trained router over some of these experts: grow its head by the new ones and "
            "fine-tune it (router.grow_steps) instead of training from scratch"
        ),
    ] = None,
) -> None:
    """Train the router over the experts' clusters; report held-out accuracy per noise level.
    The pipeline is published into a version folder of its own, then made the served one."""
    from paris.router.assemble import publish_ensemble
    from paris.router.train import train_router as run_router

    cfg, store = _load(config)
    experts = parse_experts(expert, cfg.model)
    result, _ = run_router(cfg, store, experts, _prefix(prefix), _prefix(grow_from, "--grow-from"))
    console.print(f"router: step {result.step}, loss {result.loss:.4f}")
    if publish and result.main:  # under torchrun, rank 0 alone publishes
        uri = publish_ensemble(cfg, store, experts, _prefix(prefix))
        console.print(f"pipeline: {uri}")


@app.command()
def generate(
    config: ConfigArg = None,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", "-p", help="Repeat for several")] = None,
    routing: Annotated[str, typer.Option(help="top1, top2, topk:K or full")] = DEFAULT_ROUTING,
    steps: Annotated[int | None, typer.Option(help="Sampling steps (default: sample.steps)")] = None,
    guidance: Annotated[float | None, typer.Option(help="CFG scale (default: sample.guidance)")] = None,
    seed: Annotated[int | None, typer.Option(help="Default: sample.seed")] = None,
    count: Annotated[int | None, typer.Option(help="Images per prompt (default: sample.per_prompt)")] = None,
    out: Annotated[Path, typer.Option(help="Output folder for PNGs and grid.png")] = Path("samples"),
) -> None:
    """Sample images with the routed experts and write PNGs plus a grid.

    Without --prompt: sample.prompts, else (digits) one prompt per digit, else held-out captions.
    Bounds of every option are those of the config's `sample` section."""
    from paris.data.encoders import tensor_to_images
    from paris.data.shards import load_manifest
    from paris.evaluate import digit_prompts
    from paris.router.assemble import load_pipeline
    from paris.router.generate import default_prompts, grid_png, sample_prompts

    try:
        parse_routing(routing)
    except ValueError as err:
        raise ParisError(str(err)) from None
    cfg, store = _load(config)
    over = {"steps": steps, "guidance": guidance, "seed": seed, "per_prompt": count}
    s = sample_overrides(cfg.sample, {k: v for k, v in over.items() if v is not None}, "command-line option")
    prompts = prompt or cfg.sample.prompts
    if not prompts:
        if cfg.data.source == "digits":
            prompts = [p for p, _ in digit_prompts()]
        else:
            prompts = default_prompts(store, load_manifest(store, cfg.data.name), s.seed)
    with tempfile.TemporaryDirectory() as tmp:
        pipe = load_pipeline(store, cfg.model, Path(tmp))
        samples = sample_prompts(pipe, prompts, routing, s)
    out.mkdir(parents=True, exist_ok=True)
    n = s.per_prompt
    for i, im in enumerate(tensor_to_images(samples.images)):
        im.save(out / f"{i // n:03d}-{i % n:02d}.png")
    (out / "grid.png").write_bytes(grid_png(samples.images, cols=n))
    console.print(
        f"wrote {len(samples.images)} images and {out / 'grid.png'}; expert usage "
        + " ".join(f"{u:.2f}" for u in samples.usage)
    )


@app.command("eval")
def evaluate(config: ConfigArg = None) -> None:
    """Score samples of every routing mode with a judge trained on held-out real images of known class
    (digits, a folder with labels): prompted-class accuracy and Fréchet distance."""
    from paris.layout import model_prefix
    from paris.router.assemble import load_pipeline
    from paris.router.generate import sample_and_score

    cfg, store = _load(config)
    with tempfile.TemporaryDirectory() as tmp:
        pipe = load_pipeline(store, cfg.model, Path(tmp))
        pipe.set_progress_bar_config(disable=True)
        scores = sample_and_score(cfg, store, pipe)
    store.put_json(f"{model_prefix(cfg.model)}/eval.json", scores)
    if scores["router_accuracy"]:
        console.print(
            "router accuracy by noise: "
            + " ".join(f"{r['t_hi']:.1f}:{r['accuracy']:.2f}" for r in scores["router_accuracy"])
        )
    for mode, row in scores["modes"].items():
        console.print(
            f"{mode}: accuracy {row.get('accuracy', float('nan')):.3f} "
            f"Fréchet {row.get('frechet', float('nan')):.2f} usage " + " ".join(f"{u:.2f}" for u in row["usage"])
        )


@app.command()
def run(
    config: ConfigArg = None,
    logs: Annotated[Path | None, typer.Option(help="Folder for the experts' logs")] = None,
) -> None:
    """Everything on this machine: partition, one process per expert, router, samples, scores."""
    from paris.run import run as run_all

    cfg, store = _load(config)
    run_all(cfg, store, logs or Path("runs") / "logs" / cfg.model)


@app.command()
def study(
    config: ConfigArg = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="study.quick of the training steps, one seed, one image per prompt")
    ] = False,
    seeds: Annotated[int | None, typer.Option(min=1, max=20, help="Training seeds (default: study.seeds)")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Report folder (default: docs/results/<data.name>; --quick: runs/study/…)")
    ] = None,
    logs: Annotated[Path | None, typer.Option(help="Folder for the training processes' logs")] = None,
) -> None:
    """Ensemble against monolith at equal training FLOPs: K experts + router against one model
    on all the data, over seeds; router ablation (text-blind); a compute curve. Writes a
    markdown table, plots and sample grids; the trained pipelines stay in the store."""
    from paris.study import command_line, run_study

    cfg, store = _load(config)
    folder = out or (Path("runs") / "study" / cfg.data.name if quick else Path("docs") / "results" / cfg.data.name)
    run_study(cfg, store, folder, quick=quick, seeds=seeds, command=command_line(), log_dir=logs)


@app.command()
def serve(
    config: ConfigArg = None,
    port: Annotated[int, typer.Option(envvar="PORT", min=1, max=65535, help="Listen port (env PORT)")] = 8000,
    host: Annotated[str, typer.Option(help="Listen address")] = "0.0.0.0",
) -> None:
    """Serve the published pipeline: the OpenAI images API, /v1/generate, a playground page at /, probes, metrics."""
    from paris.router.server import serve as run_server

    cfg = load_config(config)
    run_server(cfg, host, port)


def main() -> None:
    # Hub download bars would drown our own progress output. Library warnings stay visible:
    # loading is quiet because the checkpoints are clean (tests/unit/test_console.py).
    for var, value in (
        ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
        ("HF_HUB_OFFLINE", "1"),
    ):
        os.environ.setdefault(var, value)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except ParisError as err:
        # soft_wrap: one line, whatever the terminal width, so logs and tests see one line.
        console.print(f"[bold red]error:[/] {err}", soft_wrap=True, markup=True, highlight=False)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
    except Preempted as stop:  # SIGTERM: its checkpoint is written; the next pod resumes there
        console.print(str(stop), soft_wrap=True, markup=False, highlight=False)
        sys.exit(stop.exit_code)


if __name__ == "__main__":
    main()
