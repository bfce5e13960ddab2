"""One expert training step, paris against diffusers' DiT, side by side in one process.

The reference is what a user would otherwise run for one expert: diffusers'
`DiTTransformer2DModel` at the same size (DiT-S/2, DiT-B/2, ... on 32x32x4 latents), eager,
with DiT's train.py optimizer (AdamW, lr 1e-4, no weight decay) and its per-step EMA update,
on the same flow-matching loss. The paris side is the real step of paris's training loop
(paris.trainer.step.TrainStep, with the loop's defaults for this device): forward, backward,
gradient clipping, AdamW, LR schedule and EMA. Same precision, same batch.

`--ladder` adds paris's step before the optimizations and then one change at a time, so
each change gets its own measured ratio. MFU is the model's FLOPs per step (torch's
FlopCounterMode: matmuls and attention, forward and backward) over the step time, as a
fraction of this device's measured matmul peak in the same precision.

    python -m bench.train_step --preset S B --precision fp32 bf16          # bench/README.md tables
    python -m bench.train_step --preset S --precision bf16 --ladder        # one change at a time
    python -m bench.train_step --preset tiny --size 8 --channels 1 --text-len 16 --text-dim 384 --batch 64
    python -m bench.train_step --device cuda --preset B XL --batch 32      # on a GPU
    python -m bench.train_step --quick                                     # seconds; the test runs this
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DiTTransformer2DModel
from torch.profiler import ProfilerActivity, profile

from bench.harness import (
    clock_for,
    count_flops,
    fmt_ratio,
    interleaved,
    machine,
    markdown,
    matmul_peak,
    ratio,
    write_json,
)
from paris.config import PRESETS, ExpertModelConfig, TrainConfig
from paris.trainer.attention import default_kernel
from paris.trainer.flow import flow_loss, interpolate, model_timestep, sample_t
from paris.trainer.loop import attention_backend
from paris.trainer.model import build_expert, count_params, expert_velocity
from paris.trainer.step import StepOptions, TrainStep, prepare_model, step_generator

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


class Batch:
    """One fixed global batch: latents, caption states and mask, class labels (for DiT)."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        g = torch.Generator().manual_seed(0)
        b, c, s = args.batch, args.channels, args.size
        self.x0 = torch.randn(b, c, s, s, generator=g)
        self.text = torch.randn(b, args.text_len, args.text_dim, generator=g)
        self.mask = torch.ones(b, args.text_len, dtype=torch.bool)
        self.mask[:, args.text_len // 2 :] = torch.rand(b, args.text_len - args.text_len // 2, generator=g) < 0.3
        self.labels = torch.randint(1000, (b,), generator=g)
        self.device = device

    def noisy(self, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x_t, t (0..1), eps for one step, drawn as paris's loss draws them."""
        t = sample_t(len(self.x0), "logit_normal", g)
        eps = torch.randn(self.x0.shape, generator=g)
        return interpolate(self.x0, eps, t), t, eps


def paris_variant(
    args: argparse.Namespace, preset: str, batch: Batch, device: torch.device, options: StepOptions
) -> tuple[Callable[[], Any], torch.nn.Module]:
    torch.manual_seed(0)
    model = build_expert(
        ExpertModelConfig(preset=preset), {"size": args.size, "channels": args.channels}, args.text_dim
    )
    cfg = TrainConfig(batch_size=args.batch, lr=1e-4, warmup_steps=0, ema_decay=0.9999)
    prepare_model(model, device, options)
    step_fn = TrainStep(model, cfg, device, options)
    x0, text, mask = batch.x0.to(device), batch.text.to(device), batch.mask.to(device)

    def loss_fn(m: torch.nn.Module, g: torch.Generator, dev: torch.device) -> torch.Tensor:
        x_t, t, eps = batch.noisy(g)
        v = expert_velocity(m, x_t.to(dev), model_timestep(t).to(dev), text, mask)
        return flow_loss(v, x0, eps.to(dev))

    counter = iter(range(10**9))
    sync_every_step = options == StepOptions.baseline(options.amp)  # paris's old loop: float(loss) per step

    def run() -> None:
        with attention_backend(device):  # the loop runs every step inside it
            loss = step_fn(loss_fn, next(counter))
        if sync_every_step:
            float(loss)

    return run, model


def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float = 0.9999) -> None:
    # DiT's train.py, verbatim in substance: the reference's per-step EMA.
    ema_params = dict(ema.named_parameters())
    for name, param in model.named_parameters():
        ema_params[name].mul_(decay).add_(param.data, alpha=1 - decay)


def reference_variant(
    args: argparse.Namespace, preset: str, batch: Batch, device: torch.device, amp: torch.dtype | None
) -> tuple[Callable[[], Any], torch.nn.Module]:
    hidden, depth, heads = PRESETS[preset]
    torch.manual_seed(0)
    model = DiTTransformer2DModel(
        num_attention_heads=heads,
        attention_head_dim=hidden // heads,
        in_channels=args.channels,
        out_channels=args.channels,
        num_layers=depth,
        sample_size=args.size,
        patch_size=2,
    ).to(device)
    model.train()
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0)
    x0, labels = batch.x0.to(device), batch.labels.to(device)
    counter = iter(range(10**9))

    def run() -> None:
        g = step_generator(0, next(counter))
        x_t, t, eps = batch.noisy(g)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            v = model(x_t.to(device), timestep=model_timestep(t).to(device), class_labels=labels).sample
        loss = F.mse_loss(v.float(), eps.to(device) - x0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        update_ema(ema, model)

    return run, model


def ladder(amp: torch.dtype | None, device: torch.device) -> dict[str, StepOptions]:
    """paris's step before this work, then one change at a time, ending at the defaults."""
    base = StepOptions.baseline(amp)
    kernel = default_kernel(device, amp)
    steps = {
        "paris before (eager, SDPA, for-loop AdamW, loss read every step)": base,
        f"+ {kernel} attention kernel": base.but(attention=kernel),
        "+ fused q/k/v projections": base.but(attention=kernel, fuse_projections=True),
        "+ fused AdamW, foreach EMA and clip": base.but(attention=kernel, fuse_projections=True, fused_optimizer=True),
        "+ torch.compile per block": base.but(
            attention=kernel, fuse_projections=True, fused_optimizer=True, compile=True
        ),
    }
    if device.type == "cpu":
        steps["+ tanh GELU as x·σ(2u) in the compiled blocks"] = base.but(
            attention=kernel, fuse_projections=True, fused_optimizer=True, compile=True, sigmoid_gelu=True
        )
    defaults = StepOptions.for_config(TrainConfig(), device, amp)
    return {f"{n} (= paris default)" if o == defaults else n: o for n, o in steps.items()}


def profile_top(fn: Callable[[], Any], rows: int) -> str:
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as p:
        fn()
    return str(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def precision_table(
    args: argparse.Namespace,
    batch: Batch,
    device: torch.device,
    clock: Callable[[], float],
    results: dict[str, Any],
    log: Callable[[str], None] | None,
) -> str:
    """paris's default step in fp32 and in bf16, interleaved: what chose CPU_PRECISION.
    Run it again under ONEDNN_MAX_CPU_ISA=AVX512_CORE to see a CPU without a bf16 unit."""
    rows = []
    for preset in args.preset:
        variants = {}
        for precision in args.precision:
            amp = PRECISIONS[precision]
            opts = StepOptions.for_config(TrainConfig(compile=not (args.no_compile or args.quick)), device, amp)
            variants[precision] = paris_variant(args, preset, batch, device, opts)[0]
        stats = interleaved(variants, args.rounds, args.calls, clock, log=log)
        base = stats[args.precision[0]]
        for name, st in stats.items():
            rows.append([preset, name, f"{st.min:.3f} / {st.median:.3f} / {st.max:.3f}", fmt_ratio(ratio(base, st))])
            results[f"{preset}/{name}/precision"] = {"seconds": st, f"speed_vs_{args.precision[0]}": ratio(base, st)}
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA")
    title = f"paris's step by precision{f' (ONEDNN_MAX_CPU_ISA={isa})' if isa else ''}, batch {args.batch}"
    headers = ["preset", "precision", "s/step min / median / max", f"speed vs {args.precision[0]}"]
    return f"#### {title}\n\n" + markdown(headers, rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", nargs="+", default=["S", "B"], choices=list(PRESETS))
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=list(PRECISIONS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=32, help="latent side")
    ap.add_argument("--channels", type=int, default=4)
    ap.add_argument("--text-len", type=int, default=77, help="caption tokens (CLIP ViT-L/14: 77)")
    ap.add_argument("--text-dim", type=int, default=768, help="caption width (CLIP ViT-L/14: 768)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=1, help="steps per round and variant")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clock", default="auto", choices=["auto", "cpu", "wall"])
    ap.add_argument("--ladder", action="store_true", help="also paris before, then one change at a time")
    ap.add_argument("--no-compile", action="store_true", help="paris without torch.compile")
    ap.add_argument(
        "--precision-table",
        action="store_true",
        help="paris's step in each precision side by side (the CPU precision default); no reference",
    )
    ap.add_argument("--profile", type=int, default=0, help="print torch.profiler's top N ops per variant")
    ap.add_argument("--quick", action="store_true", help="a tiny model, 2 rounds: checks the harness")
    ap.add_argument("--json", type=Path, help="write every figure here")
    args = ap.parse_args(argv)
    if args.quick:
        args.preset, args.size, args.channels, args.batch = ["tiny"], 8, 1, 4
        args.text_len, args.text_dim, args.rounds = 8, 32, 2
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    clock_name, clock = clock_for(device, args.clock)
    batch = Batch(args, device)
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if not args.quick else None
    results: dict[str, Any] = {"machine": machine(device, clock_name), "args": vars(args) | {"json": None}}
    tables = []
    if args.precision_table:
        tables.append(precision_table(args, batch, device, clock, results, log))
    for precision in [] if args.precision_table else args.precision:
        amp = PRECISIONS[precision]
        peak = matmul_peak(device, amp or torch.float32, clock) if not args.quick else float("nan")
        results[f"peak_{precision}_flops"] = peak
        for preset in args.preset:
            ref_fn, ref_model = reference_variant(args, preset, batch, device, amp)
            defaults = StepOptions.for_config(TrainConfig(compile=not args.no_compile), device, amp)
            options = ladder(amp, device) if args.ladder else {"paris (defaults)": defaults}
            if args.quick:  # compiling takes minutes on a loaded machine; tests/unit/test_loop.py compiles
                options = {n: o.but(compile=False) for n, o in options.items()}
            variants: dict[str, Callable[[], Any]] = {"reference: diffusers DiT": ref_fn}
            models: dict[str, torch.nn.Module] = {"reference: diffusers DiT": ref_model}
            for name, opt in options.items():
                variants[name], models[name] = paris_variant(args, preset, batch, device, opt)
            # FLOPs of one forward + backward, counted on eager copies (compile does not change them)
            flops = {
                "reference: diffusers DiT": count_flops(reference_variant(args, preset, batch, device, amp)[0]),
                "paris": count_flops(paris_variant(args, preset, batch, device, StepOptions.baseline(amp))[0]),
            }
            gc.collect()
            if log:
                log(f"{preset}/{precision}: {len(variants)} variants, {args.rounds} rounds")
            stats = interleaved(variants, args.rounds, args.calls, clock, log=log)
            ref = stats["reference: diffusers DiT"]
            rows = []
            for name, s in stats.items():
                f = flops["reference: diffusers DiT" if name.startswith("reference") else "paris"]
                rows.append(
                    [
                        name,
                        f"{count_params(models[name]) / 1e6:.1f}M",
                        f"{args.batch / s.median:.2f}",
                        f"{s.min:.3f} / {s.median:.3f} / {s.max:.3f}",
                        fmt_ratio(ratio(ref, s)),  # images/s ratio = inverse time ratio
                        f"{f / s.median / peak:.0%}" if peak == peak else "-",
                    ]
                )
                results[f"{preset}/{precision}/{name}"] = {
                    "seconds": s,
                    "vs_reference": ratio(ref, s),
                    "flops": f,
                    "mfu": f / s.median / peak if peak == peak else None,
                }
            title = (
                f"DiT-{preset}/2 shape, batch {args.batch}, {args.size}x{args.size}x{args.channels}, "
                f"caption {args.text_len}x{args.text_dim}, {precision}"
                + (f" (matmul peak {peak / 1e9:.0f} GFLOP/s)" if peak == peak else "")
            )
            headers = ["variant", "params", "images/s", "s/step min / median / max", "images/s vs reference", "MFU"]
            tables.append(f"#### {title}\n\n" + markdown(headers, rows))
            if args.profile:
                for name in (next(iter(variants)), list(variants)[-1]):
                    print(f"\n## torch.profiler, {title}: {name}\n{profile_top(variants[name], args.profile)}")
            del variants, models
            gc.collect()
    print(f"machine: {results['machine'].line()}\n")
    print("\n\n".join(tables))
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
