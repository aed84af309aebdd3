"""Training batches from the benchmark generators, formatted exactly as vLLM serves them.

A sample is the chat prompt ``<|user|>{prompt}\\n<|assistant|>`` followed by the reference
answer and ``<|eos|>``, as byte-level token ids (token id == byte value; specials >= 256).
Answer tokens carry loss weight 1, prompt tokens ``prompt_weight``, padding 0.

Every batch is a pure function of (seed, step, progress): the curriculum and the samples are
drawn from ``random.Random`` seeded with that triple, so a run is reproducible. Training
seeds are strings, disjoint from the integer seeds the benchmarks use for held-out data.
"""

from __future__ import annotations

import json
import random
import re
import string
from dataclasses import dataclass

import torch

from vllm_kvoffload.bench import needle, text2json
from vllm_kvoffload.tiny_model import SPECIAL_TOKENS_IDS

USER, ASSISTANT = SPECIAL_TOKENS_IDS["<|user|>"], SPECIAL_TOKENS_IDS["<|assistant|>"]
EOS, PAD = SPECIAL_TOKENS_IDS["<|eos|>"], SPECIAL_TOKENS_IDS["<|pad|>"]
VOCAB_SIZE = 256 + len(SPECIAL_TOKENS_IDS)

# The copy warm-up comes first and lasts until the model copies (train.py gates it on answer
# accuracy): the induction probe's task, on which this shape forms a copy head in ~200 steps.
# Mixing it with the other tasks from the start formed none in 650 steps (H100 runs 6-8).
WARMUP = ((384, 1024), (("letters", 1.0),))
# Then the curriculum, over its own progress in [0, 1] (fraction done at each phase's end,
# (min, max) context tokens, task mix): short contexts and many lookups first, so lookups are
# learnt cheaply, then longer contexts up to the 4K-16K target range. Copy and letters are
# training-only tasks that keep the copy heads in use. A mix of None is the long-context mix:
# MIX, or the run's --mix.
MIX = (("text2json", 0.5), ("needle", 0.4), ("copy", 0.1))  # run 9 (0.4/0.5/0.1) left Text2JSON furthest behind
CURRICULUM = ((0.15, (384, 1024), (("needle", 0.6), ("copy", 0.3), ("letters", 0.1))),
              (0.35, (768, 2048), (("needle", 0.5), ("text2json", 0.35), ("copy", 0.15))),
              (0.6, (1024, 4096), None),
              (0.8, (2048, 8192), None),
              (1.0, (4096, 16384), None))
Mix = tuple[tuple[str, float], ...]
TASKS = ("text2json", "needle", "copy", "letters")
MAX_ENTITIES, MAX_NEEDLES = 10, 8  # the held-out tasks' sizes
TRAIN_NEEDLES = 32  # training packs up to this many: dense lookups, more signal per token
# The binding drill (train.py --drill): Text2JSON at short contexts with 6-10 entities, so little
# filler. A 32K-token drill batch holds ~16 samples and ~400 value lookups, about 10x a 4K-16K
# batch's. Binding a value to its own entity is the shipped model's main error (docs/training.md).
DRILL_CONTEXT, DRILL_ENTITIES = (1280, 2560), (6, MAX_ENTITIES)
# Drills start where the short-context phases (those with a mix of their own) end, after they have
# taught retrieval: drilled from the start, a from-scratch run never learnt to copy needle codes
# (run 20: digit accuracy under 0.45 for 10,000 steps; run 9 without drills passed 0.9 by step 750).
DRILL_FROM = max(upto for upto, _, phase_mix in CURRICULUM if phase_mix is not None)


