"""`paris study`: the decentralized ensemble against a monolith at equal training compute.

Paris's claim is that K experts trained in isolation, mixed by a router, match one model
trained on all the data with the same compute. On one prepared dataset and its one-cluster
twin (`<data>-k1`: the same images, captions and held-out split), for each training seed:

- (b) K experts and the caption-aware router, trained as `paris run` trains them;
- (a) one expert of the same architecture on all the data (the monolith), trained for as
  many steps as make its FLOPs equal the experts' plus the router's. FLOPs are counted by
  torch's FlopCounterMode on one real training step of each model, times its steps;
- the paper's text-blind router `(x_t, t)` over the same experts (the router ablation, not
  counted in the budget: it is an alternative to the caption-aware router, not an addition).

Every pipeline is published in the store under a name that says what it is
(`<model>-study-s0-ensemble`, `-monolith`, `-textblind`; `-b25-` for the compute curve at
25 % of the steps), sampled with the same prompts and noise in every routing mode, and scored
by one judge trained on the held-out real images (paris.evaluate). The report (markdown
table, plots, side-by-side grids, results.json) goes to a folder, e.g. docs/results/emoji.

Every training run is an ordinary `paris train expert|router` process (paris.run.run_jobs),
`parallel` at a time; a phase whose results are already in the store is not redone.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import statistics
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from paris.config import RunConfig
from paris.errors import ParisError
from paris.layout import expert_prefix, model_prefix, router_prefix, samples_prefix
from paris.progress import console
from paris.storage import Store

MONOLITH_ROUTING = "top1"  # one expert: every routing mode is the same model


@dataclass(frozen=True)
class Phase:
    """One training seed at one compute budget: an ensemble, a monolith, maybe a text-blind router."""

    tag: str  # s0, s1, ... (main comparison); b25, b50, ... (compute curve, seed 0)
    seed: int
    scale: float  # fraction of train.steps and router.train.steps
    text_blind: bool


def phases(cfg: RunConfig, seeds: int, scale: float) -> list[Phase]:
    """The main comparison's seeds first, then the compute curve's other budgets (seed 0):
    the report is rewritten after each phase, so a study cut short still reports its seeds."""
    out = [Phase(f"s{s}", s, scale, cfg.study.text_blind_router) for s in range(seeds)]
    out += [Phase(f"b{round(100 * b)}", 0, scale * b, False) for b in sorted(set(cfg.study.budgets)) if b != 1.0]
    return out


def steps_at(steps: int, scale: float) -> int:
    return max(1, round(steps * scale))


def monolith_data(cfg: RunConfig) -> RunConfig:
    """The same data as one cluster: same images, captions, encoders and held-out split
    (the split is a hash of each sample's key, not of the clustering)."""
    data = cfg.data.model_copy(update={"name": f"{cfg.data.name}-k1", "clusters": 1, "fine_clusters": 1})
    return cfg.model_copy(update={"data": data}, deep=True)


def names(base: str, tag: str) -> dict[str, str]:
    return {v: f"{base}-{tag}-{v}" for v in ("ensemble", "monolith", "textblind")}


def variant_configs(cfg: RunConfig, base: str, phase: Phase, mono_steps: int) -> dict[str, RunConfig]:
    """The configs of the phase's models: each trains with the phase's seed and steps and
    checkpoints once, at its end."""
    n = names(base, phase.tag)
    steps, rsteps = steps_at(cfg.train.steps, phase.scale), steps_at(cfg.router.train.steps, phase.scale)

    def make(src: RunConfig, model: str, steps: int, rsteps: int, text: bool, routing: list[str]) -> RunConfig:
        c = src.model_copy(deep=True)
        c.model = model
        c.train = c.train.model_copy(update={"steps": steps, "checkpoint_every": steps, "seed": phase.seed})
        rt = c.router.train.model_copy(update={"steps": rsteps, "checkpoint_every": rsteps, "seed": phase.seed})
        rm = c.router.model.model_copy(update={"condition_on_text": text})
        c.router = c.router.model_copy(update={"train": rt, "model": rm})
        c.sample = c.sample.model_copy(update={"seed": phase.seed, "routing": routing})
        return c

    # The ensemble's router is the caption-aware one, p(k | x_t, t, c), whatever the config says:
    # the text-blind one is the ablation.
    out = {
        "ensemble": make(cfg, n["ensemble"], steps, rsteps, True, list(cfg.sample.routing)),
        # The one-class router of the monolith is the identity whatever its weights: one step.
        "monolith": make(monolith_data(cfg), n["monolith"], mono_steps, 1, True, [MONOLITH_ROUTING]),
    }
    if phase.text_blind:
        out["textblind"] = make(cfg, n["textblind"], steps, rsteps, False, list(cfg.sample.routing))
    return out


# --------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------


def step_flops(cfg: RunConfig, store: Store) -> dict[str, int]:
    """FLOPs of one real training step (forward and backward, counted by torch) of each
    expert (`expert k`) and of the router (`router`), on a batch of their own data."""
    import torch

    from paris.data.shards import ShardSet, load_manifest, load_null_text, load_split
    from paris.data.stream import InMemory
    from paris.router.model import build_router
    from paris.router.objective import class_of, router_loss
    from paris.trainer.expert import expert_loss
    from paris.trainer.model import build_expert
    from paris.trainer.step import StepOptions, TrainStep, count_flops

    manifest = load_manifest(store, cfg.data.name)
    null = load_null_text(store, manifest)
    cpu = torch.device("cpu")
    # Eager fp32: the counter counts operators, which precision and compilation do not change.
    options = StepOptions.for_config(cfg.train, cpu, None).but(compile=False)
    k = manifest["num_clusters"]
    clusters = [load_split(store, manifest, i) for i in range(k)]
    out = {}
    for i, data in enumerate(clusters):
        model = build_expert(cfg.expert, manifest["latent"], manifest["text"]["dim"])
        step = TrainStep(model, cfg.train, cpu, options)
        loss = expert_loss(InMemory(data), *null, cfg.train)
        out[f"expert {i}"] = count_flops(partial(step, loss, 0))
    router = build_router(cfg.router.model, k, manifest["latent"], manifest["text"]["dim"], list(range(k)))
    rstep = TrainStep(router, cfg.router.train, cpu, options)
    rloss = router_loss(InMemory(ShardSet.concat(clusters)), null, cfg.router.train, class_of(list(range(k))))
    out["router"] = count_flops(lambda: rstep(rloss, 0))
    return out


def expert_steps(steps: int, sizes: list[int], how: str) -> list[int]:
    """Each expert's steps: `steps` each, or K x `steps` split in proportion to cluster sizes."""
    if how == "equal":
        return [steps] * len(sizes)
    return [max(1, round(steps * len(sizes) * n / sum(sizes))) for n in sizes]


def training_flops(per_step: Mapping[str, int], steps: list[int], router_steps: int) -> int:
    """Σ over experts of steps x FLOPs per step, plus the router's (`steps`: per expert, in order)."""
    return sum(f * (router_steps if name == "router" else steps[int(name.split()[-1])]) for name, f in per_step.items())


def equal_compute_steps(ensemble_flops: int, monolith_step: int) -> int:
    """The monolith's steps whose FLOPs come closest to the ensemble's."""
    return max(1, round(ensemble_flops / monolith_step))


# --------------------------------------------------------------------------------------
# Running one phase
# --------------------------------------------------------------------------------------


def training_jobs(configs: Mapping[str, RunConfig], threads: int, steps: list[int]) -> list[Any]:
    """Every process of a phase, longest first (the monolith), so two slots end together;
    `steps`: each ensemble expert's."""
    from paris.run import Job, config_env

    train = [sys.executable, "-m", "paris", "train"]
    out = []
    for variant, c in configs.items():
        env = config_env(c, threads)
        for k in range(c.data.clusters if variant != "textblind" else 0):  # textblind: the ensemble's experts
            n = steps[k] if variant == "ensemble" else c.train.steps
            ck = c.model_copy(update={"train": c.train.model_copy(update={"steps": n, "checkpoint_every": n})})
            out.append(Job(f"{c.model} expert {k}", [*train, "expert", "--cluster", str(k)], expert_prefix(c.model, k),
                           n, config_env(ck, threads)))
        out.append(Job(f"{c.model} router", [*train, "router", "--no-publish"], router_prefix(c.model),
                       c.router.train.steps, env))
    return sorted(out, key=lambda j: -j.total * (1 if "router" not in j.name else 0.1))


def evaluate_variant(cfg: RunConfig, store: Store, judge: Any, experts_of: str | None = None) -> dict[str, Any]:
    """Publish the variant's pipeline under its name, sample every routing mode, score."""
    from paris.router.assemble import build_pipeline, publish_pipeline
    from paris.router.generate import sample_and_score

    at = {k: expert_prefix(experts_of, k) for k in range(cfg.data.clusters)} if experts_of else None
    pipe = build_pipeline(cfg, store, at)
    uri = publish_pipeline(pipe, store, cfg.model, experts={str(k): p for k, p in (at or {}).items()} or None)
    pipe.set_progress_bar_config(disable=True)
    scores = sample_and_score(cfg, store, pipe, judge)
    scores["pipeline"] = uri
    return scores


def run_phase(
    cfg: RunConfig, store: Store, base: str, phase: Phase, flops: Mapping[str, Mapping[str, int]], judge: Any,
    log_dir: Path, sizes: list[int],
) -> dict[str, Any]:
    from paris.run import job_threads, run_jobs

    steps, rsteps = steps_at(cfg.train.steps, phase.scale), steps_at(cfg.router.train.steps, phase.scale)
    per_expert = expert_steps(steps, sizes, cfg.study.expert_steps)
    ens_flops = training_flops(flops["ensemble"], per_expert, rsteps)
    mono_step = flops["monolith"]["expert 0"]
    mono_steps = equal_compute_steps(ens_flops, mono_step)
    mono_flops = training_flops(flops["monolith"], [mono_steps], 1)
    configs = variant_configs(cfg, base, phase, mono_steps)
    settings: dict[str, Any] = {
        "steps": steps, "router_steps": rsteps, "monolith_steps": mono_steps, "seed": phase.seed
    }
    if cfg.study.expert_steps != "equal":
        settings["expert_steps"] = per_expert
    key = f"{model_prefix(base)}/phases/{phase.tag}.json"
    done = store.get_json_or_none(key)
    if done is not None and done.get("settings") == settings:
        console.print(f"study {phase.tag}: already done, reusing {store.uri(key)}")
        return dict(done)
    console.print(
        f"study {phase.tag}: experts of {'/'.join(map(str, per_expert))} steps + router {rsteps} steps "
        f"({ens_flops / 1e12:.2f} TFLOP) against a monolith of "
        f"{mono_steps} steps ({mono_flops / 1e12:.2f} TFLOP)"
    )
    t0 = time.time()
    todo = training_jobs(configs, job_threads(cfg), per_expert)
    run_jobs(todo, store, log_dir / phase.tag, cfg.parallel, dict(os.environ))
    trained = time.time() - t0
    results: dict[str, Any] = {}
    for variant, c in configs.items():
        console.print(f"study {phase.tag}: sampling {c.model}")
        experts_of = configs["ensemble"].model if variant == "textblind" else None
        results[variant] = evaluate_variant(c, store, judge, experts_of)
        results[variant]["model"] = c.model
    out = {
        "tag": phase.tag,
        "seed": phase.seed,
        "scale": phase.scale,
        "settings": settings,
        "flops": {"ensemble": ens_flops, "monolith": mono_flops, "per_step": {k: dict(v) for k, v in flops.items()}},
        "results": results,
        "seconds": {"train": round(trained, 1), "sample+eval": round(time.time() - t0 - trained, 1)},
    }
    store.put_json(key, out)
    return out


# --------------------------------------------------------------------------------------
# The whole study
# --------------------------------------------------------------------------------------


def study_scale(cfg: RunConfig, quick: bool) -> float:
    return cfg.study.quick if quick else 1.0


def run_study(
    cfg: RunConfig, store: Store, out: Path, quick: bool = False, seeds: int | None = None,
    command: str | None = None, log_dir: Path | None = None,
) -> dict[str, Any]:
    import torch

    from paris.data.shards import load_manifest
    from paris.router.generate import fit_judge
    from paris.run import ensure_dataset, job_threads

    if cfg.data.clusters < 2:
        raise ParisError("study: data.clusters must be at least 2 (the ensemble's experts)")
    t0 = time.time()
    seeds = seeds or (1 if quick else cfg.study.seeds)
    scale = study_scale(cfg, quick)
    if quick:  # sampling is most of a quick run's time: one image per prompt
        cfg = cfg.model_copy(update={"sample": cfg.sample.model_copy(update={"per_prompt": 1})})
    base = f"{cfg.model}-{'quick' if quick else 'study'}"
    mono = monolith_data(cfg)
    ensure_dataset(cfg, store)
    ensure_dataset(mono, store)
    flops = {"ensemble": step_flops(cfg, store), "monolith": step_flops(mono, store)}
    # Sampling runs here, one thread per slot's worth of cores: on a shared machine more OpenMP
    # threads than free cores made each routing mode's sampling ~10x slower (spin-waiting).
    torch.set_num_threads(job_threads(cfg))
    judge = fit_judge(cfg, store)
    console.print(f"judge: cross-validated accuracy {judge.cv_accuracy:.3f} on the held-out real images")
    prepared = time.time() - t0
    log_dir = log_dir or Path("runs") / "logs" / base
    done: list[dict[str, Any]] = []
    report: dict[str, Any] = {}
    clusters = [
        {"id": c["id"], "size": c["size"], "label_histogram": c.get("label_histogram")}
        for c in load_manifest(store, cfg.data.name)["clusters"]
    ]
    for phase in phases(cfg, seeds, scale):
        done.append(run_phase(cfg, store, base, phase, flops, judge, log_dir, [c["size"] for c in clusters]))
        report = summarize(done, cfg, base, judge.cv_accuracy, judge.classes, seeds, scale)
        report["clusters"] = clusters
        report["command"] = command or f"paris study {'--quick ' if quick else ''}CONFIG"
        report["seconds"] = {
            "prepare+flops+judge": round(prepared, 1),
            "phases": round(sum(sum(p["seconds"].values()) for p in done), 1),  # also those of an earlier run
            "this run": round(time.time() - t0, 1),
        }
        write_report(report, done, store, out)
    console.print(f"study report: {out / 'README.md'}")
    return report


# --------------------------------------------------------------------------------------
# Summary (pure) and report (files)
# --------------------------------------------------------------------------------------


def mean_spread(values: list[float]) -> dict[str, float]:
    clean = [v for v in values if v is not None and math.isfinite(v)]
    if not clean:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {
        "mean": statistics.fmean(clean),
        "std": statistics.stdev(clean) if len(clean) > 1 else 0.0,
        "n": len(clean),
    }


def method_rows(phase: Mapping[str, Any]) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """Every sampled method of a phase -> (its model, its routing mode, its scores):
    `monolith`, `top2`, `text-blind top2`, ..."""
    r = phase["results"]
    out = {"monolith": (r["monolith"]["model"], MONOLITH_ROUTING, r["monolith"]["modes"][MONOLITH_ROUTING])}
    out |= {mode: (r["ensemble"]["model"], mode, row) for mode, row in r["ensemble"]["modes"].items()}
    if "textblind" in r:
        out |= {f"text-blind {m}": (r["textblind"]["model"], m, row) for m, row in r["textblind"]["modes"].items()}
    return out


def methods(phase: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: row for name, (_, _, row) in method_rows(phase).items()}


def summarize(
    done: list[dict[str, Any]], cfg: RunConfig, base: str, judge_cv: float, classes: int, seeds: int, scale: float
) -> dict[str, Any]:
    """Means and spreads over the seeds, ratios to the monolith, the compute curve."""
    main = [p for p in done if p["tag"].startswith("s")]
    table: dict[str, dict[str, Any]] = {}
    for name in methods(main[0]):
        rows = [methods(p).get(name) for p in main]
        rows_ok = [r for r in rows if r is not None]
        ratios = [
            methods(p)[name]["frechet"] / methods(p)["monolith"]["frechet"]
            for p in main
            if name in methods(p) and "frechet" in methods(p)[name]
        ]
        table[name] = {
            "accuracy": mean_spread([r.get("accuracy", math.nan) for r in rows_ok]),
            "frechet": mean_spread([r.get("frechet", math.nan) for r in rows_ok]),
            "frechet_vs_monolith": mean_spread(ratios),
            "usage": [statistics.fmean(u) for u in zip(*(r["usage"] for r in rows_ok), strict=True)],
        }
    routers = {"caption-aware": "ensemble", "text-blind": "textblind"}
    router_acc: dict[str, list[dict[str, float]]] = {}
    for label, variant in routers.items():
        curves = [p["results"][variant]["router_accuracy"] for p in main if variant in p["results"]]
        curves = [c for c in curves if c]
        if curves:
            router_acc[label] = [
                {"t_lo": row["t_lo"], "t_hi": row["t_hi"], **mean_spread([c[i]["accuracy"] for c in curves])}
                for i, row in enumerate(curves[0])
            ]
    curve = []
    for p in sorted(
        [p for p in done if p["tag"].startswith("b")] + [p for p in main if p["seed"] == 0], key=lambda p: p["scale"]
    ):
        m = methods(p)
        curve.append({
            "tag": p["tag"],
            "budget": p["scale"] / scale,
            "ensemble_flops": p["flops"]["ensemble"],
            "monolith_flops": p["flops"]["monolith"],
            "scores": {n: {k: row[k] for k in ("accuracy", "frechet") if k in row} for n, row in m.items()
                       if not n.startswith("text-blind")},
        })
    first = main[0]
    return {
        "model": cfg.model,
        "dataset": cfg.data.name,
        "store_names": {p["tag"]: {v: r["model"] for v, r in p["results"].items()} for p in done},
        "experts": cfg.data.clusters,
        "seeds_done": len(main),
        "seeds": seeds,
        "scale": scale,
        "settings": first["settings"],
        "flops": {k: first["flops"][k] for k in ("ensemble", "monolith")},
        "flops_per_step": first["flops"]["per_step"],
        "judge": {"cv_accuracy": judge_cv, "classes": classes, "chance": 1 / classes},
        "prompts": len(first["results"]["ensemble"]["prompts"]),
        "per_prompt": cfg.sample.per_prompt,
        "table": table,
        "router_accuracy": router_acc,
        "compute_curve": curve,
        "phase_seconds": {p["tag"]: p["seconds"] for p in done},
    }


def _fmt(s: Mapping[str, float], digits: int = 3) -> str:
    if not s or s.get("n", 0) == 0:
        return "-"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}" if s["n"] > 1 else f"{s['mean']:.{digits}f}"


