"""Gate expressions: parsing, checking, and exit codes through the CLI (0 pass, 3 fail, 2 bad input)."""

from __future__ import annotations

import json
import math

import pytest
from clirun import assert_clean_error, cli
from test_eval import _shared_home, copies, masked_copy, shared_home  # noqa: F401  (fixtures)

from monet_edit.errors import GateFailed, UsageError
from monet_edit.evaluation import gates


def test_parse_conditions():
    conds = gates.parse("target_loss_delta>=0.5, others_loss_delta<=.05,selectivity>1e1,emt_rel<-0.25,"
                        "experts_masked==3")
    assert [(c.metric, c.op, c.value) for c in conds] == [
        ("target_loss_delta", ">=", 0.5), ("others_loss_delta", "<=", 0.05), ("selectivity", ">", 10.0),
        ("emt_rel", "<", -0.25), ("experts_masked", "==", 3.0)]
    assert str(conds[0]) == "target_loss_delta>=0.5"


@pytest.mark.parametrize("expr,needle", [
    ("", "empty condition"), ("selectivity>=10,", "empty condition"), ("selectivity=>10", "cannot parse"),
    ("selectivity>=ten", "cannot parse"), ("selectivity 10", "cannot parse"), ("selectivity>=10 20", "cannot parse"),
    ("selectivty>=10", "did you mean selectivity"), ("loss>=1", "unknown metric 'loss'"),
])
def test_parse_errors(expr, needle):
    with pytest.raises(UsageError, match=needle):
        gates.parse(expr)


def test_metric_must_come_from_a_running_suite():
    with pytest.raises(UsageError, match="emt_rel needs the toxicity suite"):
        gates.parse("emt_rel<=-0.25", ("loss",))
    assert gates.parse("experts_masked>=1,emt_rel<=-0.25", ("toxicity",))


def test_check_and_enforce():
    conds = gates.parse("selectivity>=10,general_loss_rel<0.02,others_loss_delta<=0")
    results = gates.check(conds, {"selectivity": math.inf, "general_loss_rel": 0.02, "others_loss_delta": None})
    assert [r["passed"] for r in results] == [True, False, False]
    with pytest.raises(GateFailed) as exc:
        gates.enforce(results)
    assert "general_loss_rel<0.02 (actual 0.02)" in str(exc.value) and "(actual undefined)" in str(exc.value)
    assert "\n" not in str(exc.value) and "selectivity" not in str(exc.value)
    gates.enforce(gates.check(conds[:1], {"selectivity": 12.0}))  # passes: no exception


def test_every_metric_is_documented_in_help():
    res = cli("eval", "--help")
    assert res.code == 0
    for name in gates.metrics():
        assert name in res.stdout.replace("\n", "").replace(" ", "") or name in res.stdout


def _eval_args(model, base, out, gate):
    return ("eval", "--model", model, "--base", base, "--target", "toxicity", "--reference", "en",
            "--suite", "loss", "--tokens", "300", "--seq-len", "32", "--batch-size", "16", "--out", out, "--gate", gate)


def test_cli_gate_pass_and_fail(tiny_ckpt, copies, tmp_path, shared_home):  # noqa: F811
    env = {"MONET_EDIT_HOME": str(shared_home)}
    ok = cli(*_eval_args(copies["masked"], tiny_ckpt, tmp_path / "ok", "experts_masked>=1,target_loss_delta>-50"),
             "--json", env=env)
    assert ok.code == 0, ok.stderr
    data = json.loads(ok.stdout)
    assert data["gates"][0]["passed"] and data["summary"]["experts_masked"] > 0
    assert json.loads((tmp_path / "ok" / "results.json").read_text())["summary"] == data["summary"]
    assert "| loss | toxicity |" in (tmp_path / "ok" / "results.md").read_text()
    assert "before" in ok.stderr and "general" in ok.stderr  # the table is printed

    bad = cli(*_eval_args(copies["masked"], tiny_ckpt, tmp_path / "bad", "target_loss_delta>=100"), env=env)
    assert bad.code == 3 and "Traceback" not in bad.stderr
    assert "gate failed: target_loss_delta>=100" in bad.stderr.strip().splitlines()[-1]
    written = json.loads((tmp_path / "bad" / "results.json").read_text())
    assert written["gates"][0]["passed"] is False  # results are written before the gate fails


def test_cli_gate_errors_before_computing(tiny_ckpt, copies, tmp_path, shared_home):  # noqa: F811
    env = {"MONET_EDIT_HOME": str(shared_home)}
    res = cli(*_eval_args(copies["masked"], tiny_ckpt, tmp_path / "p", "selectivity=>10"), env=env)
    assert_clean_error(res, 2, "cannot parse 'selectivity=>10'")
    res = cli(*_eval_args(copies["same"], tiny_ckpt, tmp_path / "e", "selectivity>=10"), env=env)
    assert_clean_error(res, 3, "empty selection")
    assert not (tmp_path / "p").exists() and not (tmp_path / "e").exists()
