"""qlandmark: per-token 2-bit landmarks of the post-RoPE keys (the paper's method).

"KV Cache Offloading for Context-Intensive Tasks" (arXiv 2604.08426) finds that
chunk-mean landmarks and low-rank keys lose the tokens that context-intensive
tasks need, and replaces them with one landmark per token: the key itself,
quantized hard (HIGGS: Hadamard rotation, then a Gaussian-optimal vector grid).

Device summary of a block, per KV head and token (``uint8`` row):
  * ``head_dim / 4`` bytes: one code per 4 rotated channels into a 256-entry
    4-D codebook (2 bits per channel; HIGGS ``edenn_d=4, edenn_n=256``);
  * 2 bytes: the token's scale (RMS of the rotated key), bf16 bit pattern.
For head_dim 128 that is 34 bytes per token and KV head (bf16 keys: 256).

Score: softmax over the cold tokens of ``scale * q . k_hat`` (computed in the
rotated basis: the Hadamard matrix is orthonormal, so ``(qH).(kH) = q.k``),
summed over the GQA group. Selection is the engine's: the top ``budget`` tokens
per KV head (the paper's ``sparse_budget = 2 * 1/64 ~ 3.1%``, the config's
default 3%), plus the resident sink and local tokens (paper: ``local_budget=64``;
the engine's window is ``window_tokens``).

Defaults and sources (the paper's ``run_cfg.py``):
  * ``grid="codebook"``: a 256-entry 4-D codebook fitted by Lloyd's algorithm to
    seeded N(0, 1) samples, i.e. a stand-in for HIGGS' EDEN grid of the same
    size (the EDEN grid files are not vendored). ``grid="uniform"`` is the
    Cartesian product of the MSE-optimal uniform 4-level scalar quantizer of
    N(0, 1) (step 0.9957), the same 2 bits and byte layout.
  * Hadamard group = head_dim (the paper rotates groups of up to 1024 channels
    across heads; a per-head rotation keeps one token-head row self-contained).
  * Scale per token and KV head (HIGGS: per group of ``channel_size``).
Optional 4-bit offloaded K/V (paper: ``keys/values_higgs_edenn_d=2, n=256``):
``quantize_kv4`` / ``dequantize_kv4`` give 2-D, 256-entry codes (4 bits per
channel + a bf16 scale: 66 bytes per token-head for D=128, vs 256 in bf16).
The host pool stores K/V in the model dtype, so the engine does not apply it;
the selection benchmark reports its accuracy and PCIe trade-off.

GPU path: ``csrc_triton/score_summary.py::qlandmark_mass``, one launch for the decode batch
(plus the shared softmax pass): the query is rotated once (a [B*Hq, D] x [D, D] product), and
each program dequantizes its blocks' codes in registers against a codebook it holds, so only the
34-byte summaries are read from HBM. CPU: the torch ``cold_logits`` below, which is its reference.
"""

from __future__ import annotations

import functools
import math

import torch

from vllm_kvoffload.scorers import register
from vllm_kvoffload.scorers.base import SoftmaxScorer

VEC = 4          # channels per landmark code
CODES = 256      # codebook entries: one uint8 per VEC channels -> 2 bits/channel
UNIFORM_STEP = 0.9957  # MSE-optimal step of a 4-level uniform quantizer of N(0, 1)


