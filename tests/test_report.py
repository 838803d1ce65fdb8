"""`report RUN`: every kind of run (profile, mask, resected checkpoint from `run RECIPE`, eval
results), bad input (exit 2, one line, nothing written), and the page in headless Chromium."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_eval import _shared_home, shared_home  # noqa: F401  (fixtures: one corpus cache)

from monet_edit.cli import main
from monet_edit.reporting import runs

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PLOT = re.compile(r'<img class="plot" alt="([^"]*)" src="data:image/png;base64,')
FAST = ["--tokens", "600", "--top-experts", "3"]
RECIPE = """# monet-edit run {path}
[target]
kind = "language"
name = "python"
references = ["c", "go", "rust", "perl", "javascript"]  # the other code languages: a small, fast set

[profile]
tokens = 1500
seq_len = 32
batch_size = 16
dir = "{profiles}"

[select]
rule = "skew"
ratio = 1.5

[resect]
out = "{out}"

[eval]
suites = ["loss"]
tokens = 300
seq_len = 32
batch_size = 16
"""


@pytest.fixture(scope="module")
def edit(tmp_path_factory, shared_home, shared_corpora) -> Path:  # noqa: F811
    """What `monet-edit run RECIPE` writes on tiny: a resected checkpoint with eval/results.json,
    its edit-mask.safetensors and the profiles in their own directory."""
    from monet_edit.editing import pipeline

    root = tmp_path_factory.mktemp("edit")
    recipe = root / "small.toml"
    recipe.write_text(RECIPE.format(path=recipe, profiles=root / "profiles", out=root / "edited"))
    with pytest.MonkeyPatch.context() as mp:  # module fixtures run before the per-test home is set
        mp.setenv("MONET_EDIT_HOME", str(shared_home))
        mp.setenv("MONET_EDIT_CORPORA", str(shared_corpora))
        pipeline.run(recipe)
    return root / "edited"


def _profile(edit: Path, name: str = "python") -> Path:
    return next((edit.parent / "profiles").glob(f"{name}-*.profile.safetensors"))


def report(*args: str, capsys) -> tuple[int, str]:
    code = main(["report", *map(str, args)])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def checkpoint_page(edit, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("page") / "edit.html"
    assert main(["report", str(edit), "--out", str(out), *FAST]) == 0
    return out


def _sections(text: str) -> list[str]:
    return re.findall(r"<h2>([^<]*)</h2>", text)


def test_open_run_finds_every_kind(edit):
    found = {p: runs.open_run(p) for p in (edit, edit / "eval", edit / "eval" / "results.json",
                                           edit / "edit-mask.safetensors", _profile(edit))}
    kinds = [r.kind for r in found.values()]
    assert kinds == ["checkpoint", "eval", "eval", "mask", "profile"]
    for run in found.values():
        assert run.target == "python" and run.target_profile is not None
        assert len(run.references) == 5, run.notes  # c, go, rust, perl, javascript
    for path in (edit, edit / "eval"):
        run = found[path]
        assert run.results is not None and run.rule == "skew" and run.params == {"ratio": 1.5}
        assert run.model == str(edit) and sum(int(m.sum()) for m in run.masks.values()) > 0
    assert found[edit / "edit-mask.safetensors"].model == "tiny"
    assert found[edit / "edit-mask.safetensors"].results is None
    assert found[_profile(edit)].masks is None and found[_profile(edit)].rule is None


def test_checkpoint_report_has_every_part(edit, checkpoint_page):
    text = checkpoint_page.read_text()
    assert _sections(text) == ["Run", "Before and after", "Specificity per routing group",
                               "Top masked experts and their tokens", "Provenance"]
    alts = PLOT.findall(text)
    assert alts == ["loss before and after", "accuracy before and after",
                    "group 0 specificity heatmap and score distribution",
                    "group 1 specificity heatmap and score distribution"]
    assert "log10(s_target / max reference s)" in text and "Threshold: ratio 1.5" in text
    assert text.count("<mark>") >= 3  # contexts of the top masked experts
    assert "git_revision" in text and str(edit / "edit-mask.safetensors") in text  # provenance, inputs
    assert "<script" not in text and not re.search(r"(src|href)=\"(https?:)?//", text)


def test_profile_and_mask_reports(edit, tmp_path, capsys):
    out = tmp_path / "profile.html"
    code, err = report(_profile(edit), "--out", out, *FAST, capsys=capsys)
    assert code == 0, err
    text = out.read_text()
    assert _sections(text) == ["Run", "Specificity per routing group", "Most specific experts and their tokens",
                               "Provenance"]
    assert len(PLOT.findall(text)) == 2 and "masked (" not in text
    code, err = report(edit / "edit-mask.safetensors", "--out", tmp_path / "mask.html", "--top-experts", "0",
                       capsys=capsys)
    assert code == 0, err
    text = (tmp_path / "mask.html").read_text()
    assert _sections(text) == ["Run", "Specificity per routing group", "Provenance"]
    assert "Threshold: ratio 1.5" in text and len(PLOT.findall(text)) == 2


def test_eval_report_without_its_checkpoint(edit, tmp_path, capsys):
    """Eval results whose edited checkpoint is gone: bars only, and a note saying why."""
    res = json.loads((edit / "eval" / "results.json").read_text())
    res["edited"]["dir"] = str(tmp_path / "gone")
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "results.json").write_text(json.dumps(res))
    code, err = report(tmp_path / "ev", "--out", tmp_path / "ev.html", capsys=capsys)
    assert code == 0, err
    text = (tmp_path / "ev.html").read_text()
    assert _sections(text) == ["Run", "Before and after", "Provenance"]
    assert len(PLOT.findall(text)) == 2 and "no masks to show" in text


def _synthetic(seed: int, labelled: bool = False):
    import torch

    from monet_edit.profiling import Profile

    gen = torch.Generator().manual_seed(seed)
    S = torch.rand(2, 6, 6, generator=gen, dtype=torch.float64) ** 4 * 50
    S[0, 0, :2] = 0  # experts this corpus never routes to
    meta = {"model_fingerprint": "m", "corpus": f"c{seed}"}
    if not labelled:
        return Profile(100, S, meta=meta)
    M2 = (torch.rand(2, 6, 6, generator=gen, dtype=torch.float64) + 0.1) * (S > 0)  # unused: no variance
    r = torch.rand(2, 6, 6, generator=gen, dtype=torch.float64) * 2 - 1
    m2_y = 14.0
    return Profile(100, S, M2, r * (M2 * m2_y).sqrt(), 40.0, m2_y, meta)


@pytest.mark.parametrize("rule, params", [("skew", {"ratio": 2.0}), ("budget", {}), ("corr", {"threshold": 0.1})])
def test_scores_put_every_masked_expert_on_or_above_the_line(rule, params):
    """The histogram's threshold is the rule's: masked experts score >= it, the others (skew, corr) below."""
    import math

    from monet_edit.reporting import specificity
    from monet_edit.selection import select as selection

    target, refs = _synthetic(0, labelled=rule == "corr"), [_synthetic(1), _synthetic(2)]
    if rule == "budget":
        score = selection.budget_score(target, refs)
        masks = dict(enumerate(score >= score.reshape(-1).sort(descending=True).values[7]))
    else:
        masks = selection.skew(target, refs, **params) if rule == "skew" else selection.corr(target, **params)
    scores = specificity.compute(rule, params, target, [] if rule == "corr" else refs, masks)
    chosen = [masks[g] for g in range(2)]
    for g in range(2):
        inside, outside = scores.values[g][chosen[g]], scores.values[g][~chosen[g]]
        assert inside.numel() and bool((inside >= scores.threshold - 1e-9).all()), (rule, inside)
        if rule != "budget":
            assert bool((outside.nan_to_num(-math.inf) < scores.threshold).all()), rule
    assert math.isnan(float(scores.values[0, 0, 0])) == (rule != "corr")  # unused: blank, except for r
    top = specificity.ranking(scores, target, masks, 5)
    usage = target.mean()
    assert all(bool(masks[g][i, j]) for g, i, j in top) and len(top) == 5
    assert [float(usage[e]) for e in top] == sorted((float(usage[e]) for e in top), reverse=True)


@pytest.mark.parametrize("what, needle", [
    ("missing", "no such file or directory"),
    ("text", "not a run"),
    ("plain-checkpoint", "without an edit record"),
    ("empty-dir", "not a run"),
    ("other-json", "not monet-edit eval results"),
    ("bad-safetensors", "not a profile or mask file"),
    ("existing-out", "output file exists"),
])
def test_bad_input_is_one_line_and_writes_nothing(what, needle, tiny_ckpt, tmp_path, capsys):
    run = {"missing": tmp_path / "nope", "text": tmp_path / "notes.txt", "plain-checkpoint": tiny_ckpt,
           "empty-dir": tmp_path / "empty", "other-json": tmp_path / "results.json",
           "bad-safetensors": tmp_path / "x.safetensors", "existing-out": tiny_ckpt}[what]
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "results.json").write_text('{"loss": {}}')
    (tmp_path / "x.safetensors").write_bytes(b"\x00" * 32)
    out = tmp_path / "out" / "r.html"
    if what == "existing-out":
        out.parent.mkdir()
        out.write_text("keep")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, err = report(run, "--out", out, capsys=capsys)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert what != "existing-out" or out.read_text() == "keep"


def test_report_renders_in_headless_chromium(checkpoint_page, tmp_path):
    """The page loads without errors; every plot decodes and has a visible, non-empty box."""
    assert CHROMIUM, "chromium is not installed: `make install` installs it (scripts/system-packages.txt)"
    checked = tmp_path / "checked.html"
    checked.write_text(checkpoint_page.read_text().replace("<head>", "<head>" + CHECK, 1))
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--virtual-time-budget=10000", "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run([*flags, "--dump-dom", checked.as_uri()], capture_output=True, text=True, timeout=120)
    match = re.search(r'<pre id="verdict">(.*?)</pre>', dom.stdout, re.S)
    assert match, dom.stderr[-2000:]
    verdict = json.loads(html.unescape(match.group(1)))
    assert verdict["errors"] == [] and verdict["bad"] == [], verdict
    assert verdict["plots"] == 4 and verdict["visible"] == 4, verdict
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert len(console) == 1 and '"verdict ' in console[0], console  # nothing but our own verdict
    shot = tmp_path / "report.png"
    subprocess.run([*flags, "--window-size=1200,2600", f"--screenshot={shot}", checkpoint_page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    print(f"screenshot: {shot}")
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1200, 2600)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50  # plots drawn, not a blank page


CHECK = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || (e.target && e.target.src))), true);
window.addEventListener("load", () => {
  const plots = [...document.querySelectorAll("img.plot")];
  const shown = img => {
    const box = img.getBoundingClientRect(), style = getComputedStyle(img);
    return img.complete && img.naturalWidth > 0 && img.naturalHeight > 0 && box.width > 0 && box.height > 0
      && style.visibility === "visible" && style.display !== "none";
  };
  const verdict = {plots: plots.length, visible: plots.filter(shown).length,
                   bad: plots.filter(i => !shown(i)).map(i => i.alt), errors: window.__errors};
  const pre = document.createElement("pre");
  pre.id = "verdict";
  pre.textContent = JSON.stringify(verdict);
  document.body.appendChild(pre);
  console.log("verdict " + pre.textContent);
});
</script>"""
