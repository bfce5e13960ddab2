"""open_clip's text tower as a ParisPipeline component, so a pipeline whose data was encoded
with open_clip (the paper's CLIP ViT-L/14) generates from a prompt.

ParisPipeline.encode_prompt speaks the Hugging Face interface: `tokenizer(prompts, ...)`
gives `input_ids` and `attention_mask`, `text_encoder(input_ids=...)` gives
`last_hidden_state`. OpenClipTextModel is a diffusers ModelMixin (so the pipeline saves and
loads it like any model) that answers that call, and carries its tokenizer: open_clip's
own BPE tokenizer, shipped inside the open_clip package. The token states are computed by
the same function that encoded the training captions (paris.data.encoders).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from transformers import BatchEncoding
from transformers.modeling_outputs import BaseModelOutput

from paris.data.encoders import open_clip_model, open_clip_token_states


class OpenClipTokenizer:
    """open_clip's tokenizer behind the Hugging Face call signature the pipeline uses."""

    def __init__(self, context_length: int) -> None:
        from open_clip.tokenizer import SimpleTokenizer

        self.context_length = context_length
        self.tokenizer = SimpleTokenizer(context_length=context_length)

    def __call__(
        self,
        prompts: list[str],
        padding: str = "max_length",
        truncation: bool = True,
        max_length: int | None = None,
        return_tensors: str = "pt",
    ) -> BatchEncoding:
        ids = self.tokenizer(prompts)[:, : max_length or self.context_length]  # zero-padded, like the data
        return BatchEncoding({"input_ids": ids, "attention_mask": (ids != 0).long()})


class OpenClipTextModel(ModelMixin, ConfigMixin):
    """The text tower of an open_clip CLIP, returning every token state."""

    @register_to_config
    def __init__(self, embed_dim: int, text_cfg: dict[str, Any], quick_gelu: bool = False) -> None:
        super().__init__()
        from open_clip.model import _build_text_tower  # open_clip's own builder of this tower

        self.tower = _build_text_tower(embed_dim, text_cfg, quick_gelu)
        self.tokenizer = OpenClipTokenizer(int(self.tower.context_length))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> BaseModelOutput:
        n = input_ids.shape[1]
        # The tower's causal attention makes the first n states independent of what follows
        # them, so padding the ids back to the context length gives the data's states.
        ids = torch.nn.functional.pad(input_ids, (0, int(self.tower.context_length) - n))
        return BaseModelOutput(last_hidden_state=open_clip_token_states(self.tower, ids)[:, :n])

    @classmethod
    def from_local(cls, model: str, pretrained: str | None) -> OpenClipTextModel:
        """The text tower of a local open_clip model (see paris.data.encoders.open_clip_model)."""
        import open_clip

        clip, _, _ = open_clip_model(model, pretrained)
        name = Path(model).stem if model.endswith(".json") else model
        cfg = open_clip.get_model_config(name)
        if cfg is None:
            raise ValueError(f"no open_clip config for {name!r}")
        text = cls(int(cfg["embed_dim"]), dict(cfg["text_cfg"]), bool(cfg.get("quick_gelu", False)))
        own = text.tower.state_dict()
        text.tower.load_state_dict({k: v for k, v in clip.state_dict().items() if k in own}, strict=True)
        return text.eval()
