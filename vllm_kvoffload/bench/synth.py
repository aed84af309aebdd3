"""Seeded synthetic text: distractor prose, entities, and fitting a prompt to a token length.

Everything here takes a ``random.Random`` so one seed gives one text, byte for byte.
Word lists for entities and for distractor prose are disjoint, so distractor text
never spells out an entity name or field value.
"""

from __future__ import annotations

import random
from typing import Callable

# ---- distractor prose --------------------------------------------------------------

_PLACES = ["the harbour district", "the old town", "the northern suburbs", "the river valley",
           "the business park", "the university quarter", "the coastal road", "the market square"]
_ACTORS = ["city planners", "local residents", "the transport authority", "a group of volunteers",
           "the regional council", "several shop owners", "the weather service", "commuters",
           "the school board", "parents and teachers", "a panel of engineers", "tourists"]
_ACTS = ["discussed plans to widen", "raised concerns about", "celebrated the reopening of",
         "published a report on", "voted to postpone work on", "began a survey of",
         "asked for more funding for", "organised a clean-up of", "proposed changes to",
         "complained about delays at"]
_THINGS = ["the pedestrian bridge", "the public library", "the bus terminal", "the swimming pool",
           "the community garden", "the main square", "the night market", "the cycling lanes",
           "the recycling centre", "the concert hall", "the ferry pier", "the sports ground"]
_TIMES = ["on Monday", "last week", "earlier this month", "over the weekend", "in the spring",
          "after a long debate", "during the annual meeting", "late on Thursday", "this autumn"]
_TAILS = ["Most people seemed satisfied with the outcome.",
          "Further meetings are expected before the end of the year.",
          "Critics argued that the timeline was too optimistic.",
          "The decision was welcomed by nearby businesses.",
          "Heavy rain slowed progress for several days.",
          "Officials promised to publish updates online.",
          "Attendance was higher than in previous years.",
          "A final vote has not yet been scheduled.",
          "Some residents said they had not been consulted.",
          "The local newspaper covered the story in detail."]


def sentence(rng: random.Random) -> str:
    s = (f"{rng.choice(_TIMES).capitalize()}, {rng.choice(_ACTORS)} in {rng.choice(_PLACES)} "
         f"{rng.choice(_ACTS)} {rng.choice(_THINGS)}.")
    return s if rng.random() < 0.6 else f"{s} {rng.choice(_TAILS)}"


# ---- entities: exactly 3 string fields, one of them "name" --------------------------

_BRANDS = ["Novatek", "Brightline", "Kestrel", "Lumora", "Orbis", "Vantix", "Solenne", "Quillon",
           "Arcwell", "Zephra", "Halvard", "Corvina", "Nimbra", "Tessaro"]
_MODELS = ["AeroBlend", "PixelPro", "StrideMax", "ThermoCup", "EchoBud", "FlexiDesk", "GlowLamp",
           "TrailPack", "AquaPure", "SnapCam", "CoreBook", "BreezeFan", "ChefMate", "RoamBike"]
_CATEGORIES = ["kitchen appliance", "headphones", "running shoes", "desk lamp", "backpack",
               "water filter", "camera", "laptop", "electric fan", "bicycle", "smart watch"]
_FIRST = ["Amelia", "Rajesh", "Sofia", "Kwame", "Ingrid", "Mateo", "Yuki", "Aoife", "Lucas",
          "Priya", "Tomasz", "Chloe", "Hassan", "Elena", "Noah", "Fatima", "Oskar", "Mei"]
_LAST = ["Hartmann", "O’Connor", "Nakamura", "Okafor", "Lindqvist", "Moreno", "D’Souza", "Kowalski",
         "Fitzgerald", "Haddad", "Petrova", "Brennan", "Castillo", "Varga", "O’Neill", "Achebe"]
_SPECIALTIES = ["cardiology", "dermatology", "neurology", "oncology", "pediatrics", "radiology",
                "orthopedics", "psychiatry", "endocrinology", "ophthalmology"]
_HOSPITALS = ["Riverside General Hospital", "St. Mary’s Medical Center", "Northgate Clinic",
              "Lakeview University Hospital", "Cedar Hill Infirmary", "St. Luke’s Hospital",
              "Harborview Health Centre", "Westbrook Children’s Hospital"]
_ORG_A = ["Bluewater", "Silverpine", "Redstone", "Greenfield", "Ironbridge", "Clearpath",
          "Northwind", "Goldcrest", "Stonegate", "Brightwater", "Oakridge", "Summit"]
_ORG_B = ["Analytics", "Logistics", "Foods", "Robotics", "Energy", "Capital", "Biotech",
          "Media", "Textiles", "Aerospace", "Shipping", "Software"]
_ORG_C = ["Group", "Inc.", "Holdings", "Partners", "Ltd.", "Cooperative", "Labs", "Foundation"]
_CITIES = ["Rotterdam", "Nairobi", "Osaka", "Toronto", "Valparaíso", "Tallinn", "Brisbane",
           "Lyon", "Hyderabad", "Denver", "Krakow", "Cape Town", "Montevideo", "Seoul"]
_MOVIE_A = ["The Silent", "Beyond the", "A Winter’s", "The Last", "Echoes of the", "Under the",
            "The Glass", "Children of the", "Return to the", "The Midnight"]
