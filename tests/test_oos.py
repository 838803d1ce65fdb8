"""Out-of-source evaluation sets: every target has one, every one builds (after `make install`),
none shares text with an embedded corpus, and none can be profiled, referenced or trained on."""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

import pytest
from clirun import assert_clean_error, cli

from monet_edit import corpora
from monet_edit._version import __version__
from monet_edit.corpora import lexicon, manpages, oos_registry, oos_store, registry, sources, store
from monet_edit.corpora.oos_registry import Part
from monet_edit.errors import UsageError

EMBEDDED_CODE = ("registry.py", "sources.py", "store.py", "labels.py", "../data/mmlu_subject_to_category.json")


def _embedded_key() -> str:
    """Keys the shared build of the embedded corpora: the code that makes them and the version."""
    h = hashlib.sha256(__version__.encode())
    base = resources.files("monet_edit.corpora")
    for name in EMBEDDED_CODE:
        h.update(base.joinpath(name).read_bytes())
    return h.hexdigest()[:16]


@pytest.fixture(scope="session")
def oos_home(request, tmp_path_factory) -> Path:
    """A MONET_EDIT_HOME in which every OOS set was just built. The embedded corpora the guard
    compares against are built once into pytest's cache (keyed by their code) and linked in; the
    OOS sets themselves are built anew every session."""
    shared = Path(request.config.cache.mkdir(f"monet-edit-embedded-{_embedded_key()}"))
    home = tmp_path_factory.mktemp("oos-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MONET_EDIT_CORPORA", raising=False)  # corpora under each home, not the session's cache
        mp.setenv("MONET_EDIT_HOME", str(shared))
        oos_store.embedded_fingerprints()  # builds what is not cached yet
        (home / "corpora").mkdir()
        for d in sorted((shared / "corpora").iterdir()):
            if d.is_dir() and not d.name.startswith(".") and not d.name.endswith("@oos"):
                (home / "corpora" / d.name).symlink_to(d)
        mp.setenv("MONET_EDIT_HOME", str(home))
        for spec in corpora.list_oos():
            oos_store.build(spec.name)
    return home


@pytest.fixture
def built(oos_home, monkeypatch) -> dict[str, corpora.OosSet]:
    monkeypatch.setenv("MONET_EDIT_HOME", str(oos_home))
    monkeypatch.delenv("MONET_EDIT_CORPORA")  # conftest's shared cache: this home holds its own
    out = {s.name: oos_store.cached(s.name) for s in corpora.list_oos()}
    assert all(out.values()), [n for n, b in out.items() if b is None]
    return out


# ----------------------------------------------------------------------------- registry


def test_every_target_has_an_available_oos_set_from_another_source():
    targets = [s.name for s in corpora.list_corpora()]
    names = [corpora.oos_name(t) for t in targets]
    assert None not in names and len(set(names)) == len(names) == 28
    assert names[-1] == "retain@oos" and corpora.oos_name("general") == "retain@oos"
    assert corpora.oos_name("German") == "de@oos" and corpora.oos_name("computer science") == "computer_science@oos"
    assert corpora.oos_name("/no/such/corpus") is None
    assert corpora.oos_names() == names
    for target, name in zip(targets, names, strict=True):
        spec = oos_registry.get_oos(name)
        assert spec.target == target and spec.corpus_spec().kind == registry.get_spec(target).kind
        own = registry.get_spec(target).source
        assert own not in spec.source and spec.source not in own, (name, own, spec.source)
        ok, detail = oos_registry.availability(name)
        assert ok, f"{name} unavailable: {detail} (run `make install`)"
    # the packages of the embedded corpora feed no OOS set
    embedded = {registry.get_spec(t).source for t in targets if t != "general"}
    for spec in corpora.list_oos():
        for part in spec.parts:
            assert not any(e in part.source for e in embedded), (spec.name, part.source)


def test_oos_names_are_refused_wherever_a_profile_or_training_corpus_is_named(tmp_path):
    line = "law@oos is an out-of-source evaluation set: it is never used for profiles, references"
    for call in (lambda: corpora.open_corpus("law@oos"), lambda: corpora.build("law@oos"),
                 lambda: corpora.get_spec("LAW@OOS"), lambda: corpora.cached("law@oos"),
                 lambda: corpora.load_split("law@oos", "profile")):  # fmt: skip
        with pytest.raises(UsageError) as exc:
            call()
        assert str(exc.value).startswith(line) and "\n" not in str(exc.value)
    with pytest.raises(UsageError, match="unknown out-of-source set 'laww@oos'; did you mean law@oos"):
        corpora.open_corpus("laww@oos", for_eval=True)