@functools.lru_cache(maxsize=None)
def hadamard(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Orthonormal Sylvester-Hadamard matrix [n, n] (n a power of two), fp32, cached per device
    (the decode path asks for it every layer and step: no host-to-device copy after the first)."""
    if torch.device(device).type != "cpu":
        return hadamard(n).to(device)
    if n & (n - 1):
        raise ValueError(f"Hadamard rotation needs a power-of-two head_dim, got {n}")
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(n)


@functools.lru_cache(maxsize=None)
def gaussian_codebook(dim: int, size: int, kind: str = "codebook", seed: int = 0,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """[size, dim] fp32 grid for unit-variance Gaussian vectors, cached per device.

    ``codebook``: Lloyd's algorithm (k-means) on seeded N(0, I) samples;
    ``uniform``: the product of a ``size ** (1/dim)``-level uniform grid."""
    if torch.device(device).type != "cpu":
        return gaussian_codebook(dim, size, kind, seed).to(device)
    if kind == "uniform":
        levels = round(size ** (1 / dim))
        assert levels**dim == size, (dim, size)
        axis = (torch.arange(levels) - (levels - 1) / 2) * UNIFORM_STEP * 4 / levels
        return torch.cartesian_prod(*[axis] * dim).reshape(size, dim).float()
    if kind != "codebook":
        raise ValueError(f"unknown grid {kind!r}; accepted: codebook, uniform")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(size * 64, dim, generator=gen)
    c = x[:size].clone()
    for _ in range(25):
        a = nearest_code(x, c)
        sums = torch.zeros_like(c).index_add_(0, a, x)
        counts = torch.bincount(a, minlength=size).float()[:, None]
        c = torch.where(counts > 0, sums / counts.clamp_min(1), c)
    return c


def nearest_code(x: torch.Tensor, codebook: torch.Tensor, chunk: int = 1 << 16) -> torch.Tensor:
    """x: [m, dim] -> index of the nearest codebook row, [m] long (chunked)."""
    half_norm = 0.5 * codebook.square().sum(-1)
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    for s in range(0, x.shape[0], chunk):
        out[s : s + chunk] = (x[s : s + chunk] @ codebook.T - half_norm).argmax(-1)
    return out


def vq_quantize(x: torch.Tensor, vec: int, kind: str = "codebook") -> tuple[torch.Tensor, torch.Tensor]:
    """HIGGS-style: rotate the last dim by a Hadamard matrix, scale each row to
    unit RMS, code every ``vec`` channels with a 256-entry grid.
    x: [..., D] -> (codes [..., D / vec] uint8, scale [...] fp32)."""
    d = x.shape[-1]
    rot = x.float() @ hadamard(d, x.device)
    scale = rot.square().mean(-1).sqrt().clamp_min(1e-12)
    unit = (rot / scale[..., None]).reshape(-1, vec)
    if kind == "uniform":  # product grid: nearest code = per-channel rounding
        levels = round(CODES ** (1 / vec))
        level = (unit / UNIFORM_STEP + (levels - 1) / 2).round().clamp(0, levels - 1).long()
        codes = (level * levels ** torch.arange(vec - 1, -1, -1, device=x.device)).sum(-1)
    else:
        codes = nearest_code(unit, gaussian_codebook(vec, CODES, kind, device=x.device))
    return codes.view(*x.shape[:-1], d // vec).to(torch.uint8), scale


def vq_dequantize(codes: torch.Tensor, scale: torch.Tensor, vec: int, kind: str = "codebook",
                  rotated: bool = False) -> torch.Tensor:
    """Inverse of ``vq_quantize`` (fp32); ``rotated=True`` stays in the Hadamard basis."""
    cb = gaussian_codebook(vec, CODES, kind, device=codes.device)
    d = codes.shape[-1] * vec
    x = cb[codes.long()].reshape(*codes.shape[:-1], d) * scale[..., None].float()
    return x if rotated else x @ hadamard(d, x.device).T


def quantize_kv4(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """4-bit offload format for K or V: 2-D codes of a 256-entry grid (4 bits/channel)."""
    return vq_quantize(x, 2)


def dequantize_kv4(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return vq_dequantize(codes, scale, 2)


def kv4_bytes_per_token_head(head_dim: int) -> int:
    return head_dim // 2 + 2  # uint8 per 2 channels + bf16 scale


@register
class QLandmarkScorer(SoftmaxScorer):
    name = "qlandmark"
    grid = "codebook"  # or "uniform"

    def summary_spec(self):
        g = self.geometry
        assert g.head_dim % VEC == 0, g.head_dim
        return (g.num_kv_heads, g.block_size, g.head_dim // VEC + 2), torch.uint8

    def summarize(self, keys: torch.Tensor) -> torch.Tensor:
        codes, scale = vq_quantize(keys, VEC, self.grid)
        scale_bytes = scale.to(torch.bfloat16)[..., None].view(torch.uint8)  # [..., 2]
        return torch.cat([codes, scale_bytes], -1)

    def codes_and_scales(self, summaries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """summaries [..., Hkv, bs, D/4 + 2] -> codes [..., Hkv, bs, D/4] uint8 and scales
        [..., Hkv, bs] bf16 (the summary layout lives here; subclasses may change it)."""
        d4 = self.geometry.head_dim // VEC
        return summaries[..., :d4], summaries[..., d4:].contiguous().view(torch.bfloat16)[..., 0]

    def landmarks(self, summaries: torch.Tensor) -> torch.Tensor:
        """summaries [B, C, *summary_spec()[0]] -> dequantized keys in the Hadamard basis:
        [B, Hkv, C * block_size, D] fp32."""
        g = self.geometry
        codes, scale = self.codes_and_scales(summaries)
        k_hat = vq_dequantize(codes, scale, VEC, self.grid, rotated=True)
        return k_hat.transpose(1, 2).reshape(k_hat.shape[0], g.num_kv_heads, -1, g.head_dim)

    def cold_logits(self, query: torch.Tensor, summaries: torch.Tensor, scale: float) -> torch.Tensor:
        g = self.geometry
        k_hat = self.landmarks(summaries)
        B = query.shape[0]
        q = self.rotated(query).reshape(B, g.num_kv_heads, g.group_size, g.head_dim)
        logits = torch.einsum("bhgd,bhnd->bhgn", q, k_hat) * scale
        return logits.reshape(B, g.num_q_heads, -1)

    def rotated(self, query: torch.Tensor) -> torch.Tensor:
        """The query in the landmarks' Hadamard basis, fp32 (dot products are unchanged)."""
        return query.float() @ hadamard(self.geometry.head_dim, query.device)

    def fused_mass(self, kernels, query, summaries, cold_slots, cold_lens, scale):
        codebook = gaussian_codebook(VEC, CODES, self.grid, device=query.device)
        return kernels.qlandmark_mass(self.rotated(query), summaries, codebook, cold_slots, cold_lens, scale)