def needles_for(ctx: int, rng: random.Random) -> int:
    """Needles of one training sample: dense, as many as the context holds (~60 tokens each)."""
    hi = max(1, min(TRAIN_NEEDLES, (ctx - 400) // 60))
    return rng.randint(max(1, hi // 4), hi)


def count_bytes(text: str) -> int:
    return len(text.encode("utf-8"))


def encode_prompt(prompt: str) -> list[int]:
    """What vLLM's chat endpoint feeds the model (the tokenizer's chat template)."""
    return [USER] + list(prompt.encode("utf-8")) + [ord("\n"), ASSISTANT]


def needle_answer(sample: dict) -> str:
    codes = {n["key"]: n["code"] for n in sample["gold"]}
    # "<key> is <code>", the needle's own wording: the code follows the same tokens in the
    # answer as in the text, so plain induction (copy) heads retrieve it.
    return "\n".join(f"{k} is {codes[k]}" for k in sample["asked"])


def text2json_answer(sample: dict) -> str:
    return json.dumps(json.loads(sample["gold"]), ensure_ascii=False)


def make_sample(task: str, ctx: int, seed: str, *, entities: tuple[int, int] | None = None,
                needles: int | None = None) -> tuple[dict, str]:
    """One generated sample of about ``ctx`` prompt tokens and its reference answer."""
    rng = random.Random(seed)
    if task == "text2json":
        hi = max(1, min(MAX_ENTITIES, ctx // 240))
        lo, hi = entities or (min(3, hi), hi)
        s = text2json.generate(1, ctx, seed, count_bytes, min_entities=lo, max_entities=hi,
                               start=rng.randrange(len(text2json.synth.KINDS)))[0]
        return s, text2json_answer(s)
    if task == "needle":
        n = needles or needles_for(ctx, rng)
        s = needle.generate(1, ctx, seed, count_bytes, needles=n)[0]
        return s, needle_answer(s)
    if task == "copy":  # a training-only warm-up: exact copying forms induction heads fast
        return copy_sample(ctx, rng)
    if task == "letters":  # the first warm-up: the induction probe's task in chat format
        return letters_sample(rng)
    raise ValueError(f"unknown task {task!r}; accepted: text2json, needle, copy, letters")


def letters_sample(rng: random.Random) -> tuple[dict, str]:
    """A random lowercase string of 20-80 letters as the whole prompt, repeated as the answer.

    The induction probe's task (``training/induction_probe.py``): the shape here forms a copy head
    on it in about 200 steps, where the longer copy warm-up formed none in 650 (H100 runs 6-8)."""
    text = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(20, 80)))
    return {"prompt": text}, text


def copy_sample(ctx: int, rng: random.Random) -> tuple[dict, str]:
    """Lines of random letters and digits, to be repeated verbatim after the prompt.

    Nothing in them is predictable, so the only way to lower the loss is to copy: this is what
    makes induction (copy) heads form. (Sentences from the generators' word lists were tried
    first; the model completed them from priors and never learned to copy.)"""
    alphabet = string.ascii_lowercase + string.digits
    lines, size = [], 0
    # Short copies at short contexts: induction heads form within a few hundred steps on copies
    # of tens of characters, and not at all in 400 steps on copies of hundreds (H100 runs 5-6).
    target = rng.randint(16, max(16, min(600, ctx // 8)))
    while size < target:
        words = ("".join(rng.choice(alphabet) for _ in range(rng.randint(2, 8)))
                 for _ in range(rng.randint(1, 6)))
        lines.append(" ".join(words))
        size += len(lines[-1]) + 1
    text = "\n".join(lines)
    return {"prompt": f"Copy the following lines exactly.\n\n{text}"}, text


def phase(progress: float | None, mix: Mix | None = None) -> tuple[tuple[int, int], Mix]:
    """The (context range, task mix) of the curriculum at ``progress`` in [0, 1]; None: the warm-up.
    ``mix`` replaces ``MIX`` as the long-context phases' mix."""
    if progress is None:
        return WARMUP
    for upto, ctx, phase_mix in CURRICULUM:
        if progress < upto:
            break
    return ctx, phase_mix or mix or MIX


def parse_mix(text: str) -> Mix:
    """``"text2json=0.7,needle=0.2,copy=0.1"`` -> a mix; shares need not sum to 1 (they are weights)."""
    mix = []
    for part in text.split(","):
        task, sep, share = part.partition("=")
        task = task.strip()
        if not sep or task not in TASKS:
            raise ValueError(f"--mix {text!r}: {part!r} is not TASK=SHARE with TASK one of {', '.join(TASKS)}")
        try:
            value = float(share)
        except ValueError:
            raise ValueError(f"--mix {text!r}: share {share!r} of {task} is not a number") from None
        if value < 0:
            raise ValueError(f"--mix {text!r}: share {value} of {task} must be >= 0")
        mix.append((task, value))
    if sum(v for _, v in mix) <= 0:
        raise ValueError(f"--mix {text!r}: the shares must not all be 0")
    return tuple(mix)


_VALUE_START = {"text2json": re.compile(rb'": "'), "needle": re.compile(rb" is ")}


def decision_offsets(task: str, answer: bytes) -> list[int]:
    """Byte offsets in ``answer`` of the tokens that need a lookup in the context, not a copy of
    what precedes them: the first byte of every Text2JSON value (the name starts an entity: which
    one comes next; the other fields: which value belongs to it) and the first digit of every
    needle code. Everything after such a byte is mostly a continuation that an induction head copies."""
    pattern = _VALUE_START.get(task)
    if pattern is None:
        return []
    return [m.end() for m in pattern.finditer(answer) if m.end() < len(answer)]


_JSON_VALUE = re.compile(rb'": "([^"]*)"')


def ambiguous_offsets(prompt: bytes, answer: bytes) -> list[int]:
    """Byte offsets in a Text2JSON ``answer`` where copying from ``prompt`` has a choice to make:
    inside each value, the bytes after a prefix of the value that occurs in the prompt followed by
    more than one different byte ("Silverpine " before "Robotics" and "Analytics"). A copy head
    that has matched the prefix must look further back (which entity is this?) to pick. The first
    byte of each value is ``decision_offsets``' and not repeated here."""
    out = []
    for m in _JSON_VALUE.finditer(answer):
        value, start = m.group(1), m.start(1)
        for n in range(1, len(value)):
            follow = {prompt[i + n] for i in _occurrences(prompt, value[:n]) if i + n < len(prompt)}
            if len(follow) > 1:
                out.append(start + n)
            elif not follow:
                break  # a prefix the prompt does not hold (or holds once at its end): nothing after it either
    return out


def _occurrences(text: bytes, sub: bytes) -> list[int]:
    at, i = [], text.find(sub)
    while i >= 0:
        at.append(i)
        i = text.find(sub, i + 1)
    return at


# A batch's length is a multiple of ALIGN: torch.compile specializes its graph on length % 8 (a
# second compilation mid-run otherwise), and aligned rows suit the tensor cores.
ALIGN = 8


@dataclass
class Batch:
    ids: torch.Tensor  # [B, T] int64 inputs
    targets: torch.Tensor  # [B, T] int64 next tokens
    weights: torch.Tensor  # [B, T] float32 loss weights
    context: int
    answer: torch.Tensor  # [B, T] bool: the target is an answer token (whatever its weight)
    drill: bool = False  # a binding-drill batch (DRILL_CONTEXT, DRILL_ENTITIES)


def make_batch(seed: int, step: int, progress: float | None, batch_tokens: int, prompt_weight: float,
               mix: Mix | None = None, decision_weight: float = 1.0, drill: float = 0.0,
               ambiguous: bool = False) -> Batch:
    """Batch ``step`` of the run: samples until they hold ``batch_tokens`` tokens, of one context length
    drawn from the curriculum's range at ``progress`` (fraction of the curriculum done; None: warm-up).
    Answer tokens weigh 1, except ``decision_offsets``' tokens (and with ``ambiguous``, Text2JSON's
    ``ambiguous_offsets``), which weigh ``decision_weight``.
    From DRILL_FROM on, a ``drill`` share of the batches are binding drills instead (DRILL_CONTEXT)."""
    rng = random.Random(f"train/{seed}/{step}")
    (lo, hi), mix = phase(progress, mix)
    entities = None
    # Draw only when drilling, so runs without --drill keep their exact batches.
    is_drill = drill > 0 and progress is not None and progress >= DRILL_FROM and rng.random() < drill
    if is_drill:
        (lo, hi), mix, entities = DRILL_CONTEXT, (("text2json", 1.0),), DRILL_ENTITIES
    ctx = rng.randint(lo, hi)
    seqs, wts, prompt_lens = [], [], []
    j = tokens = 0
    while tokens < batch_tokens:  # real tokens, so short copy samples count as short
        task = rng.choices([t for t, _ in mix], [w for _, w in mix])[0]
        sample, answer = make_sample(task, ctx, f"train/{seed}/{step}/{j}", entities=entities)
        encoded = answer.encode("utf-8")
        p, a = encode_prompt(sample["prompt"]), list(encoded) + [EOS]
        answer_w = [1.0] * len(a)
        if decision_weight != 1.0:
            for i in decision_offsets(task, encoded):
                answer_w[i] = decision_weight
            if ambiguous and task == "text2json":
                for i in ambiguous_offsets(sample["prompt"].encode("utf-8"), encoded):
                    answer_w[i] = decision_weight
        seqs.append(p + a)
        prompt_lens.append(len(p))
        wts.append([prompt_weight] * (len(p) - 1) + answer_w)  # weight of predicting token t+1
        j, tokens = j + 1, tokens + len(seqs[-1])
    T = -(-(max(len(s) for s in seqs) - 1) // ALIGN) * ALIGN  # trailing pads: weight 0, seen by no real token
    ids = torch.full((len(seqs), T), PAD, dtype=torch.long)
    targets = torch.full((len(seqs), T), PAD, dtype=torch.long)
    weights = torch.zeros(len(seqs), T)
    answer = torch.zeros(len(seqs), T, dtype=torch.bool)
    for b, (s, w, n) in enumerate(zip(seqs, wts, prompt_lens)):
        ids[b, :len(s) - 1] = torch.tensor(s[:-1])
        targets[b, :len(s) - 1] = torch.tensor(s[1:])
        weights[b, :len(s) - 1] = torch.tensor(w)
        answer[b, n - 1:len(s) - 1] = True
    return Batch(ids, targets, weights, ctx, answer, is_drill)