_MOVIE_B = ["Harbor", "Orchard", "Lighthouse", "Frontier", "Garden", "Monsoon", "Carnival",
            "Meridian", "Tide", "Archive", "Compass", "Avalanche"]

KINDS = {  # kind -> (the two non-name fields, phrasing templates for one mention)
    "products": (("category", "price"), [
        "Shoppers looking for a new {category} kept asking about the {name}, which now sells for {price}.",
        "The {name} is a {category} that retailers list at {price}.",
        "At the trade fair the {name} ({category}) drew a crowd; its price is {price}.",
    ]),
    "doctors": (("specialty", "hospital"), [
        "{name}, who practises {specialty}, sees patients at {hospital}.",
        "Patients at {hospital} recommend {name} for {specialty}.",
        "In an interview, {name} talked about a career in {specialty} at {hospital}.",
    ]),
    "organizations": (("headquarters", "founded"), [
        "{name}, founded in {founded}, has its headquarters in {headquarters}.",
        "Analysts noted that {name} (headquarters: {headquarters}) has operated since {founded}.",
        "Established in {founded}, {name} is based in {headquarters}.",
    ]),
    "movies": (("director", "year"), [
        "{name}, directed by {director}, was released in {year}.",
        "Critics still discuss {name}, the {year} film by {director}.",
        "In {year}, {director} released {name} to mixed reviews.",
    ]),
}


def _person(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"


def _entity(kind: str, rng: random.Random) -> dict[str, str]:
    if kind == "products":
        return {"name": f"{rng.choice(_BRANDS)} {rng.choice(_MODELS)} {rng.randint(2, 99) * 10}",
                "category": rng.choice(_CATEGORIES), "price": f"${rng.randint(15, 1999)}.{rng.randint(0, 99):02d}"}
    if kind == "doctors":
        return {"name": f"Dr. {_person(rng)}", "specialty": rng.choice(_SPECIALTIES),
                "hospital": rng.choice(_HOSPITALS)}
    if kind == "organizations":
        return {"name": f"{rng.choice(_ORG_A)} {rng.choice(_ORG_B)} {rng.choice(_ORG_C)}",
                "headquarters": rng.choice(_CITIES), "founded": str(rng.randint(1850, 2020))}
    if kind == "movies":
        return {"name": f"{rng.choice(_MOVIE_A)} {rng.choice(_MOVIE_B)}", "director": _person(rng),
                "year": str(rng.randint(1950, 2024))}
    raise ValueError(f"unknown entity kind {kind!r}; accepted: {', '.join(KINDS)}")


def entities(kind: str, n: int, rng: random.Random) -> list[dict[str, str]]:
    """``n`` entities of one kind with distinct names (key order: name, then the two fields)."""
    out, names = [], set()
    for _ in range(1000 * n):
        if len(out) == n:
            break
        e = _entity(kind, rng)
        if e["name"] not in names and not any(e["name"] in m or m in e["name"] for m in names):
            names.add(e["name"])
            out.append(e)
    if len(out) < n:
        raise ValueError(f"cannot draw {n} distinct {kind}")
    return out


def mention(kind: str, e: dict[str, str], rng: random.Random) -> str:
    return rng.choice(KINDS[kind][1]).format(**e)


# ---- fitting to a token length ----------------------------------------------------------

def fit(count: Callable[[str], int], target: int, build: Callable[[list[str]], str],
        rng: random.Random, what: str = "prompt") -> str:
    """The longest ``build(filler)`` of at most ``target`` tokens, ``filler`` a prefix of
    seeded distractor sentences (the last one may be cut at a word boundary).

    ``build`` must keep every fixed part (instructions, entities, needles) whatever the
    filler, so token count grows with the filler. Result: target - one word <= tokens <= target.
    """
    base = count(build([]))
    if base > target:
        raise ValueError(f"--context-tokens {target} is too small: the {what} without any "
                         f"filler already takes {base} tokens; accepted: >= {base}")
    sents: list[str] = []
    while count(build(sents)) < target:  # grow geometrically until we overshoot
        need = max(8, len(sents))
        sents += [sentence(rng) for _ in range(need)]
    words = [(i, w) for i, s in enumerate(sents) for w in s.split(" ")]

    def filler(k: int) -> list[str]:  # first k words, regrouped into sentences
        out: list[list[str]] = []
        for i, w in words[:k]:
            if len(out) <= i:
                out.append([])
            out[-1].append(w)
        res = [" ".join(ws) for ws in out]
        if res and not res[-1].endswith("."):
            res[-1] += "."
        return res

    lo, hi = 0, len(words)  # invariant: count(build(filler(lo))) <= target
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(build(filler(mid))) <= target:
            lo = mid
        else:
            hi = mid - 1
    return build(filler(lo))


def place(filler: list[str], inserts: list[tuple[float, str]]) -> list[str]:
    """Insert ``(depth, text)`` pairs into a sentence list; depth in [0, 1] is the
    fraction of filler before the insert. Inserts keep their order at equal depth."""
    out, n = list(filler), len(filler)
    for depth, text in reversed(sorted(inserts, key=lambda x: x[0])):  # back to front
        out.insert(round(depth * n), text)
    return out


def paragraphs(sents: list[str], per: int = 5) -> str:
    return "\n\n".join(" ".join(sents[i:i + per]) for i in range(0, len(sents), per))
