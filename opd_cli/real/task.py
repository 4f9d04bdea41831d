"""The real-model task: short factual questions with one-word answers, graded by ``answer_type="short"``.

Three in-domain families (a country's capital, a word's antonym, a noun's plural) that SmolLM2-135M-Instruct
answers in its first sentence ("The capital of France is Paris."), and one out-of-domain family (a number written
in words, to be written in digits). Splits are disjoint by *item*: a country, word or number of the test split is
never in the training prompts, so a gain on test is the student's skill healed, not facts memorised. Training
prompts use every phrasing of every training item; dev, test and ood one phrasing each, drawn by the seed.
Pure Python, no torch.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

SPLITS = ("train", "dev", "test", "ood")
FAMILIES = ("capital", "antonym", "plural")
PER_FAMILY = {"dev": 20, "test": 40}  # items of each in-domain family held out for dev and test
OOD_SIZE = 100

# Capitals: unambiguous ones only (no country with two or disputed capitals, none whose capital contains the
# country's name, which a restated question would match).
CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "China": "Beijing", "Russia": "Moscow", "Egypt": "Cairo", "Canada": "Ottawa",
    "Australia": "Canberra", "Kenya": "Nairobi", "Peru": "Lima", "Greece": "Athens", "Norway": "Oslo",
    "Poland": "Warsaw", "Sweden": "Stockholm", "Finland": "Helsinki", "Denmark": "Copenhagen", "Ireland": "Dublin",
    "Austria": "Vienna", "Hungary": "Budapest", "Belgium": "Brussels", "Switzerland": "Bern",
    "the Czech Republic": "Prague", "Romania": "Bucharest", "Bulgaria": "Sofia", "Serbia": "Belgrade",
    "Croatia": "Zagreb", "Ukraine": "Kyiv|Kiev", "Turkey": "Ankara", "Iran": "Tehran", "Iraq": "Baghdad",
    "Syria": "Damascus", "Lebanon": "Beirut", "Jordan": "Amman", "Saudi Arabia": "Riyadh", "India": "New Delhi|Delhi",
    "Pakistan": "Islamabad", "Bangladesh": "Dhaka", "Nepal": "Kathmandu", "Thailand": "Bangkok",
    "Vietnam": "Hanoi", "the Philippines": "Manila", "Indonesia": "Jakarta", "Malaysia": "Kuala Lumpur",
    "South Korea": "Seoul", "North Korea": "Pyongyang", "Mongolia": "Ulaanbaatar|Ulan Bator",
    "Afghanistan": "Kabul", "Argentina": "Buenos Aires", "Chile": "Santiago", "Colombia": "Bogota|Bogotá",
    "Venezuela": "Caracas", "Ecuador": "Quito", "Uruguay": "Montevideo", "Paraguay": "Asuncion|Asunción",
    "Cuba": "Havana", "Jamaica": "Kingston", "Brazil": "Brasilia|Brasília", "the United States": "Washington",
    "the United Kingdom": "London", "England": "London", "Scotland": "Edinburgh", "Wales": "Cardiff",
    "Iceland": "Reykjavik|Reykjavík", "Estonia": "Tallinn", "Latvia": "Riga", "Lithuania": "Vilnius",
    "Belarus": "Minsk", "Slovakia": "Bratislava", "Slovenia": "Ljubljana", "Albania": "Tirana",
    "Georgia": "Tbilisi", "Armenia": "Yerevan", "Azerbaijan": "Baku", "Uzbekistan": "Tashkent",
    "Ethiopia": "Addis Ababa", "Nigeria": "Abuja", "Ghana": "Accra", "Senegal": "Dakar", "Morocco": "Rabat",
    "Tunisia": "Tunis", "Libya": "Tripoli", "Sudan": "Khartoum", "Uganda": "Kampala", "Rwanda": "Kigali",
    "Zimbabwe": "Harare", "Zambia": "Lusaka", "Angola": "Luanda", "Mozambique": "Maputo",
    "Madagascar": "Antananarivo", "Somalia": "Mogadishu", "Cameroon": "Yaounde|Yaoundé", "Mali": "Bamako",
    "New Zealand": "Wellington", "Fiji": "Suva", "Qatar": "Doha", "Oman": "Muscat", "Yemen": "Sanaa|Sana'a",
    "the Netherlands": "Amsterdam", "Cyprus": "Nicosia", "Malta": "Valletta", "Finland's neighbour Sweden": "Stockholm",
    "Costa Rica": "San Jose|San José", "Honduras": "Tegucigalpa", "Nicaragua": "Managua", "Haiti": "Port-au-Prince",
    "Bhutan": "Thimphu", "Laos": "Vientiane", "Cambodia": "Phnom Penh", "Taiwan": "Taipei",
}  # fmt: skip
CAPITALS.pop("Finland's neighbour Sweden")  # (a duplicate kept out)

ANTONYMS = {
    "hot": "cold", "big": "small|little", "up": "down", "day": "night", "fast": "slow", "happy": "sad",
    "light": "dark|heavy", "old": "young|new", "open": "closed|shut", "early": "late", "wet": "dry", "hard": "soft|easy",
    "full": "empty", "high": "low", "rich": "poor", "strong": "weak", "tall": "short", "long": "short",
    "good": "bad|evil", "black": "white", "love": "hate", "win": "lose", "push": "pull", "in": "out", "inside": "outside",
    "top": "bottom", "left": "right", "first": "last", "begin": "end|finish", "start": "stop|finish|end", "true": "false",
    "alive": "dead", "clean": "dirty", "cheap": "expensive", "deep": "shallow", "thick": "thin", "wide": "narrow",
    "near": "far", "heavy": "light", "loud": "quiet|soft", "brave": "cowardly|afraid|scared", "friend": "enemy|foe",
    "give": "take|receive", "buy": "sell", "come": "go|leave", "enter": "exit|leave", "accept": "reject|refuse",
    "agree": "disagree", "always": "never", "before": "after", "above": "below|beneath", "north": "south",
    "east": "west", "summer": "winter", "sweet": "sour|bitter", "smooth": "rough", "sharp": "dull|blunt",
    "safe": "dangerous|unsafe", "war": "peace", "question": "answer", "laugh": "cry", "increase": "decrease",
    "arrive": "depart|leave", "remember": "forget", "success": "failure", "victory": "defeat", "minimum": "maximum",
    "public": "private", "ancient": "modern", "asleep": "awake", "polite": "rude|impolite", "noisy": "quiet",
    "sunny": "cloudy|rainy", "odd": "even", "forward": "backward|backwards", "inhale": "exhale", "import": "export",
    "positive": "negative", "major": "minor", "maximum": "minimum", "superior": "inferior", "visible": "invisible",
    "guilty": "innocent", "generous": "stingy|selfish|greedy", "humble": "proud|arrogant", "wild": "tame|domestic",
    "raw": "cooked", "solid": "liquid", "lazy": "hardworking|diligent|active", "fat": "thin|skinny", "Wise": "foolish",
    "beautiful": "ugly", "correct": "incorrect|wrong", "possible": "impossible", "legal": "illegal",
    "happy ending": "sad ending", "empty": "full", "dark": "light|bright", "slow": "fast|quick", "cold": "hot|warm",
}  # fmt: skip
for _k in ("Wise", "happy ending"):
    ANTONYMS.pop(_k)

# Plurals: irregular and spelling-rule nouns, none whose plural is the singular (sheep) or contains it unchanged
# as a whole word.
PLURALS = {
    "child": "children", "mouse": "mice", "man": "men", "woman": "women", "foot": "feet", "tooth": "teeth",
    "goose": "geese", "person": "people|persons", "ox": "oxen", "leaf": "leaves", "wolf": "wolves", "knife": "knives",
    "wife": "wives", "life": "lives", "half": "halves", "shelf": "shelves", "loaf": "loaves", "calf": "calves",
    "thief": "thieves", "city": "cities", "baby": "babies", "lady": "ladies", "story": "stories", "party": "parties",
    "country": "countries", "family": "families", "berry": "berries", "fly": "flies", "puppy": "puppies",
    "box": "boxes", "fox": "foxes", "bus": "buses|busses", "glass": "glasses", "dish": "dishes", "church": "churches",
    "watch": "watches", "brush": "brushes", "class": "classes", "kiss": "kisses", "wish": "wishes", "tax": "taxes",
    "potato": "potatoes", "tomato": "tomatoes", "hero": "heroes", "echo": "echoes", "cactus": "cacti|cactuses",
    "fungus": "fungi|funguses", "nucleus": "nuclei", "radius": "radii|radiuses", "crisis": "crises",
    "analysis": "analyses", "thesis": "theses", "axis": "axes", "phenomenon": "phenomena", "criterion": "criteria",
    "datum": "data", "index": "indices|indexes", "matrix": "matrices|matrixes", "cat": "cats", "dog": "dogs",
    "book": "books", "car": "cars", "tree": "trees", "house": "houses", "apple": "apples", "bird": "birds",
    "chair": "chairs", "table": "tables", "girl": "girls", "boy": "boys", "key": "keys", "day": "days", "toy": "toys",
    "monkey": "monkeys", "valley": "valleys", "horse": "horses", "river": "rivers", "cup": "cups", "hat": "hats",
    "pen": "pens", "shoe": "shoes", "ship": "ships", "star": "stars", "flower": "flowers", "window": "windows",
    "egg": "eggs", "lion": "lions", "bench": "benches", "beach": "beaches", "bush": "bushes", "wolf cub": "wolf cubs",
    "die": "dice|dies", "louse": "lice", "cherry": "cherries", "army": "armies", "body": "bodies", "copy": "copies",
}  # fmt: skip
PLURALS.pop("wolf cub")

PHRASINGS = {
    "capital": ("What is the capital of {x}?", "Which city is the capital of {x}?", "Name the capital city of {x}."),
    "antonym": ("What is the opposite of the word '{x}'?", "Give the antonym of '{x}'.",
                "What word means the opposite of '{x}'?"),
    "plural": ("What is the plural of '{x}'?", "Write the plural form of the word '{x}'.",
               "What is the plural form of '{x}'?"),
    "number": ("Write the number {x} in digits.", "How is {x} written in digits?", "Write {x} as a number."),
}
FAMILY_ITEMS = {"capital": CAPITALS, "antonym": ANTONYMS, "plural": PLURALS}

ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen").split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    """English words of ``0 <= n < 1000``: 342 -> 'three hundred forty-two'."""
    if not 0 <= n < 1000:
        raise ValueError(f"number_words takes 0 <= n < 1000, got {n}")
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else "-" + ONES[n % 10])
    rest = n % 100
    return ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + number_words(rest))


def _row(family: str, item: str, answer: str, phrasing: int, split: str) -> dict[str, Any]:
    return {"id": f"{family}-{item.replace(' ', '_')}-{phrasing}", "question": PHRASINGS[family][phrasing].format(x=item),
            "answer": answer, "answer_type": "short", "family": family, "item": item, "split": split}


def make_splits(seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """The four splits as rows (id, question, answer, answer_type, family, item): dev and test hold
    ``PER_FAMILY`` items of each in-domain family, train every phrasing of the rest, ood ``OOD_SIZE`` numbers."""
    rng = random.Random(seed)
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for family in FAMILIES:
        items = sorted(FAMILY_ITEMS[family].items())
        rng.shuffle(items)
        n_dev, n_test = PER_FAMILY["dev"], PER_FAMILY["test"]
        for split, part in (("dev", items[:n_dev]), ("test", items[n_dev : n_dev + n_test])):
            out[split] += [_row(family, x, a, rng.randrange(len(PHRASINGS[family])), split) for x, a in part]
        out["train"] += [_row(family, x, a, k, "train") for x, a in items[n_dev + n_test :] for k in range(len(PHRASINGS[family]))]
    numbers = rng.sample(range(21, 1000), OOD_SIZE)  # above twenty: a word the question spells out in full
    out["ood"] = [_row("number", number_words(n), str(n), rng.randrange(3), "ood") for n in numbers]
    for split in ("train", "dev", "test"):
        rng.shuffle(out[split])
    return out


def write_splits(folder: Path, seed: int = 0) -> dict[str, int]:
    """data/<split>.jsonl for each split under ``folder``; returns the row count of each."""
    folder.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for split, rows in make_splits(seed).items():
        with open(folder / f"{split}.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps(r, sort_keys=True) + "\n")
        sizes[split] = len(rows)
    return sizes
