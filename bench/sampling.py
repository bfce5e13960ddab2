"""Routed sampling against one expert sampling the same batch, side by side in one process.

The digits demo's pipeline (examples/digits.yaml: K=4 tiny experts, its caption-aware router,
8x8x1 latents, MiniLM captions) samples a batch of 16 prompts, 20 Euler steps with CFG, in each routing
mode; the reference is the same ParisPipeline code with one expert (K=1, where the router is
not needed and does not run), on the same prompts, noise and steps. Each ratio is routed
time / one-expert time per round. A separate pass splits each call into the router
(`ParisPipeline._route`), the experts' forward passes (`expert_velocity`) and the rest
(gathering each expert's rows, mixing, the scheduler), in units of one expert's call.

By default the weights are random: the untrained router then sends nearly every sample to
the same expert, one expert call per step, which isolates the router's cost. `--pipeline DIR`
loads a trained one (e.g. the demo's `runs/store/models/digits/pipelines/<version>`), whose
router splits a batch of digit prompts over every expert: one smaller call per expert.

    python -m bench.sampling                                   # bench/README.md table
    python -m bench.sampling --pipeline runs/store/models/digits/pipelines/<version>
    python -m bench.sampling --device cuda --batch 64
    python -m bench.sampling --paper --precision bf16          # the paper's proportions
    python -m bench.sampling --quick                           # seconds; the test runs this

`--paper` measures where the paper's money is: random weights in the paper's proportions, a
DiT-S/2 expert (PixArt block, 77x768 CLIP-shaped captions) on 32x32x4 latents and a text-blind
router two thirds its width and three sevenths its depth, as DiT-B/2 is to DiT-XL/2 (hidden
256, depth 5). Its head is drawn wide, so that the samples spread over the experts as a
trained router's do. At these sizes one expert call is hundreds of milliseconds of matmuls and
the fixed per-call cost of the demo's tiny models vanishes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from torch.profiler import ProfilerActivity, profile

from bench.harness import clock_for, fmt_ratio, interleaved, machine, markdown, ratio, write_json
from paris.config import ExpertModelConfig, RouterModelConfig, load_config, parse_routing
from paris.evaluate import digit_prompts
from paris.router.model import build_router
from paris.router.pipeline import ParisPipeline
from paris.router.runner import serving_dtype
from paris.trainer.model import build_expert

LATENT = {"size": 8, "channels": 1}
# --paper: a DiT-S/2 expert, and a text-blind router 2/3 its width and 3/7 its depth (B/2 : XL/2)
PAPER_EXPERT = ExpertModelConfig(preset="S")
PAPER_ROUTER = RouterModelConfig(hidden_size=256, depth=5, heads=4, condition_on_text=False)
PAPER_LATENT = {"size": 32, "channels": 4}
CLIP_CAPTION = (77, 768)  # CLIP ViT-L/14 token states: length, width
ROOT = Path(__file__).resolve().parents[1]


def text_parts(device: torch.device) -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer

    from paris.data.encoders import minilm_path

    enc = AutoModel.from_pretrained(minilm_path(), local_files_only=True).eval().to(device)
    tok = AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    return enc, tok


def random_pipeline(
    k: int,
    expert: ExpertModelConfig,
    router: RouterModelConfig,
    text: tuple[Any, Any] | None,
    latent: dict[str, int] = LATENT,
    text_dim: int = 384,
    spread: float = 0.0,
) -> ParisPipeline:
    """A pipeline of random weights (outputs randomized so that the velocities are not all
    zero), seeded: the same routing in every run. `spread` > 0 draws the router's last layer
    with that std, so that its argmax differs from sample to sample."""
    torch.manual_seed(0)
    experts = {}
    for i in range(k):
        e = build_expert(expert, latent, text_dim)
        torch.nn.init.normal_(e.proj_out.weight, std=0.02)
        experts[f"expert_{i}"] = e
    r = build_router(router, k, latent, text_dim)
    if spread:
        torch.nn.init.normal_(cast(torch.nn.Linear, r.head[-1]).weight, std=spread)
    return ParisPipeline(
        router=r,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=text[0] if text else None,
        tokenizer=text[1] if text else None,
        text_max_length=16,
        **experts,
    )


def single_expert(pipe: ParisPipeline, k: int = 0) -> ParisPipeline:
    """The reference: the same pipeline class with expert k alone (no routing to do)."""
    cfg = pipe.router.config
    latent = {"size": cfg.sample_size, "channels": cfg.in_channels}
    text_dim = int(cast(Any, pipe.experts[k]).config.caption_channels)
    router = build_router(RouterModelConfig(hidden_size=8, depth=1, heads=1), 1, latent, text_dim)
    return ParisPipeline(
        router=router,
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config),
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        text_max_length=pipe.config.text_max_length,
        expert_0=pipe.experts[k],
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", type=Path, help="a saved ParisPipeline (default: random weights)")
    ap.add_argument("--config", type=Path, default=ROOT / "examples/digits.yaml", help="shapes for random weights")
    ap.add_argument("--batch", type=int, default=16, help="prompts per call (digit captions, cycled)")
    ap.add_argument("--steps", type=int, help="default: the config's sample.steps")
    ap.add_argument("--guidance", type=float, help="default: the config's sample.guidance")
    ap.add_argument("--modes", nargs="+", default=["top1", "top2", "full"])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clock", default="auto", choices=["auto", "cpu", "wall"])
    ap.add_argument("--profile", type=int, default=0, help="print torch.profiler's top N ops of each mode")
    ap.add_argument("--paper", action="store_true", help="random weights in the paper's proportions (see above)")
    ap.add_argument(
        "--precision", default="fp32", choices=["fp32", "bf16"], help="bf16: weights cast and autocast, as serving does"
    )
    ap.add_argument("--quick", action="store_true", help="tiny models, 2 steps, 2 rounds: checks the harness")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    args.steps = args.steps or cfg.sample.steps
    args.guidance = cfg.sample.guidance if args.guidance is None else args.guidance
    if args.quick:
        args.batch, args.steps, args.rounds = 4, 2, 2
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    clock_name, clock = clock_for(device, args.clock)

    if args.pipeline:
        pipe = ParisPipeline.from_pretrained(args.pipeline)
    else:
        if args.paper:
            expert, router, latent = PAPER_EXPERT, PAPER_ROUTER, PAPER_LATENT
        else:
            expert, router, latent = cfg.expert, cfg.router.model, LATENT
        if args.quick:
            small = {"hidden_size": 32, "depth": 1, "heads": 2}
            expert, router = expert.model_copy(update=small), router.model_copy(update=small)
            latent = {**latent, "size": 8}
        if args.paper:
            pipe = random_pipeline(cfg.data.clusters, expert, router, None, latent, CLIP_CAPTION[1], spread=1.0)
        else:
            pipe = random_pipeline(cfg.data.clusters, expert, router, text_parts(device), latent)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    k = pipe.router.config.num_clusters
    one = single_expert(pipe).to(device)
    one.set_progress_bar_config(disable=True)
    # The served precision: weights cast once (paris.router.runner), autocast for fp32 inputs.
    precision = {"fp32": "no", "bf16": "bf16"}[args.precision]
    dtype = serving_dtype(pipe, precision)
    serving_dtype(one, precision)  # its own router; the expert is pipe's, already cast

    if args.paper:  # CLIP-shaped caption states of full length (the train bench's captions)
        g = torch.Generator().manual_seed(1)
        embeds = torch.randn(args.batch, *CLIP_CAPTION, generator=g)
        mask = torch.ones(args.batch, CLIP_CAPTION[0], dtype=torch.bool)
        null, null_mask = torch.randn(1, *CLIP_CAPTION, generator=g), mask[:1].clone()
        null_mask[:, 2:] = False  # the empty caption: start and end tokens
    else:
        prompts = [p for p, _ in digit_prompts()]
        prompts = [prompts[i % len(prompts)] for i in range(args.batch)]
        embeds, mask = pipe.encode_prompt(prompts)
        null, null_mask = pipe.encode_prompt([""])
    shape = (args.batch, pipe.router.config.in_channels, pipe.router.config.sample_size, pipe.router.config.sample_size)
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    kw: dict[str, Any] = {
        "prompt_embeds": embeds,
        "prompt_mask": mask,
        "null_embeds": null,
        "null_mask": null_mask,
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance,
        "output_type": "pt",
        "latents": latents,
    }
    calls: dict[str, list[int]] = {}

    amp = torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def call(p: ParisPipeline, routing: str) -> Callable[[], Any]:
        def run() -> Any:
            with amp:
                out = p(routing=routing, **kw)
            calls[routing if p is pipe else "one expert"] = out.expert_calls
            return out

        return run

    variants = {"one expert (K=1, no router)": call(one, "top1")}
    variants |= {mode: call(pipe, mode) for mode in args.modes}
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if not args.quick else None
    stats = interleaved(variants, args.rounds, args.calls, clock, log=log)

    parts = {name: time_parts(one if name not in args.modes else pipe, fn, clock) for name, fn in variants.items()}
    unit = parts["one expert (K=1, no router)"]["total"]  # each part in one expert's calls
    shares = {mode: parts[mode]["router"] / parts[mode]["total"] for mode in args.modes}
    ref = stats["one expert (K=1, no router)"]
    results: dict[str, Any] = {"machine": machine(device, clock_name), "args": vars(args) | {"json": None}}
    rows = []
    for name, s in stats.items():
        keep = parse_routing(name) if name in args.modes else 1
        goal = {1: "≤ 1.10×", 2: "≤ 2.00×"}.get(keep or k, f"≤ {k * 1.05:.2f}× (K × 1.05)")
        per_step = sum(calls.get(name, calls.get("one expert", [0]))) / args.steps / args.batch
        rows.append(
            [
                name,
                f"{s.min:.3f} / {s.median:.3f} / {s.max:.3f}",
                fmt_ratio(ratio(s, ref)),
                "-" if name not in args.modes else goal,
                f"{shares[name]:.0%}" if name in shares else "-",
                " + ".join(f"{parts[name][p] / unit:.2f}" for p in ("experts", "router"))
                + f" + {(parts[name]['total'] - parts[name]['experts'] - parts[name]['router']) / unit:.2f}",
                f"{per_step:.2f}",
            ]
        )
        results[name] = {
            "seconds": s,
            "vs_one_expert": ratio(s, ref),
            "router_share": shares.get(name),
            "parts_s": parts[name],
        }
    if args.pipeline:
        source = str(args.pipeline)
    elif args.paper:
        e, r = cast(Any, pipe.experts[0]).config, pipe.router.config
        source = (
            f"random weights in the paper's proportions, K={k}: "
            f"expert hidden {e.num_attention_heads * e.attention_head_dim} depth {e.num_layers}, "
            f"text-blind router hidden {r.hidden_size} depth {r.depth}, "
            f"{r.sample_size}x{r.sample_size}x{r.in_channels} latents, {CLIP_CAPTION[0]}x{CLIP_CAPTION[1]} captions"
        )
    else:
        h, d, _ = cfg.router.model.arch()
        source = f"random weights, K={k}, {args.config.name} shapes (router hidden {h}, depth {d})"
    title = (
        f"routed sampling, {source}: batch {args.batch}, {args.steps} steps, CFG {args.guidance} "
        f"(both branches in one expert batch), {args.precision}"
    )
    headers = ["variant", "s/call min / median / max", "time vs one expert", "goal", "router share"]
    headers += ["experts + router + rest (× one expert's call)", "experts/sample/step"]
    print(f"machine: {results['machine'].line()}\n\n#### {title}\n\n{markdown(headers, rows)}")
    spread = {mode: calls[mode] for mode in args.modes}
    results["expert_calls"] = spread
    print("\nsample-steps each expert ran, per mode: " + "; ".join(f"{m} {c}" for m, c in spread.items()))
    if args.profile:
        for name, fn in variants.items():
            fn()
            with profile(activities=[ProfilerActivity.CPU]) as p:
                fn()
            top = p.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile)
            print(f"\n## torch.profiler: {name}\n{top}")
    write_json(args.json, results)
    return results


def time_parts(pipe: ParisPipeline, fn: Callable[[], Any], clock: Callable[[], float]) -> dict[str, float]:
    """Seconds of one call spent in the router, in the experts' forward passes, and in total
    (the best of 3 calls; a pass of its own, so that the timing wrappers do not touch the
    interleaved figures). What remains is the pipeline's own work: gathering each expert's
    rows, mixing, the scheduler."""
    import paris.router.pipeline as pipeline_module

    spent = {"router": 0.0, "experts": 0.0}

    def timed(part: str, original: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def wrapper(*a: Any, **k: Any) -> torch.Tensor:
            t0 = clock()
            out = original(*a, **k)
            spent[part] += clock() - t0
            return out

        return wrapper

    expert_velocity = pipeline_module.expert_velocity
    pipe._route = timed("router", pipe._route)  # type: ignore[method-assign]
    pipeline_module.expert_velocity = timed("experts", expert_velocity)
    try:
        best: dict[str, float] = {"total": float("inf")}
        for _ in range(3):
            spent["router"] = spent["experts"] = 0.0
            t0 = clock()
            fn()
            total = clock() - t0
            if total < best["total"]:
                best = {"total": total, **spent}
    finally:
        del pipe._route
        pipeline_module.expert_velocity = expert_velocity
    return best


if __name__ == "__main__":
    main()
