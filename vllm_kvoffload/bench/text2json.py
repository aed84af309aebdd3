"""Text2JSON: extract every entity of one kind from a long text as a JSON list.

Records are jsonl with ``problem`` (the whole prompt) and ``answer`` (a JSON list of
entities, each with exactly 3 string fields, one of them ``name``). The metric is a soft
IoU per sample, exactly as DESIGN.md states it (see :func:`sample_score`).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from vllm_kvoffload.bench import data, synth

APOSTROPHE = ("\u2019", "'")  # curly -> straight, before any comparison


def _norm(s: str) -> str:
    return s.replace(*APOSTROPHE)


# ---- metric ---------------------------------------------------------------------------

def sample_score(prediction: str, gold: str | list) -> float | None:
    """Soft IoU of one sample in [0, 1]; None when the gold has duplicate names (excluded).

    - The prediction must hold exactly one ``[`` and one ``]``, in that order, and the text
      between them (inclusive) must parse as a JSON list; otherwise the score is 0.
    - A predicted entity without a string ``name``, or whose name is not among the gold
      names still unmatched, adds 1 to the denominator.
    - A matched entity scores 1, minus 0.5 per gold field missing or null, minus 0.25 per
      field whose value differs (ints compared as strings); it leaves the gold set.
    - Score = sum over matched entities / (gold entities + unmatched predictions).
    """
    gold_list = json.loads(gold) if isinstance(gold, str) else gold
    remaining: dict[str, dict] = {}
    for ent in gold_list:
        name = _norm(ent["name"])
        if name in remaining:
            return None
        remaining[name] = {k: v for k, v in ent.items() if k != "name"}
    denom = len(remaining)
    if prediction.count("[") != 1 or prediction.count("]") != 1 or prediction.index("[") > prediction.index("]"):
        return 0.0
    try:
        pred = json.loads(prediction[prediction.index("["):prediction.index("]") + 1])
    except json.JSONDecodeError:
        return 0.0
    if not isinstance(pred, list):
        return 0.0
    total = 0.0
    for ent in pred:
        name = ent.get("name") if isinstance(ent, dict) else None
        if not isinstance(name, str) or _norm(name) not in remaining:
            denom += 1
            continue
        fields = remaining.pop(_norm(name))
        s = 1.0
        for key, want in fields.items():
            got = ent.get(key)
            if got is None:
                s -= 0.5
                continue
            if type(got) is int:  # bool is not an int here
                got = str(got)
            if not isinstance(got, str) or _norm(got) != _norm(want):
                s -= 0.25
        total += s
    return total / denom if denom else 1.0  # empty gold, empty prediction: nothing missed


def score(predictions: list[str], golds: list[str]) -> float:
    """Reported Text2JSON score: 100 x mean soft IoU over samples whose gold names are
    unique (NaN when none is)."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} golds")
    scores = [s for p, g in zip(predictions, golds) if (s := sample_score(p, g)) is not None]
    return 100 * sum(scores) / len(scores) if scores else float("nan")


# ---- data -------------------------------------------------------------------------------

def _check_answer(answer) -> str | None:
    try:
        ents = json.loads(answer) if isinstance(answer, str) else answer
    except json.JSONDecodeError:
        ents = None
    if not isinstance(ents, list) or not all(isinstance(e, dict) and "name" in e for e in ents):
        return f"'answer' is not a JSON list of entities with a 'name': {str(answer)[:80]!r}"
    return None


def load(path: str | Path, limit: int | None = None) -> list[dict]:
    """Samples from the released jsonl format (``problem``, ``answer``)."""
    return data.load(path, limit, _check_answer)


_INTRO = "Below is a long text. Somewhere in it, several {kind} are mentioned.\n\n"
_TASK = ("\n\nExtract every one of the {kind} mentioned in the text above. Answer with a JSON "
         "list only: one object per entity, each with exactly the keys \"name\", \"{a}\" and "
         "\"{b}\", all values strings copied exactly from the text. Do not add anything else.")


def generate(n: int, context_tokens: int, seed: int, count, *, min_entities: int = 3,
             max_entities: int = 20, start: int = 0) -> list[dict]:
    """``n`` synthetic samples of ``context_tokens`` tokens (of ``count``) each: samples
    ``start .. start+n-1`` of the seed's sequence.

    Kind cycles through the four kinds by sample index; entity count is uniform in [min, max], capped so
    the prompt without distractor text takes at most 80% of the context.
    """
    if not 1 <= min_entities <= max_entities:
        raise ValueError(f"entities range [{min_entities}, {max_entities}] is empty")
    out = []
    for i in range(start, start + n):
        rng = random.Random(f"text2json/{seed}/{i}")
        kind = list(synth.KINDS)[i % len(synth.KINDS)]
        a, b = synth.KINDS[kind][0]
        k = rng.randint(min_entities, max_entities)
        ents = synth.entities(kind, k, rng)
        lines = [synth.mention(kind, e, rng) for e in ents]
        depths = sorted(rng.random() for _ in ents)
        head, tail = _INTRO.format(kind=kind), _TASK.format(kind=kind, a=a, b=b)

        def build(filler, lines=lines, depths=depths, head=head, tail=tail):
            return head + synth.paragraphs(synth.place(filler, list(zip(depths, lines)))) + tail

        while len(lines) > min_entities and count(build([])) > 0.8 * context_tokens:
            del ents[-1], lines[-1], depths[-1]  # leave room for distractor text

        prompt = synth.fit(count, context_tokens, build, rng, what=f"text2json sample {i}")
        out.append({"id": f"{seed}-{i}", "prompt": prompt, "gold": json.dumps(ents), "kind": kind})
    return out


def score_one(output: str, sample: dict) -> dict:
    return {"score": sample_score(output, sample["gold"])}


def summarize(records: list[dict]) -> dict:
    scored = [r["score"] for r in records if r.get("score") is not None]
    return {"score": 100 * sum(scored) / len(scored) if scored else float("nan"),
            "n_scored": len(scored), "n_excluded": len(records) - len(scored)}
