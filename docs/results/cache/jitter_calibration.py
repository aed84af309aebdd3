"""Hit rates of LRU device caches of 1, 2 and 4 budgets under the benchmark's synthetic ranking
(``--synthetic-miss-rates RATE --synthetic-jitter J``; ``vllm_kvoffload/ops/synthetic_ranks_ref.py``),
to pick RATE and J that mimic the trained model's replay (cache_sim.py: 44.5%, 59% and 71% at 3%).
One (request, KV head) of ``--tokens`` cold tokens, numpy, CPU, seconds:

    python docs/results/cache/jitter_calibration.py --rates 0.2 --jitters 0.09
"""

import argparse

import numpy as np


def hit_rates(rate: float, jitter: float, tokens: int, budget: float, steps: int, warmup: int,
              factors=(1, 2, 4), seed: int = 0) -> dict[int, float]:
    rng = np.random.default_rng(seed)
    k = max(1, round(budget * tokens))
    base = rng.random(tokens)
    last_used = {f: np.full(tokens, -1) for f in factors}
    hits = dict.fromkeys(factors, 0)
    for step in range(steps):
        base = np.where(rng.random(tokens) < rate, rng.random(tokens), base)
        selected = np.argpartition(-(base + jitter * rng.random(tokens)), k)[:k]
        for f in factors:
            used = last_used[f]
            cached = np.zeros(tokens, bool)
            recent = np.argsort(-used, kind="stable")[: f * k]  # the f*k most recently selected tokens
            cached[recent[used[recent] >= 0]] = True
            if step >= warmup:
                hits[f] += int(cached[selected].sum())
            used[selected] = step
    return {f: hits[f] / (k * (steps - warmup)) for f in factors}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rates", type=float, nargs="+", default=[0.2])
    p.add_argument("--jitters", type=float, nargs="+", default=[0.0, 0.09])
    p.add_argument("--tokens", type=int, default=32768)
    p.add_argument("--budget", type=float, default=0.03)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    a = p.parse_args()
    print("rate  jitter  hits x1  x2  x4")
    for rate in a.rates:
        for jitter in a.jitters:
            h = hit_rates(rate, jitter, a.tokens, a.budget, a.steps, a.warmup)
            print(f"{rate:<5} {jitter:<7} {h[1]:.1%}  {h[2]:.1%}  {h[4]:.1%}")


if __name__ == "__main__":
    main()
