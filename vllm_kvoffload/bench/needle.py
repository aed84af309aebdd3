"""Multi-needle retrieval (NeedleBench-v2 style): many needles hidden at spread depths in
distractor prose; the question asks for all of them at once. Recall per needle."""

from __future__ import annotations

import random

from vllm_kvoffload.bench import synth

_COLORS = ["amber", "azure", "crimson", "emerald", "golden", "indigo", "ivory", "jade", "lilac",
           "maroon", "olive", "scarlet", "silver", "teal", "violet", "copper"]
_OBJECTS = ["vault", "locker", "cabinet", "chest", "safe", "drawer", "archive", "crate"]

_INTRO = "Below is a long text. It hides a few access codes; read it carefully.\n\n"
_TASK = ("\n\nQuestion: what are the access codes of {keys}? Answer with one line per item, "
         "in the form '<item> is <code>', and nothing else.")


def generate(n: int, context_tokens: int, seed: int, count, needles: int = 8) -> list[dict]:
    """``n`` samples, each with ``needles`` (key, 6-digit code) needles at evenly spread
    depths (jittered), fitted to ``context_tokens`` tokens."""
    if not 1 <= needles <= len(_COLORS) * len(_OBJECTS):
        raise ValueError(f"--needles {needles}: accepted 1..{len(_COLORS) * len(_OBJECTS)}")
    out = []
    for i in range(n):
        rng = random.Random(f"needle/{seed}/{i}")
        keys = [f"the {c} {o}" for c, o in rng.sample([(c, o) for c in _COLORS for o in _OBJECTS], needles)]
        codes = [str(c) for c in rng.sample(range(100000, 1000000), needles)]
        depths = [(j + rng.random()) / needles for j in range(needles)]
        lines = [f"The access code of {k} is {c}." for k, c in zip(keys, codes)]
        asked = keys[:]
        rng.shuffle(asked)  # question order differs from text order
        tail = _TASK.format(keys=", ".join(asked))

        def build(filler, lines=lines, depths=depths, tail=tail):
            return _INTRO + synth.paragraphs(synth.place(filler, list(zip(depths, lines)))) + tail

        prompt = synth.fit(count, context_tokens, build, rng, what=f"needle sample {i}")
        out.append({"id": f"{seed}-{i}", "prompt": prompt,
                    "gold": [{"key": k, "code": c, "depth": d} for k, c, d in zip(keys, codes, depths)],
                    "asked": asked})
    return out


def score_one(output: str, sample: dict) -> dict:
    """A needle is retrieved when its code appears in the output."""
    hits = [n["code"] in output for n in sample["gold"]]
    return {"hits": hits, "depths": [n["depth"] for n in sample["gold"]],
            "recall": sum(hits) / len(hits), "all_found": all(hits)}


def summarize(records: list[dict]) -> dict:
    by_depth: dict[int, list[bool]] = {}
    for d, h in ((d, h) for r in records for d, h in zip(r["depths"], r["hits"])):
        by_depth.setdefault(min(int(d * 10), 9), []).append(h)
    return {"recall": 100 * sum(r["recall"] for r in records) / len(records),
            "all_found": 100 * sum(r["all_found"] for r in records) / len(records),
            "recall_by_depth_decile": {f"{10 * b}%": 100 * sum(v) / len(v) for b, v in sorted(by_depth.items())}}
