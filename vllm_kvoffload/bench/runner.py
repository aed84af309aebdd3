"""Run samples through a client, resumably.

Layout of an output folder (invariants):
  config.json    what defines the samples and decoding; a resume must match it exactly.
  records.jsonl  one line per finished sample, appended and flushed as each completes,
                 so an interrupted run loses at most the requests in flight.
  summary.json   metrics over the records present, rewritten at the end of every run
                 (``complete`` is false when samples are still missing).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from vllm_kvoffload.bench.client import Client, RequestFailed


@dataclass
class Bench:
    name: str
    samples: list[dict]  # each has a unique "id" and a "prompt"; the rest is for scoring
    score: Callable[[str, dict], dict]  # (output, sample) -> per-sample metrics
    summarize: Callable[[list[dict]], dict]  # records -> aggregate metrics
    config: dict  # JSON-able settings that define samples and decoding


def load_records(path: Path, ids: set[str]) -> list[dict]:
    """Finished records of a previous run: drops a torn last line, unknown ids, failed ones."""
    if not path.exists():
        return []
    out, seen = [], set()
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill; its sample is redone
        if rec.get("id") in ids and rec["id"] not in seen and not rec.get("error"):
            seen.add(rec["id"])
            out.append(rec)
    return out


def percentiles(xs: list[float], ps=(50, 90, 99)) -> dict[str, float]:
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return {}
    out = {"mean": sum(xs) / len(xs)}
    for p in ps:  # nearest-rank on a linear interpolation, like numpy's default
        k = (len(xs) - 1) * p / 100
        lo, hi = math.floor(k), math.ceil(k)
        out[f"p{p}"] = xs[lo] + (xs[hi] - xs[lo]) * (k - lo)
    return out


def busy_seconds(records: list[dict]) -> float:
    """Length of the union of request intervals: wall time with work in flight (resume gaps excluded)."""
    total, end = 0.0, -math.inf
    for s, e in sorted((r["t_start"], r["t_end"]) for r in records):
        if s > end:
            total += e - s
        elif e > end:
            total += e - end
        end = max(end, e)
    return total


def timing(records: list[dict]) -> dict:
    ok = [r for r in records if not r.get("error")]
    if not ok:
        return {}
    busy = busy_seconds(ok)
    out_tok = sum(r["output_tokens"] for r in ok)
    return {
        "requests": len(ok), "busy_s": busy,
        "output_tokens": out_tok, "prompt_tokens": sum(max(0, r["prompt_tokens"]) for r in ok),
        "output_tok_s": out_tok / busy if busy > 0 else 0.0,
        "request_s": len(ok) / busy if busy > 0 else 0.0,
        "ttft_ms": {k: 1000 * v for k, v in percentiles([r["ttft"] for r in ok]).items()},
        "tpot_ms": {k: 1000 * v for k, v in percentiles([r["tpot"] for r in ok]).items()},
    }


def check_config(out: Path, config: dict, overwrite: bool) -> None:
    cfg_path = out / "config.json"
    if overwrite:
        for name in ("config.json", "records.jsonl", "summary.json"):
            (out / name).unlink(missing_ok=True)
    elif cfg_path.exists():
        old = json.loads(cfg_path.read_text())
        diff = [k for k in sorted(set(old) | set(config)) if old.get(k) != config.get(k)]
        if diff:
            k = diff[0]
            raise ValueError(f"{out} holds a run with other settings ({k}: {old.get(k)!r} there, "
                             f"{config.get(k)!r} now); pass another --output or --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(json.dumps(config, indent=1))


def write_summary(out: Path, bench: Bench, records: list[dict], extra: dict) -> dict:
    summary = {"benchmark": bench.name, "n_samples": len(bench.samples), "n_done": len(records),
               "n_errors": sum(1 for r in records if r.get("error")),
               "complete": len(records) == len(bench.samples),
               "metrics": bench.summarize(records) if records else {},
               "timing": timing(records), **extra, "config": bench.config}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


async def _run(bench: Bench, client: Client, out: Path, todo: list[dict], records: list[dict],
               concurrency: int, max_tokens: int, temperature: float, progress: bool) -> None:
    sem = asyncio.Semaphore(concurrency)

    async def one(sample: dict) -> dict:
        async with sem:
            rec = {"id": sample["id"]}
            try:
                c = await client.complete(sample["prompt"], max_tokens, temperature)
                rec |= {"output": c.text, "prompt_tokens": c.prompt_tokens,
                        "output_tokens": c.output_tokens, "ttft": c.ttft, "tpot": c.tpot,
                        "latency": c.latency, "t_start": c.t_start, "t_end": c.t_start + c.latency}
            except RequestFailed as err:
                rec |= {"output": "", "error": str(err)}
            return rec | bench.score(rec["output"], sample)

    tasks = [asyncio.ensure_future(one(s)) for s in todo]
    bar = tqdm(total=len(bench.samples), initial=len(records), desc=bench.name, disable=not progress,
               dynamic_ncols=True)
    try:
        with open(out / "records.jsonl", "a") as f:
            for fut in asyncio.as_completed(tasks):
                rec = await fut
                f.write(json.dumps(rec) + "\n")
                f.flush()
                records.append(rec)
                bar.update(1)
    finally:
        bar.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def run(bench: Bench, client: Client, out: str | Path, *, concurrency: int = 8, max_tokens: int = 256,
        temperature: float = 0.0, overwrite: bool = False, progress: bool = True) -> dict:
    """Run the samples not yet in ``out/records.jsonl``; returns (and writes) the summary.

    Ctrl-C or an unreachable server stops the run with every finished record kept and a
    partial summary written; rerunning the same command finishes the rest.
    """
    if concurrency < 1:
        raise ValueError(f"--concurrency {concurrency} must be >= 1")
    ids = [s["id"] for s in bench.samples]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{bench.name}: sample ids are not unique")
    out = Path(out)
    check_config(out, bench.config, overwrite)
    records = load_records(out / "records.jsonl", set(ids))
    (out / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    done = {r["id"] for r in records}
    todo = [s for s in bench.samples if s["id"] not in done]

    async def main():
        try:
            await client.resolve_model()
            await _run(bench, client, out, todo, records, concurrency, max_tokens, temperature, progress)
        finally:
            await client.close()

    t0 = time.time()
    try:
        asyncio.run(main())
    finally:  # also on Ctrl-C and errors: keep what finished
        summary = write_summary(out, bench, records, {"base_url": client.base_url,
                                                      "model": client.model, "run_s": time.time() - t0})
    return summary
