"""A Llama-architecture decoder in plain torch whose parameter names are Hugging Face's.

Invariant: ``LlamaLM(cfg).state_dict()`` loads into ``transformers.LlamaForCausalLM`` (and
vLLM's Llama) with the same ``config.json``, and gives the same logits (tested on CPU).
RoPE uses HF's rotate-half layout; attention is causal SDPA with grouped KV heads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 262
    hidden: int = 384
    layers: int = 6
    heads: int = 8
    kv_heads: int = 2
    head_dim: int = 64
    intermediate: int = 1152
    rope_theta: float = 100000.0
    rms_eps: float = 1e-5
    max_position: int = 32768

    def __post_init__(self):
        if self.heads % self.kv_heads:
            raise ValueError(f"heads={self.heads} is not a multiple of kv_heads={self.kv_heads}")

    def hf_config(self, bos: int, eos: int) -> dict:
        """The ``config.json`` of the exported folder."""
        return {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": self.vocab_size, "hidden_size": self.hidden,
            "intermediate_size": self.intermediate, "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads, "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim, "max_position_embeddings": self.max_position,
            "rms_norm_eps": self.rms_eps, "rope_theta": self.rope_theta, "hidden_act": "silu",
            "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False,
            "torch_dtype": "bfloat16", "bos_token_id": bos, "eos_token_id": eos,
        }

    def to_dict(self) -> dict:
        return asdict(self)


def rope_tables(cfg: ModelConfig, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [T, head_dim] in float32 (HF layout: the half-frequencies repeated)."""
    inv = 1.0 / cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, device=positions.device,
                                                dtype=torch.float32) / cfg.head_dim)
    ang = positions.float()[:, None] * inv[None, :]
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, H, T, D]."""
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x.float() * cos + rot.float() * sin).to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.q_proj = nn.Linear(cfg.hidden, cfg.heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden, cfg.kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden, cfg.kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.heads * cfg.head_dim, cfg.hidden, bias=False)

    def rotated_qkv(self, x, cos, sin):
        """q [B, heads, T, D] and k, v [B, kv_heads, T, D] of x [B, T, hidden], q and k rotated."""
        B, T, _ = x.shape
        c = self.cfg
        q = self.q_proj(x).view(B, T, c.heads, c.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, c.kv_heads, c.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, c.kv_heads, c.head_dim).transpose(1, 2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(self, x, cos, sin, cache: dict | None = None):
        """With ``cache`` (keys "k", "v": [B, Hkv, T_past, D]) the new keys are appended and
        attention covers past + new tokens; the new tokens attend causally among themselves."""
        B, T, _ = x.shape
        c = self.cfg
        q, k, v = self.rotated_qkv(x, cos, sin)
        past = 0
        if cache is not None:
            if "k" in cache:
                past = cache["k"].shape[2]
                k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
            cache["k"], cache["v"] = k, v
        # enable_gqa: each group of heads // kv_heads query heads reads one KV head, without copies. Flash
        # attention serves it in training (bf16, causal); with fp32 or a mask SDPA's math backend does.
        if past == 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:  # new token i sees all past tokens and new tokens <= i
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(past)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, c.heads * c.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden, cfg.intermediate, bias=False)
        self.up_proj = nn.Linear(cfg.hidden, cfg.intermediate, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate, cfg.hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden, cfg.rms_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden, cfg.rms_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.layers))
        self.norm = RMSNorm(cfg.hidden, cfg.rms_eps)


class LlamaLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden, cfg.vocab_size, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02):
        """GPT-2 style: N(0, std) matrices, output projections scaled by depth."""
        for name, p in self.named_parameters():
            if p.dim() == 2:
                scale = (2 * self.cfg.layers) ** -0.5 if name.endswith(("o_proj.weight", "down_proj.weight")) else 1.0
                p.normal_(0.0, std * scale)

    def forward(self, ids: torch.Tensor, caches: list[dict] | None = None, start: int = 0) -> torch.Tensor:
        """ids [B, T] at positions start..start+T-1 -> logits [B, T, V] (float32)."""
        pos = torch.arange(start, start + ids.shape[1], device=ids.device)
        cos, sin = rope_tables(self.cfg, pos)
        x = self.model.embed_tokens(ids)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, None if caches is None else caches[i])
        return self.lm_head(self.model.norm(x)).float()

    @torch.no_grad()
    def generate(self, prompt: list[int], max_new: int, stop: int) -> list[int]:
        """Greedy decoding of one sequence with a KV cache; stops after ``stop`` (excluded)."""
        dev = next(self.parameters()).device
        caches: list[dict] = [{} for _ in self.model.layers]
        logits = self(torch.tensor([prompt], device=dev), caches, 0)
        out: list[int] = []
        for _ in range(max_new):
            tok = int(logits[0, -1].argmax())
            if tok == stop:
                break
            out.append(tok)
            logits = self(torch.tensor([[tok]], device=dev), caches, len(prompt) + len(out) - 1)
        return out
