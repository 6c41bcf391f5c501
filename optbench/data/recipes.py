"""Named corpora: where each one comes from, how it is split, and its default tokenizer.

A recipe is plain data. `sources.py` reads it to find documents and `prepare.py` to tokenize them;
adding a corpus is one `register(Recipe(...))` call below.

Tiny Shakespeare also ships inside the package (`embedded.py`), so the default run works offline.

Split names are always `train`, `val` and `test`; `hub_splits` and `mirror` map them to the names a
source uses. A source without a `val` split has `data.val_fraction` of its train split carved off.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from optbench.data.embedded import Embedded
from optbench.errors import check_choice

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
"""Of input.txt at SHAKESPEARE_URL, which the package ships (optbench/data/assets/README.md)."""


@dataclass(frozen=True)
class Recipe:
    """How to obtain one corpus, remotely through HF `datasets` or from an offline mirror folder."""

    name: str
    description: str
    tokenizer: str = "gpt2"
    """Default tokenizer spec (see `tokenizers.make_tokenizer`)."""
    hub_path: str = ""
    """`datasets.load_dataset` path: a hub dataset id, or a builder such as "text" with `hub_data_files`."""
    hub_config: str | None = None
    hub_data_files: str | None = None
    hub_revision: str | None = None
    text_field: str = "text"
    """Column holding the text, on the hub and in local .jsonl/.parquet files."""
    hub_splits: Mapping[str, str] = field(default_factory=lambda: {"train": "train"})
    """Our split -> the hub's split name. Without a `val` entry, val is carved off train."""
    mirror: Mapping[str, str] = field(default_factory=dict)
    """Our split -> a file relative to the offline mirror folder (data.mirror, e.g. ../shared/data)."""
    carve: str = "documents"
    """How val is carved off train: "documents" (hold out the last ones) or "chars" (nanoGPT's 90/10 cut)."""
    running_text: bool = False
    """Hub rows are lines of one running text (WikiText), so no end-of-text token goes between them."""
    embedded: Embedded | None = None
    """A copy shipped in the package, read when neither data.source nor the mirror holds the corpus."""


RECIPES: dict[str, Recipe] = {}


def register(recipe: Recipe) -> Recipe:
    """Add `recipe` to the registry under its name."""
    RECIPES[recipe.name] = recipe
    return recipe


def get_recipe(name: str) -> Recipe:
    """The recipe called `name`, or a UserError naming the closest registered ones."""
    check_choice("data.name", name, RECIPES)
    return RECIPES[name]


register(Recipe(
    name="shakespeare-char",
    description="Tiny Shakespeare, 1.1M characters, character-level (nanoGPT's shakespeare_char)",
    tokenizer="char",
    hub_path="text",
    hub_data_files=SHAKESPEARE_URL,
    mirror={"train": "tinyshakespeare/input.txt"},
    carve="chars",
    embedded=Embedded("tinyshakespeare.txt.xz", SHAKESPEARE_SHA256),
))
register(Recipe(
    name="tinystories",
    description="TinyStories: short synthetic stories in simple English (Eldan & Li, 2023)",
    hub_path="roneneldan/TinyStories",
    hub_splits={"train": "train", "val": "validation"},
))
register(Recipe(
    name="openwebtext",
    description="OpenWebText: 8M web pages linked from Reddit, the GPT-2 corpus recreated",
    hub_path="Skylion007/openwebtext",
    # The hub's main branch holds only a loading script, which datasets>=4 refuses to run;
    # the hub's automatic parquet conversion of the same data loads without it.
    hub_config="plain_text",
    hub_revision="refs/convert/parquet",
))
register(Recipe(
    name="wikitext-2",
    description="WikiText-2 (raw): 2M tokens of Wikipedia good articles",
    hub_path="Salesforce/wikitext",
    hub_config="wikitext-2-raw-v1",
    hub_splits={"train": "train", "val": "validation", "test": "test"},
    mirror={"val": "wikitext-2/valid.txt", "test": "wikitext-2/test.txt"},
    running_text=True,
))
register(Recipe(
    name="wikitext-103",
    description="WikiText-103 (raw): 103M tokens of Wikipedia good articles",
    hub_path="Salesforce/wikitext",
    hub_config="wikitext-103-raw-v1",
    hub_splits={"train": "train", "val": "validation", "test": "test"},
    running_text=True,
))
register(Recipe(
    name="slimpajama-6b",
    description="SlimPajama-6B: a 6B-token sample of the deduplicated RedPajama mix",
    hub_path="DKYoon/SlimPajama-6B",
    hub_splits={"train": "train", "val": "validation", "test": "test"},
))
register(Recipe(
    name="fineweb",
    description="FineWeb sample-10BT: 10B tokens of filtered, deduplicated CommonCrawl",
    hub_path="HuggingFaceFW/fineweb",
    hub_config="sample-10BT",
))
register(Recipe(
    name="fineweb-edu",
    description="FineWeb-Edu sample-10BT: 10B tokens of FineWeb pages scored as educational",
    hub_path="HuggingFaceFW/fineweb-edu",
    hub_config="sample-10BT",
))
register(Recipe(
    name="fineweb-edu-100bt",
    description="FineWeb-Edu sample-100BT: 100B tokens of FineWeb-Edu (Scaling-for-Scaling Stage 2's 16B-token runs)",
    hub_path="HuggingFaceFW/fineweb-edu",
    hub_config="sample-100BT",
))
register(Recipe(
    name="c4",
    description="C4 (en): the cleaned CommonCrawl corpus of T5",
    hub_path="allenai/c4",
    hub_config="en",
    hub_splits={"train": "train", "val": "validation"},
))
