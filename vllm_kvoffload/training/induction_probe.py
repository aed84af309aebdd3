"""How many optimizer steps until an induction (copy) head forms, for a model shape and lr.

    python -m vllm_kvoffload.training.induction_probe --layers 6 --hidden 384 --lr 1e-3 --seconds 240

The task is the cleanest one that needs content-based copying: a random lowercase string of
20-80 letters, a separator, then the same string again; the loss is on the copy's letters 2..L.
The offset varies with L, so a head attending a fixed distance back cannot solve it; only
"find where the current letter occurred, predict what followed" (an induction head) can.
Prints one JSON line: the first logged step with copy accuracy > 0.9 and the accuracy history.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from vllm_kvoffload.training.data import PAD, VOCAB_SIZE
from vllm_kvoffload.training.model import LlamaLM, ModelConfig


def copy_batch(batch: int, max_len: int, gen: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs [B, 2*max_len+1] and the mask of the targets that only copying predicts."""
    lengths = torch.randint(max_len // 4, max_len + 1, (batch,), generator=gen).to(device)
    letters = torch.randint(ord("a"), ord("z") + 1, (batch, max_len), generator=gen).to(device)
    pos = torch.arange(2 * max_len + 1, device=device)[None]
    src = torch.where(pos < lengths[:, None], pos, pos - lengths[:, None] - 1).clamp(0, max_len - 1)
    x = torch.gather(letters, 1, src)
    x = torch.where((pos == lengths[:, None]) | (pos > 2 * lengths[:, None]), PAD, x)
    tpos = pos[:, 1:]  # position of each target token
    mask = (tpos > lengths[:, None] + 1) & (tpos <= 2 * lengths[:, None])  # copy letters 2..L
    return x, mask


def probe(layers: int, hidden: int, heads: int, kv_heads: int, head_dim: int, lr: float, seconds: float,
          max_steps: int, batch: int, max_len: int, device: str) -> dict:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    cfg = ModelConfig(vocab_size=VOCAB_SIZE, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads,
                      head_dim=head_dim, intermediate=3 * hidden)
    model = LlamaLM(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))
    t0, first, history, step = time.time(), None, [], 0
    while step < max_steps and time.time() - t0 < seconds:
        x, mask = copy_batch(batch, max_len, gen, device)
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 100)
        with amp:
            logits = model(x[:, :-1])
        loss = F.cross_entropy(logits[mask].float(), x[:, 1:][mask])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0:
            acc = (logits[mask].argmax(-1) == x[:, 1:][mask]).float().mean().item()
            history.append({"step": step, "s": round(time.time() - t0, 1), "loss": round(loss.item(), 3),
                            "copy_acc": round(acc, 3)})
            if first is None and acc > 0.9:
                first = step
        step += 1
    return {"layers": layers, "hidden": hidden, "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim,
            "lr": lr, "batch": batch, "max_len": max_len, "steps": step, "device": device,
            "first_step_copy_acc_over_0.9": first, "history": history}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seconds", type=float, default=240, help="wall-clock limit")
    ap.add_argument("--max-steps", type=int, default=100000)
    ap.add_argument("--batch", type=int, default=128, help="sequences per step")
    ap.add_argument("--max-len", type=int, default=80, help="longest string copied (shortest: a quarter)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    for name in ("layers", "hidden", "heads", "kv_heads", "head_dim", "batch", "max_steps"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} {getattr(args, name)}: must be >= 1")
    if args.max_len < 4:
        raise SystemExit(f"--max-len {args.max_len}: must be >= 4")
    print(json.dumps(probe(args.layers, args.hidden, args.heads, args.kv_heads, args.head_dim, args.lr,
                           args.seconds, args.max_steps, args.batch, args.max_len, args.device)))


if __name__ == "__main__":
    main()