def markdown(report: Mapping[str, Any]) -> str:
    t = report["table"]
    flops = report["flops"]
    st = report["settings"]
    lines = [
        f"# Ensemble vs monolith at equal compute: `{report['dataset']}`",
        "",
        "Made by:",
        "",
        "```",
        report["command"],
        "```",
        "",
        f"K = {report['experts']} experts + a caption-aware router against one expert of the same architecture "
        f"trained on all the data. Seeds: {report['seeds_done']} of {report['seeds']}"
        + (f" (training steps × {report['scale']:g}: the quick variant)" if report["scale"] != 1 else "")
        + ". Mean ± standard deviation over the seeds.",
        "",
        "- training: "
        + (f"the experts {', '.join(map(str, st['expert_steps']))} steps (in proportion to their clusters' sizes)"
           if "expert_steps" in st else f"each expert {st['steps']} steps")
        + f", the router {st['router_steps']} steps = "
        f"**{flops['ensemble'] / 1e12:.3f} TFLOP**; the monolith {st['monolith_steps']} steps = "
        f"**{flops['monolith'] / 1e12:.3f} TFLOP** (ratio {flops['monolith'] / flops['ensemble']:.3f}); "
        "FLOPs of one step counted by `torch.utils.flop_counter.FlopCounterMode`, times the steps",
        "- FLOPs per step: " + ", ".join(f"{v} {n}: {f / 1e9:.2f} GFLOP" for v, d in report["flops_per_step"].items()
                                         for n, f in d.items()),
        f"- judge: an MLP trained on the held-out real images (never trained on by any model), "
        f"{report['judge']['classes']} classes, cross-validated accuracy **{report['judge']['cv_accuracy']:.3f}** "
        f"(chance {report['judge']['chance']:.3f}); {report['prompts']} prompts (held-out captions, their class "
        f"known) × {report['per_prompt']} images per method, same noise for every method of a seed",
        "- Fréchet: FID's formula in the judge's hidden-layer features, samples against the held-out real images "
        "(lower is better); the ratio is each seed's Fréchet over its monolith's",
        "",
        "| method | prompted-class accuracy | Fréchet (judge features) | Fréchet / monolith | expert usage |",
        "|---|---|---|---|---|",
    ]
    for name, row in t.items():
        lines.append(
            f"| {name} | {_fmt(row['accuracy'])} | {_fmt(row['frechet'], 2)} | {_fmt(row['frechet_vs_monolith'], 2)} | "
            + " ".join(f"{u:.2f}" for u in row["usage"])
            + " |"
        )
    if report.get("clusters"):
        lines += ["", "Clusters (two-stage k-means on image features; the classes are for this table only):", "",
                  "| cluster | training images | images of each class |", "|---|---|---|"]
        for c in report["clusters"]:
            hist = " ".join(str(h) for h in c["label_histogram"]) if c.get("label_histogram") else "-"
            lines.append(f"| {c['id']} | {c['size']} | {hist} |")
    ra = report["router_accuracy"]
    if ra:
        first = next(iter(ra.values()))
        lines += ["", "Router held-out accuracy by noise level t (1 = pure noise):", "",
                  "| router | " + " | ".join(f"t<{r['t_hi']:.1f}" for r in first) + " |",
                  "|---|" + "---|" * len(first)]
        for label, rows in ra.items():
            lines.append(f"| {label} | " + " | ".join(f"{r['mean']:.2f}" for r in rows) + " |")
    curve = report["compute_curve"]
    if curve:
        names_ = list(curve[-1]["scores"])
        lines += ["", "Compute curve (seed 0): prompted-class accuracy / Fréchet at each training budget:", "",
                  "| budget | ensemble TFLOP | monolith TFLOP | " + " | ".join(names_) + " |",
                  "|---|---|---|" + "---|" * len(names_)]
        for c in curve:
            cells = []
            for n in names_:
                s = c["scores"].get(n, {})
                cells.append(f"{s.get('accuracy', math.nan):.3f} / {s.get('frechet', math.nan):.2f}")
            lines.append(f"| {c['budget']:g} | {c['ensemble_flops'] / 1e12:.3f} | {c['monolith_flops'] / 1e12:.3f} | "
                         + " | ".join(cells) + " |")
    lines += ["", "![score per routing mode](modes.png)", "", "![score against training compute](compute.png)", "",
              "![router accuracy against noise](router.png)", "",
              "Samples (seed 0, same prompts and noise; one row per prompt):", "", "![samples](samples.png)", "",
              "Trained pipelines in the store (load with `paris generate` on a config whose `model` is the name):", ""]
    for tag, models in report["store_names"].items():
        lines.append(f"- {tag}: " + ", ".join(f"`{m}`" for m in models.values()))
    secs = report["seconds"]
    lines += ["", "Wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in secs.items()) + "; per phase: "
              + ", ".join(f"{tag} {s['train']:.0f} s training + {s['sample+eval']:.0f} s sampling"
                          for tag, s in report["phase_seconds"].items()), ""]
    return "\n".join(lines)


