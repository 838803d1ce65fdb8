"""`run RECIPE`: recipe validation (every packaged recipe, every bad-input rule) and a run end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from clirun import assert_clean_error, cli
from test_eval import _shared_home, shared_home  # noqa: F401  (fixtures)

from monet_edit.editing import pipeline, verify
from monet_edit.errors import UsageError
from monet_edit.selection import targets

SMALL = """# monet-edit run {name}
[target]
kind = "{kind}"
name = "{target}"

[profile]
tokens = 1500
seq_len = 32
batch_size = 16
dir = "{profiles}"

[select]
{select}

[resect]
out = "{out}"

[eval]
suites = ["loss"]
tokens = 300
seq_len = 32
batch_size = 16

[gate]
conditions = [{gates}]
"""


def small_recipe(tmp_path: Path, gates: str = '"experts_masked>=1"', target: str = "python") -> Path:
    """python: skew with ratio 1 (never empty); toxicity: corr with a threshold of 0.01 (one profile)."""
    from monet_edit import corpora

    path = tmp_path / "small.toml"
    select = 'rule = "skew"\nratio = 1.0' if target == "python" else 'rule = "corr"\nthreshold = 0.01'
    path.write_text(SMALL.format(name=path, kind=corpora.get_spec(target).kind, target=target, select=select,
                                 profiles=Path(os.environ["MONET_EDIT_HOME"]) / "profiles",  # shared cache
                                 out=tmp_path / "edited", gates=gates))
    return path


def test_every_packaged_recipe_validates():
    files = sorted(pipeline.recipes_dir().glob("*.toml"))
    edit = [f for f in files if pipeline.is_edit_recipe(f)]
    assert {f.stem for f in edit} >= {"law", "python", "german", "toxicity"}
    for path in edit:
        recipe = pipeline.load(path)
        first = path.read_text().splitlines()[0]
        assert first == f"# monet-edit run recipes/{path.name}", first
        assert recipe.conditions, path  # every packaged recipe gates its headline number
    law = pipeline.load("law")
    assert (law.target.name, law.rule, law.rule_params) == ("law", "skew", {"ratio": 2.0})
    assert [str(c) for c in law.conditions] == ["oos_target_loss_rel_lo>=0.03", "oos_selectivity>=5"]
    tox = pipeline.load("toxicity")
    assert (tox.rule, tox.eval_params.suites) == ("corr", ("loss", "toxicity"))
    assert [str(c) for c in tox.conditions] == ["emt_rel<=-0.25", "emt_rel_hi<0", "general_loss_rel<=0.02"]
    assert pipeline.load("german").target.references == targets.default_references("de")  # every other corpus


def _edit(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new)


BAD = [
    ('name = "python"', 'name = "python"\ncolour = "red"', "unknown key target.colour"),
    ("tokens = 1500", 'tokens = "many"', "profile.tokens must be an integer"),
    ("tokens = 1500", "tokens = 0", "profile.tokens must be at least 1"),
    ("ratio = 1.0", 'ratio = "2"', "select.ratio must be a number"),
    ('rule = "skew"', 'rule = "magic"', "select.rule must be one of skew, corr, budget"),
    ("ratio = 1.0", "threshold = 0.1", "select.threshold applies to rule corr, not skew"),
    ("ratio = 1.0", "ratio = 0.5", "select.ratio must be a number >= 1"),
    ('kind = "language"', 'kind = "planet"', "target.kind must be one of"),
    ('name = "python"', 'name = "pythn"', "unknown corpus 'pythn'"),
    ('kind = "language"', 'kind = "domain"', "'python' is not a domain"),
    ('suites = ["loss"]', 'suites = ["loss", "speed"]', "unknown suite 'speed'"),
    ('suites = ["loss"]', 'suites = ["loss", 3]', "eval.suites must be a list of strings"),
    ('suites = ["loss"]', 'suites = "loss"', "eval.suites must be a list"),
    ('conditions = ["experts_masked>=1"]', 'conditions = ["selectivity=>10"]', "cannot parse"),
    ('conditions = ["experts_masked>=1"]', 'conditions = ["emt_rel<=-0.25"]', "needs the toxicity suite"),
    ("[resect]", "[resekt]", "missing section [resect]"),
    ("[eval]\n", "[eval]\nmcq_items = 0\n", "--mcq-items must be at least 1"),
    ('kind = "language"', 'kind = "language"\n[[bad', "not valid TOML"),
]


@pytest.mark.parametrize("old,new,needle", BAD, ids=[b[2][:30] for b in BAD])
def test_bad_recipes(tmp_path, old, new, needle):
    path = small_recipe(tmp_path)
    path.write_text(_edit(path.read_text(), old, new))
    with pytest.raises(UsageError) as exc:
        pipeline.load(path)
    assert needle in str(exc.value) and str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_recipe_lookup(tmp_path):
    assert pipeline.find("law") == pipeline.recipes_dir() / "law.toml"
    with pytest.raises(UsageError, match="packaged: german, law, python, toxicity"):
        pipeline.find("lawz")
    train = tmp_path / "t.toml"
    train.write_text('[train]\nname = "x"\n')
    with pytest.raises(UsageError, match="training recipe"):
        pipeline.load(train)
    assert "tiny" not in pipeline.packaged()


def test_run_end_to_end(tiny_ckpt, tmp_path, monkeypatch):
    from monet_edit import evaluation
    from monet_edit.model import checkpoint, loading

    recipe = small_recipe(tmp_path, gates='"experts_masked>=1", "target_loss_delta>-50"')
    shown = []
    results = pipeline.run(recipe, model=str(tiny_ckpt), show=shown.append)
    out = tmp_path / "edited"
    assert shown == [results]
    record = checkpoint.load_config(out).extra["monet_edit"]
    assert record["masked"] == results["summary"]["experts_masked"] == results["selection"]["masked"] > 0
    assert record["eval"]["experts_masked"] == record["masked"]  # the model card has the summary
    assert "## Evaluation" in (out / "README.md").read_text()
    written = json.loads((out / "eval" / "results.json").read_text())
    assert written["recipe"]["path"] == str(recipe) and written["recipe"]["values"]["select"]["ratio"] == 1.0
    assert written["edited"]["dir"] == str(out.resolve()) and all(g["passed"] for g in written["gates"])
    # the written checkpoint gives exactly the numbers measured on base + in-memory masks
    assert verify.manifest_mismatches(out) == []  # eval/ beside the checkpoint leaves its manifest intact
    model = loading.load_model(out)
    assert sum(int(m.sum()) for m in model.masks().values()) == record["masked"]
    # eval with no arguments inside the resected directory compares it with its base (record)
    monkeypatch.chdir(out)
    plan = evaluation.prepare(out="again")
    assert (str(plan.model), plan.base.dir.resolve(), plan.target.name) == (".", tiny_ckpt.resolve(), "python")
    with pytest.raises(UsageError, match="exists"):
        evaluation.prepare()  # default out is ./eval, written by run: never overwritten silently
    # an existing output directory is refused before any computation
    with pytest.raises(UsageError, match="exists"):
        pipeline.run(recipe, model=str(tiny_ckpt))


def test_cli_run(tiny_ckpt, tmp_path, shared_home):  # noqa: F811
    recipe = small_recipe(tmp_path, gates='"target_loss_delta>=100"', target="toxicity")
    res = cli("run", recipe, "--model", tiny_ckpt, "--out", tmp_path / "cli-out", env={"MONET_EDIT_HOME": str(shared_home)})
    assert res.code == 3, res.stderr
    assert "gate failed: target_loss_delta>=100" in res.stderr.strip().splitlines()[-1]
    assert "toxicity" in res.stderr and "general" in res.stderr  # the before/after table
    assert (tmp_path / "cli-out" / "eval" / "results.md").is_file()
    assert "monet-edit run" in json.loads((tmp_path / "cli-out" / "config.json").read_text())["monet_edit"]["command"]
    bad = cli("run", tmp_path / "missing.toml")
    assert_clean_error(bad, 2, "missing.toml")
