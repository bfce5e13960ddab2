"""paris/config.py catches the mistakes it can see up front, with the field's name, so that no
user mistake reaches torch as a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from paris.config import ParisExpertSpec, SampleConfig, parse_config, sample_overrides
from paris.errors import ConfigError
from tests.helpers import paris_cli, tiny_config, write_config


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"expert": {"hidden_size": 30, "heads": 4}}, "expert: Value error, hidden size 30 is not divisible by 4"),
        ({"router": {"model": {"preset": "S", "heads": 5}}}, "router.model: Value error, hidden size 32 is not"),
        ({"train": {"device": "gpu"}}, "train.device"),
        ({"sample": {"device": "cuda:x"}}, "sample.device"),
        ({"data": {"image_size": 9}}, "data.image_size 9 is not divisible by patch size 2"),
        ({"expert": {"patch_size": 3}}, "not divisible by patch size 3"),
    ],
)
def test_shape_and_device_mistakes_are_config_errors(over: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        parse_config(tiny_config("file:///tmp/s", **over))


def test_weights_in_the_store_need_s3_storage() -> None:
    with pytest.raises(ConfigError, match=r"data\.vae 's3://b/vae' is in s3://, which needs s3:// storage"):
        parse_config(tiny_config("file:///tmp/s", data={"vae": "s3://b/vae"}))
    with pytest.raises(ConfigError, match=r"data\.text_encoder\.pretrained"):
        parse_config(tiny_config("file:///tmp/s", data={"text_encoder": {"kind": "open_clip", "pretrained": "s3://b/c"}}))
    cfg = parse_config(tiny_config("s3://b", data={"vae": "s3://b/vae", "features": {"kind": "dinov2", "path": "s3://b/d"}}))
    assert cfg.data.vae == "s3://b/vae"


def test_valid_devices_pass() -> None:
    for device in ("auto", "cpu", "cuda", "cuda:3", "mps"):
        parse_config(tiny_config("file:///tmp/s", train={"device": device}))


def test_a_vae_defers_the_patch_check_to_the_latent_size() -> None:
    # With a VAE the latent size is image_size / the VAE's factor, known only once it loads.
    parse_config(tiny_config("file:///tmp/s", data={"image_size": 36, "vae": "/some/vae"}))


def test_custom_resources_check_patch_sizes_too() -> None:
    with pytest.raises(ValueError, match="not divisible by patch size 3"):
        ParisExpertSpec.model_validate(
            {"model": "m", "cluster": 0, "storage": {"uri": "s3://bucket"}, "expert": {"patch_size": 3}}
        )


def test_command_line_overrides_share_the_sample_section_bounds() -> None:
    base = SampleConfig()
    assert sample_overrides(base, {"steps": 1000, "per_prompt": 256}, "x").steps == 1000
    for over, field in (({"steps": 1001}, "sample.steps"), ({"guidance": 51.0}, "sample.guidance"),
                        ({"per_prompt": 257}, "sample.per_prompt"), ({"steps": 0}, "sample.steps")):
        with pytest.raises(ConfigError, match=field):
            sample_overrides(base, over, "command-line option")


def test_paris_generate_reports_an_out_of_bounds_flag_in_one_line(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", tiny_config(f"file://{tmp_path}/s"))
    r = paris_cli("generate", str(cfg), "--steps", "5000")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: command-line option: sample.steps")
