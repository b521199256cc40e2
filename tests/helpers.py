"""Tiny random LFM2 / LFM2-MoE checkpoints built with transformers (the oracle), and its logits.

Every parameter gets non-trivial random values: the default init leaves norms at 1, biases and
the expert bias at 0, which would hide bugs in exactly those places.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

BASE = dict(vocab_size=97, hidden_size=48, num_attention_heads=4, num_key_value_heads=2,
            num_hidden_layers=4, layer_types=["conv", "full_attention", "conv", "full_attention"],
            max_position_embeddings=512, norm_eps=1e-5)
DENSE = dict(intermediate_size=96, block_multiple_of=32)
MOE = dict(intermediate_size=80, moe_intermediate_size=40, num_experts=6, num_experts_per_tok=2,
           num_dense_layers=1)


def hf_config(kind: str = "dense", **overrides):
    from transformers import Lfm2Config, Lfm2MoeConfig

    cfg = dict(BASE, **(DENSE if kind == "dense" else MOE))
    cfg.update(overrides)
    return (Lfm2Config if kind == "dense" else Lfm2MoeConfig)(**cfg)


def make_hf_model(path: Path, kind: str = "dense", seed: int = 0, **overrides):
    """Save a tiny random transformers model to `path`; returns (path, torch model in eval mode)."""
    import torch
    from transformers import Lfm2ForCausalLM, Lfm2MoeForCausalLM

    torch.manual_seed(seed)
    cfg = hf_config(kind, **overrides)
    model = (Lfm2ForCausalLM if kind == "dense" else Lfm2MoeForCausalLM)(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if not p.is_floating_point() or "inv_freq" in name:
                continue
            if "norm" in name or "layernorm" in name:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() >= 2:
                fan_in = p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    return path, model


def hf_logits(model, ids) -> np.ndarray:
    """(T, vocab) f32 logits of the transformers model for one sequence, no cache."""
    import torch

    with torch.no_grad():
        out = model(torch.as_tensor(np.asarray(ids)[None], dtype=torch.long), use_cache=False)
    return out.logits[0].float().numpy()


def load_dequantized_into(model, weight_dir: Path) -> None:
    """Overwrite the torch model's weights with our stored (dequantized) ones, so the quantized
    path can be held to the oracle exactly: same weights, only the arithmetic differs."""
    import torch

    from cactus.weights import WeightDir

    wd = WeightDir(weight_dir)
    params = dict(model.named_parameters())
    params.update(dict(model.named_buffers()))
    with torch.no_grad():
        for name, info in wd.info.items():
            w = torch.from_numpy(wd.tensor(name, info.shape).dequantize().copy())
            if ".experts.w" in name:
                prefix, which = name.rsplit(".experts.", 1)
                which = which.split(".")[0]
                e = prefix + ".experts"
                inter = w.shape[1] if which != "w2" else w.shape[2]
                if which == "w1":
                    params[e + ".gate_up_proj"][:, :inter] = w
                elif which == "w3":
                    params[e + ".gate_up_proj"][:, inter:] = w
                else:
                    params[e + ".down_proj"][:] = w
            else:
                params[name][:] = w.reshape(params[name].shape)
