"""LongProc-style html-to-TSV: a long HTML page lists records among unrelated markup; the
model writes one TSV row per record. Row-level F1 (rows compared whole, cells trimmed)."""

from __future__ import annotations

import html
import random
import re
from collections import Counter

from vllm_kvoffload.bench import synth

_HEAD = ("<html><head><title>{title}</title><script>function track(e){{log.push(e)}}</script>"
         "</head><body>\n<nav><a href=\"/\">Home</a> | <a href=\"/news\">News</a></nav>\n<main>\n")
_FOOT = "\n</main>\n<footer>&copy; City Gazette</footer></body></html>"

_PROMPT = """Extract information from this HTML webpage as a TSV table.
```html
{page}
```
The webpage lists {kind}. For each of them, in page order, extract: {props}.
Output only TSV, one row per item, properties separated by a tab, no HTML tags:
```tsv
{header}
{{your rows}}
```"""


def _card(e: dict[str, str], fields: tuple[str, str]) -> str:
    esc = lambda s: html.escape(s, quote=False)  # noqa: E731
    lis = "".join(f"<li><b>{f.capitalize()}:</b> <span class=\"{f}\">{esc(e[f])}</span></li>" for f in fields)
    return f"<div class=\"item\"><h3 class=\"name\">{esc(e['name'])}</h3><ul>{lis}</ul></div>"


def generate(n: int, context_tokens: int, seed: int, count, *, rows: tuple[int, int] = (3, 20)) -> list[dict]:
    """``n`` pages of ``context_tokens`` tokens, each listing ``rows`` records of one kind
    (count capped so the page without filler takes at most 80% of the context)."""
    out = []
    for i in range(n):
        rng = random.Random(f"html2tsv/{seed}/{i}")
        kind = list(synth.KINDS)[i % len(synth.KINDS)]
        fields = synth.KINDS[kind][0]
        ents = synth.entities(kind, rng.randint(*rows), rng)
        cards = [_card(e, fields) for e in ents]
        depths = sorted(rng.random() for _ in cards)  # page order == gold row order
        header = "\t".join(("name", *fields))
        props = "; ".join(f"({j + 1}) {f}" for j, f in enumerate(("name", *fields)))

        def build(filler, cards=cards, depths=depths, kind=kind, header=header, props=props):
            body = synth.place([f"<p>{s}</p>" for s in filler], list(zip(depths, cards)))
            page = _HEAD.format(title=f"{kind.capitalize()} - City Gazette") + "\n".join(body) + _FOOT
            return _PROMPT.format(page=page, kind=kind, props=props, header=header)

        while len(cards) > 1 and count(build([])) > 0.8 * context_tokens:  # leave room for filler
            del ents[-1], cards[-1], depths[-1]

        prompt = synth.fit(count, context_tokens, build, rng, what=f"html2tsv page {i}")
        gold = header + "\n" + "\n".join("\t".join(e[f] for f in ("name", *fields)) for e in ents)
        out.append({"id": f"{seed}-{i}", "prompt": prompt, "gold": gold})
    return out


def parse_rows(text: str) -> list[tuple[str, ...]]:
    """TSV rows of an answer: the first ```tsv (or ```) block if any, else the whole text;
    blank lines dropped, cells trimmed with inner whitespace collapsed."""
    m = re.search(r"```(?:tsv)?[^\n]*\n(.*?)(?:```|$)", text, re.S)
    body = m.group(1) if m else text
    return [tuple(" ".join(c.split()) for c in line.split("\t")) for line in body.splitlines() if line.strip()]


def row_f1(output: str, gold: str) -> dict:
    """Precision, recall and F1 of predicted rows against gold rows (multisets; header excluded)."""
    head, *want = parse_rows(gold)
    got = [r for r in parse_rows(output) if tuple(c.lower() for c in r) != tuple(c.lower() for c in head)]
    hit = sum((Counter(got) & Counter(want)).values())
    p = hit / len(got) if got else 0.0
    r = hit / len(want) if want else 1.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def score_one(output: str, sample: dict) -> dict:
    return row_f1(output, sample["gold"])


def summarize(records: list[dict]) -> dict:
    n = len(records)
    return {k: 100 * sum(r[k] for r in records) / n for k in ("f1", "precision", "recall")}
