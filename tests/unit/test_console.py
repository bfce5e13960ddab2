"""Loading a trained pipeline is quiet: no accelerate warning, no EMA keys "not expected" in a
component's config. Runs the real `paris` commands with library warnings switched on."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import paris_cli, served_pipeline, tiny_config, write_config

# What diffusers' EMAModel writes into a model's config.json unless we keep it out.
EMA_KEYS = {"decay", "inv_gamma", "min_decay", "optimization_step", "power", "update_after_step", "use_ema_warmup"}
LOUD = {"DIFFUSERS_VERBOSITY": "warning", "TRANSFORMERS_VERBOSITY": "warning", "PYTHONWARNINGS": "default"}


def test_paris_generate_prints_no_warning_on_a_trained_pipeline(tmp_path: Path) -> None:
    cfg = str(write_config(tmp_path / "cfg.yaml", tiny_config(f"file://{tmp_path}/store")))
    for argv in (["data", "prepare"], ["train", "expert", "--cluster", "0"], ["train", "expert", "--cluster", "1"]):
        r = paris_cli(*argv[:2], cfg, *argv[2:], env=LOUD)
        assert r.returncode == 0, r.stderr
    r = paris_cli("train", "router", cfg, env=LOUD)
    assert r.returncode == 0, r.stderr

    r = paris_cli("generate", cfg, "--prompt", "a handwritten digit four", "--count", "2",
                  "--out", str(tmp_path / "out"), env=LOUD)
    assert r.returncode == 0, r.stderr
    noisy = [ln for ln in r.stderr.splitlines() if "warning" in ln.lower() or "not expected" in ln]
    assert noisy == [], r.stderr

    store = tmp_path / "store" / "models" / "tiny"
    for component in ("expert_0", "expert_1", "router"):
        config = json.loads((served_pipeline(tmp_path / "store", "tiny") / component / "config.json").read_text())
        assert not EMA_KEYS & set(config), f"{component}: {sorted(EMA_KEYS & set(config))}"
    # The checkpoint keeps the EMA's state beside its weights, where a resume reads it.
    ema = store / "experts" / "0" / "checkpoints" / "step-000002" / "ema"
    assert not EMA_KEYS & set(json.loads((ema / "config.json").read_text()))
    assert json.loads((ema / "ema_state.json").read_text())["optimization_step"] == 2


def test_an_ema_saved_the_old_way_still_resumes_with_its_state(tmp_path: Path) -> None:
    """Checkpoints written before the EMA state moved out of config.json load unchanged."""
    from diffusers.training_utils import EMAModel

    from paris.router.model import ParisRouter
    from paris.trainer.checkpoint import load_ema, save_ema

    model = ParisRouter(sample_size=8, in_channels=1, num_clusters=2, hidden_size=16, depth=1, heads=2)
    ema = EMAModel(model.parameters(), decay=0.9, model_cls=ParisRouter, model_config=model.config)
    for _ in range(3):
        ema.step(model.parameters())
    ema.save_pretrained(str(tmp_path / "old"))
    save_ema(ema, model, tmp_path / "new")
    for folder in ("old", "new"):
        loaded = load_ema(tmp_path / folder, ParisRouter)
        assert (loaded.optimization_step, loaded.decay) == (3, 0.9), folder