def write_report(report: dict[str, Any], done: list[dict[str, Any]], store: Store, out: Path) -> None:
    from paris import plots

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"report": report, "phases": done}, indent=1, default=str))
    (out / "README.md").write_text(markdown(report))
    t = report["table"]
    (out / "modes.png").write_bytes(plots.bars_png(
        {n: (r["accuracy"]["mean"], r["accuracy"]["std"]) for n, r in t.items()},
        {n: (r["frechet"]["mean"], r["frechet"]["std"]) for n, r in t.items()},
        chance=report["judge"]["chance"],
        title=f"{report['dataset']}: {report['seeds_done']} seed(s), equal training FLOPs",
    ))
    curve = report["compute_curve"]
    series: dict[str, list[tuple[float, float, float]]] = {}
    for c in curve:
        for n, s in c["scores"].items():
            x = c["monolith_flops"] if n == "monolith" else c["ensemble_flops"]
            series.setdefault(n, []).append((x / 1e12, s.get("accuracy", math.nan), s.get("frechet", math.nan)))
    (out / "compute.png").write_bytes(plots.compute_png(series, title=f"{report['dataset']}: seed 0"))
    (out / "router.png").write_bytes(plots.router_png(report["router_accuracy"]))
    seed0 = next(p for p in done if p["tag"] == "s0")
    panels = {
        n: store.get_bytes(f"{samples_prefix(model)}/{mode.replace(':', '-')}.png")
        for n, (model, mode, _) in method_rows(seed0).items()
    }
    (out / "samples.png").write_bytes(plots.side_by_side_png(panels))


def command_line(argv: list[str] | None = None) -> str:
    return " ".join(shlex.quote(a) for a in (argv or ["paris", *sys.argv[1:]]))

