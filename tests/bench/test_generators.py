"""Synthetic generators: determinism, entity counts, token lengths, recoverable golds."""

import json
from collections import Counter

import pytest

from vllm_kvoffload.bench import html2tsv, needle, synth, text2json, throughput, tokens
from vllm_kvoffload.tiny_model import default_model_path


@pytest.fixture(scope="module")
def byte_count():
    return tokens.counter(str(default_model_path()))


@pytest.fixture(scope="module")
def bpe_count(tmp_path_factory):
    """A real merging BPE tokenizer (trained here, no download): tokens are not bytes."""
    import random

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    corpus = [synth.sentence(rng) for _ in range(2000)]
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=600, special_tokens=["[UNK]"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    path = tmp_path_factory.mktemp("bpe")
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(path)
    count = tokens.counter(str(path))
    assert count("the public library") < len("the public library") / 2  # merges happened
    return count


GENS = {"text2json": text2json.generate, "needle": needle.generate,
        "html2tsv": html2tsv.generate, "throughput": throughput.generate}


@pytest.mark.parametrize("name", GENS)
def test_same_seed_same_samples(name, byte_count):
    a, b = GENS[name](3, 1200, 7, byte_count), GENS[name](3, 1200, 7, byte_count)
    assert a == b
    c = GENS[name](3, 1200, 8, byte_count)
    assert [s["prompt"] for s in a] != [s["prompt"] for s in c]
    assert len({s["prompt"] for s in a}) == 3


@pytest.mark.parametrize("which", ["byte_count", "bpe_count"])
@pytest.mark.parametrize("name", GENS)
@pytest.mark.parametrize("target", [1200, 4000])
def test_length_within_5_percent(name, which, target, request):
    count = request.getfixturevalue(which)
    for s in GENS[name](3, target, 1, count):
        assert abs(count(s["prompt"]) - target) <= 0.05 * target, count(s["prompt"])


def test_text2json_shape_and_counts(byte_count):
    samples = text2json.generate(40, 8000, 3, byte_count)
    kinds = Counter(s["kind"] for s in samples)
    assert set(kinds) == {"products", "doctors", "organizations", "movies"}
    counts = []
    for s in samples:
        ents = json.loads(s["gold"])
        counts.append(len(ents))
        assert 3 <= len(ents) <= 20
        assert len({e["name"] for e in ents}) == len(ents)
        for e in ents:
            assert len(e) == 3 and "name" in e and all(isinstance(v, str) for v in e.values())
    assert min(counts) <= 5 and max(counts) >= 17  # the whole range is used
    assert text2json.score([s["gold"] for s in samples], [s["gold"] for s in samples]) == 100.0


def test_text2json_every_gold_entity_recoverable(byte_count):
    for s in text2json.generate(12, 3000, 5, byte_count):
        body = s["prompt"]
        templates = synth.KINDS[s["kind"]][1]
        for e in json.loads(s["gold"]):
            # the entity's own sentence, with all three values, is in the text verbatim
            assert any(t.format(**e) in body for t in templates), e
        assert all(f'"{k}"' in body for k in json.loads(s["gold"])[0])  # keys are named


def test_small_context_caps_entities_and_too_small_is_an_error(byte_count):
    for s in text2json.generate(8, 900, 0, byte_count):
        assert 3 <= len(json.loads(s["gold"])) <= 20
    with pytest.raises(ValueError, match="--context-tokens 100 is too small"):
        text2json.generate(1, 100, 0, byte_count)


def test_needles_recoverable_and_all_asked(byte_count):
    for s in needle.generate(5, 3000, 2, byte_count, needles=6):
        question = s["prompt"].rsplit("Question:", 1)[1]
        assert len(s["gold"]) == 6 and len({n["code"] for n in s["gold"]}) == 6
        for n in s["gold"]:
            assert f"The access code of {n['key']} is {n['code']}." in s["prompt"]
            assert n["key"] in question and n["code"] not in question
        depths = [n["depth"] for n in s["gold"]]
        assert depths == sorted(depths) and depths[0] < 1 / 6 and depths[-1] > 5 / 6


def test_html2tsv_rows_recoverable(byte_count):
    for s in html2tsv.generate(6, 4000, 4, byte_count):
        header, *rows = s["gold"].split("\n")
        assert 3 <= len(rows) <= 20 and header.startswith("name\t")
        pos = [s["prompt"].index(f'<h3 class="name">{r.split(chr(9))[0]}</h3>') for r in rows]
        assert pos == sorted(pos)  # page order is gold order
        for r in rows:
            assert all(f">{cell}<" in s["prompt"] for cell in r.split("\t"))
        assert html2tsv.row_f1(s["gold"], s["gold"])["f1"] == 1.0
