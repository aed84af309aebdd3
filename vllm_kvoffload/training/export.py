"""Turn a training checkpoint into a Hugging Face model folder that vLLM serves.

    python -m vllm_kvoffload.training.export runs/train/checkpoint.pt vllm_kvoffload/models/kvoffload-tiny

Writes ``config.json`` (LlamaForCausalLM), ``model.safetensors`` (bf16), the byte-level
tokenizer with its chat template, and ``training.json`` (how the weights were made).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from vllm_kvoffload.tiny_model import SPECIAL_TOKENS_IDS, build_tokenizer
from vllm_kvoffload.training.model import ModelConfig


def export(checkpoint: str | Path, out: str | Path, extra: dict | None = None) -> Path:
    from safetensors.torch import save_file

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    cfg = ModelConfig(**ckpt["config"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vocab = build_tokenizer(out, cfg.max_position)
    if vocab != cfg.vocab_size:
        raise ValueError(f"tokenizer has {vocab} tokens but the checkpoint's vocab_size is {cfg.vocab_size}")
    hf = cfg.hf_config(SPECIAL_TOKENS_IDS["<|bos|>"], SPECIAL_TOKENS_IDS["<|eos|>"])
    (out / "config.json").write_text(json.dumps(hf, indent=1))
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": hf["bos_token_id"], "eos_token_id": hf["eos_token_id"]}, indent=1))
    tensors = {k: v.to(torch.bfloat16).contiguous() for k, v in ckpt["state_dict"].items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    meta = {"steps": ckpt.get("steps"), "args": ckpt.get("args"), **(extra or {})}
    (out / "training.json").write_text(json.dumps(meta, indent=1))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="checkpoint.pt written by vllm_kvoffload.training.train")
    ap.add_argument("out", help="folder to write")
    ap.add_argument("--run-json", help="the training run's run.json, copied into training.json")
    args = ap.parse_args(argv)
    if not Path(args.checkpoint).is_file():
        raise SystemExit(f"checkpoint {args.checkpoint!r}: no such file")
    extra = json.loads(Path(args.run_json).read_text()) if args.run_json else None
    print(export(args.checkpoint, args.out, extra))


if __name__ == "__main__":
    main()
