"""Tiny Llama- and Qwen3-architecture models that need no download.

``default_model_path()`` is the shipped trained Llama (``vllm_kvoffload/models/``).
``build_tiny_model(path)`` writes a Hugging Face folder (config, safetensors,
byte-level tokenizer with a chat template) that vLLM loads like any model, with
random but seeded weights, so every build is identical.

    python -m vllm_kvoffload.tiny_model            # prints the default model's path
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

SPECIAL_TOKENS = ["<|bos|>", "<|eos|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
ARCHS = ("llama", "qwen3")
DEFAULT_CACHE = Path(os.environ.get("VLLM_KVOFFLOAD_CACHE", Path.home() / ".cache" / "vllm_kvoffload"))


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (byte-level BPE alphabet)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    keep += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def build_tokenizer(path: Path, model_max_length: int) -> int:
    """Write a byte-level tokenizer (one token per byte, no merges); returns its vocab size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>",
        "add_bos_token": False, "model_max_length": model_max_length,
        "chat_template": CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
    }, indent=1))
    (path / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>"}))
    return tok.get_vocab_size()


def tiny_config(arch: str, vocab_size: int, max_len: int, *, hidden: int = 128,
                layers: int = 2, heads: int = 4, kv_heads: int = 2, head_dim: int = 32) -> dict:
    if arch not in ARCHS:
        raise ValueError(f"unknown tiny architecture {arch!r}; accepted: {', '.join(ARCHS)}")
    common = {
        "vocab_size": vocab_size, "hidden_size": hidden, "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "head_dim": head_dim,
        "max_position_embeddings": max_len, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "hidden_act": "silu", "tie_word_embeddings": False, "torch_dtype": "float32",
        "bos_token_id": SPECIAL_TOKENS_IDS["<|bos|>"], "eos_token_id": SPECIAL_TOKENS_IDS["<|eos|>"],
    }
    if arch == "llama":
        return {**common, "architectures": ["LlamaForCausalLM"], "model_type": "llama",
                "attention_bias": False, "mlp_bias": False}
    return {**common, "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
            "attention_bias": False, "use_sliding_window": False}


SPECIAL_TOKENS_IDS = {t: 256 + i for i, t in enumerate(SPECIAL_TOKENS)}


def build_tiny_model(path: str | os.PathLike, arch: str = "llama", *, max_len: int = 4096,
                     seed: int = 0, **shape) -> Path:
    """Create (or reuse) a seeded random tiny model folder at ``path``."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    if (path / "model.safetensors").exists() and (path / "tokenizer.json").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    vocab_size = build_tokenizer(path, max_len)
    config = tiny_config(arch, vocab_size, max_len, **shape)
    (path / "config.json").write_text(json.dumps(config, indent=1))
    torch.manual_seed(seed)
    hf_config = AutoConfig.from_pretrained(path)
    model = AutoModelForCausalLM.from_config(hf_config, torch_dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:  # larger than HF's default so attention is peaked, not uniform
                p.normal_(0.0, 0.15 if "proj" in name else 0.5)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


TRAINED_MODEL = Path(__file__).parent / "models" / "kvoffload-tiny"


def default_model_path(arch: str = "llama") -> Path:
    """The embedded default model: for ``llama``, the shipped trained model (see
    docs/training.md); otherwise a seeded random tiny model built into the cache folder."""
    if arch == "llama" and (TRAINED_MODEL / "model.safetensors").exists():
        return TRAINED_MODEL
    return build_tiny_model(DEFAULT_CACHE / f"tiny-{arch}", arch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=ARCHS, default="llama")
    parser.add_argument("--out", help="folder to write (default: the cache folder)")
    args = parser.parse_args()
    path = build_tiny_model(args.out, args.arch) if args.out else default_model_path(args.arch)
    print(path)


if __name__ == "__main__":
    main()