def test_profile_cache_and_cli_refuse_oos_sets(built, tiny_ckpt):
    from monet_edit import profiling

    with pytest.raises(UsageError, match="de@oos is an out-of-source evaluation set"):
        profiling.ensure_profiles(str(tiny_ckpt), ["de@oos"], tokens=64, seq_len=16)
    home = str(Path(built["law@oos"].dir).parent.parent)
    res = cli("profile", "--model", tiny_ckpt, "--domain", "law@oos", "--tokens", "64", env={"MONET_EDIT_HOME": home})
    assert_clean_error(res, 2, "law@oos is an out-of-source evaluation set")
    # the built files, read back as a user corpus, are refused too
    res = cli("profile", "--model", tiny_ckpt, "--corpus", built["law@oos"].path("eval"), "--tokens", "64",
              env={"MONET_EDIT_HOME": home})  # fmt: skip
    assert_clean_error(res, 2, "law@oos is an out-of-source evaluation set")
    with pytest.raises(UsageError, match="python@oos is an out-of-source evaluation set"):
        corpora.user_corpus(built["python@oos"].dir)


# ----------------------------------------------------------------------------- builds


def test_every_oos_set_builds_non_empty_eval_only_and_capped(built):
    for name, b in built.items():
        spec = oos_registry.get_oos(name)
        docs = b.load("eval")
        assert docs and b.counts == {"eval": len(docs)}, name
        assert b.chars["eval"] == sum(len(d["text"]) for d in docs)
        # each part stops at the first document that reaches its share: at most one document over
        assert b.chars["eval"] <= spec.cap_chars + len(spec.parts) * sources.CODE_DOC_CHARS, name
        assert len({d["id"] for d in docs}) == len(docs) and len({d["text"] for d in docs}) == len(docs), name
        assert all(d["text"].strip() for d in docs)
        assert b.meta["target"] == spec.target and b.meta["checked_against"]
        assert set(b.meta["parts"]) == {p.key for p in spec.parts}
        for split in ("train", "profile"):
            with pytest.raises(UsageError, match=f"{name} is an out-of-source evaluation set: it has only an eval"):
                b.load(split)
        assert not (b.dir / "train.jsonl").exists() and not (b.dir / "profile.jsonl").exists()
    sizes = {n: b.chars["eval"] for n, b in built.items()}
    assert min(sizes.values()) >= 40_000, sizes
    code = built["go@oos"].load("eval")
    assert "func " in "".join(d["text"] for d in code) and "goldmark" in code[0]["path"] + "".join(
        d["path"] for d in code)  # fmt: skip
    assert "ß" in "".join(d["text"] for d in built["de@oos"].load("eval"))


def test_domain_sets_are_disjoint(built):
    """A definition that fits several domains belongs to one set only (the first in registry order)."""
    owner: dict[str, str] = {}
    for name in registry.DOMAINS:
        for doc in built[f"{name}@oos"].load("eval"):
            for entry in doc["text"].split("\n\n"):
                key = " ".join(entry.split())
                if len(key) >= 40 and doc["part"] in ("gcide", "wordnet"):
                    assert owner.setdefault(key, name) == name, (key[:80], owner[key], name)


def test_toxicity_oos_set_has_weakly_labelled_toxic_and_clean_prompts(built):
    from monet_edit.evaluation.suites.toxicity import select_prompts

    docs = built["toxicity@oos"].load("eval")
    labels = [d["label"] for d in docs]
    assert sum(x >= 0.5 for x in labels) == sum(x < 0.5 for x in labels) >= 100
    prompts = select_prompts(docs, 100)
    assert len(prompts["toxic"]) >= 50 and len(prompts["nontoxic"]) == 100
    assert "WEAK" in oos_registry.get_oos("toxicity@oos").description


def test_retain_set_mixes_every_other_set(built):
    docs = built["retain@oos"].load("eval")
    sets = {d["set"] for d in docs}
    assert sets == set(built) - {"retain@oos"}
    for d in docs:
        assert d["target"] == oos_registry.get_oos(d["set"]).target
    texts = {name: {x["text"] for x in b.load("eval")} for name, b in built.items()}
    assert all(d["text"] in texts[d["set"]] for d in docs)
    by_set: dict[str, int] = {}
    for d in docs:
        by_set[d["set"]] = by_set.get(d["set"], 0) + len(d["text"])
    assert max(by_set.values()) < 4 * min(by_set.values()), by_set  # equal shares, whole documents


def test_no_oos_document_shares_text_with_an_embedded_corpus(built):
    """The guard, checked independently: hash every embedded document and long paragraph again."""
    seen: set[str] = set()
    for spec in corpora.list_corpora():
        if spec.kind == "general":
            continue
        b = store.cached(spec.name)
        for split in ("train", "profile", "eval"):
            for doc in b.load(split):
                seen.add(" ".join(doc["text"].split()))
                seen.update(" ".join(p.split()) for p in doc["text"].split("\n\n") if len(" ".join(p.split())) >= 120)
    for name, b in built.items():
        for doc in b.load("eval"):
            assert " ".join(doc["text"].split()) not in seen, (name, doc["id"])
            for para in doc["text"].split("\n\n"):
                norm = " ".join(para.split())
                assert len(norm) < 120 or norm not in seen, (name, doc["id"])
        assert b.meta["checked_against"] == oos_store.embedded_fingerprints(build=False)


def test_guard_drops_copies_of_embedded_text_and_keeps_the_rest(built):
    index = oos_store._embedded_index(oos_store.guard_digest(oos_store.embedded_fingerprints()))
    de = store.cached("de").load("profile")
    para = next(p for d in de for p in d["text"].split("\n\n") if len(p) >= 200)
    fresh = [{"id": f"new{i}", "text": f"Ein ganz neuer Absatz Nummer {i}, den kein Korpus enthält."} for i in range(5)]
    docs = [{"id": "whole", "text": de[0]["text"]},  # an embedded document
            {"id": "inside", "text": "Vorwort.\n\n" + "  " + para.replace(" ", "  ") + "\n\nNachwort."},
            *fresh]  # fmt: skip
    part = Part("t", "test", "test", lambda: docs, lambda: True, "")
    kept, parts, dropped = oos_store._take((part,), 10_000, index)
    assert dropped == 2 and [d["id"] for d in kept] == [f"t/new{i}" for i in range(5)]
    assert parts["t"]["chars"] == sum(len(d["text"]) for d in fresh)


def test_cached_set_is_rebuilt_when_an_embedded_corpus_changes(built, monkeypatch):
    fps = dict(oos_store.embedded_fingerprints(build=False))
    assert oos_store.cached("law@oos", fps) is not None
    fps["law"] = "0" * 64
    assert oos_store.cached("law@oos", fps) is None


def test_open_corpus_for_eval_and_rebuild_is_deterministic(built):
    law = corpora.open_corpus("law@oos", for_eval=True)
    assert law.fingerprint == built["law@oos"].fingerprint and law.spec.kind == "domain"
    again = oos_store.build("python@oos", force=True)
    assert again.fingerprint == built["python@oos"].fingerprint
    assert sorted(p.name for p in again.dir.iterdir()) == ["eval.jsonl", "meta.json"]


# ----------------------------------------------------------------------------- CLI


def _corpora_cli(*args: str) -> tuple[int, str, str]:
    """The `corpora` sub-app in this process: (exit code, stdout, stderr or the error's line)."""
    import typer
    from typer.testing import CliRunner

    from monet_edit.cli.commands.corpora import app
    from monet_edit.errors import MonetEditError

    root = typer.Typer()
    root.add_typer(app, name="corpora")
    root.callback()(lambda: None)
    result = CliRunner().invoke(root, ["corpora", *args])
    if isinstance(result.exception, MonetEditError):
        return result.exception.exit_code, result.stdout, str(result.exception)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_cli_list_build_show(built):
    code, out, _ = _corpora_cli("list", "--json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 28 and all(r["oos"]["available"] and r["oos"]["built"] for r in rows)
    assert {r["name"]: r["oos"]["name"] for r in rows}["general"] == "retain@oos"
    code, out, err = _corpora_cli("list", "--kind", "language")
    assert code == 0 and out == "" and "out-of-source evaluation sets" in err and "de@oos" in err
    assert "law@oos" not in err
    code, out, _ = _corpora_cli("build", "law@oos", "--json")
    info = json.loads(out)
    assert info["name"] == "law@oos" and info["fingerprint"] == built["law@oos"].fingerprint
    assert info["counts"] == {"eval": built["law@oos"].counts["eval"]} and info["target"] == "law"
    code, out, _ = _corpora_cli("show", "de@oos", "--json")
    info = json.loads(out)
    assert info["built"] and info["sample"]["text"] and info["target"] == "de" and info["dropped_overlap"] >= 0
    code, out, err = _corpora_cli("show", "perl@oos")
    assert code == 0 and out == "" and "eval only" in err
    code, _, msg = _corpora_cli("show", "laww@oos")
    assert code == 2 and msg.startswith("unknown out-of-source set 'laww@oos'") and "\n" not in msg
    code, _, msg = _corpora_cli("build", "law@oos", "--source", "hub")
    assert code == 2 and "local sources only" in msg


# ----------------------------------------------------------------------------- readers


def test_roff_text_keeps_words_and_drops_markup():
    src = ('.\\" a comment\n.TH LS 1\n.SH BESCHREIBUNG\n.B ls\nlistet \\fIDateien\\fP auf \\(em schnell.\n'
           '.TP 8\n.BR \\-a ", " \\-\\-all\nzeigt auch versteckte.\n.de XX\ngeheim\n..\n')  # fmt: skip
    text = manpages.roff_text(src)
    assert text.splitlines() == ["BESCHREIBUNG", "", "ls", "listet Dateien auf — schnell.", "",
                                 "-a, --all", "zeigt auch versteckte."]  # fmt: skip


def test_gcide_markup_becomes_unicode():
    raw = 'Zo["o]logy \\Zo*["o]l"o*gy\\, n. (Zool.)\n   The science of animals; [ae]sthetic.\n   [1913 Webster]'
    assert lexicon.gcide_clean(raw) == "Zoölogy, n. (Zool.)\nThe science of animals; æsthetic."
    assert lexicon._b64("BA") == 64 and lexicon._b64("+/") == 62 * 64 + 63
