"""`atlas serve`: the JSON endpoints against the atlas arrays and the model (masking compared with
`load_model(mask=...)`), every bad request a 4xx with a message, and the web app driven in
headless Chromium (selenium + Debian's chromedriver): search, open an expert, run the masking
panel, compare what the page shows with the JSON, and no console error."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_atlas import build_args, write_corpora

from monet_edit.analysis import experts
from monet_edit.analysis.atlas import server, store
from monet_edit.cli import main
from monet_edit.model import generate
from monet_edit.model.loading import load_model, load_tokenizer

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
TEXT = "The law of the land. Der Hund ist gross."


@pytest.fixture(scope="module")
def atlas_dir(tiny_ckpt, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("atlas") / "atlas"
    corpora = write_corpora(tmp_path_factory.mktemp("corpora"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MONET_EDIT_HOME", str(tmp_path_factory.mktemp("home")))
        assert main(build_args(tiny_ckpt, corpora, out)) == 0
    return out


@pytest.fixture(scope="module")
def client(atlas_dir):
    from starlette.testclient import TestClient

    app, _ = server.open_app(atlas_dir)
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def atlas(atlas_dir) -> store.Atlas:
    return store.open_atlas(atlas_dir)


def _get(client, path: str) -> dict:
    res = client.get(path)
    assert res.status_code == 200, res.text
    return res.json()


def test_expert_endpoint_is_the_atlas(client, atlas, tiny_ckpt):
    tok = load_tokenizer(tiny_ckpt)
    E = atlas.experts
    for g, e in ((0, int(np.asarray(atlas.active[0]).sum(-1).argmax())), (1, 5)):
        i, j = divmod(e, E)
        doc = _get(client, f"/api/expert/{g}/{i}/{j}")
        assert (doc["group"], doc["i"], doc["j"], doc["id"]) == (g, i, j, e)
        positions = [p for p in atlas.top_position[g, e].tolist() if p >= 0]
        assert [h["row"] * atlas.seq_len + h["position"] for h in doc["hits"]] == positions
        assert [h["weight"] for h in doc["hits"]] == [float(w) for w in atlas.top_weight[g, e, :len(positions)]]
        for h in doc["hits"]:
            row = atlas.ids[h["row"]].tolist()
            assert h["token_id"] == row[h["position"]] and h["token"] == experts.token_text(tok, h["token_id"])
            assert h["left"] == tok.decode(row[max(0, h["position"] - experts.LEFT):h["position"]])
            assert h["corpus"] == atlas.corpora[int(atlas.row_corpus[h["row"]])]["name"]
        assert [u["active"] for u in doc["usage"]] == atlas.active[g, e].tolist()
        assert doc["density"] == int(atlas.active[g, e].sum()) / atlas.ids.size
        lines = {"same_i": {(i, x) for x in range(E)}, "same_j": {(x, j) for x in range(E)}}
        for key, line in lines.items():
            sib = doc["siblings"][key]["experts"]
            assert all((s["i"], s["j"]) in line - {(i, j)} for s in sib)
            totals = [float(np.asarray(atlas.usage[g, s["id"]], dtype=np.float64).sum()) for s in sib]
            assert totals == sorted(totals, reverse=True) and all(t > 0 for t in totals)
    assert len(_get(client, f"/api/expert/0/{i}/{j}?k=2")["hits"]) == min(2, len(positions))


def _word_of(tok, row: list[int], pos: int) -> str | None:
    """The whole word (letters and digits) that token `pos` of a row is part of, found in the
    decoded text (an independent reading of what a word hit is)."""
    pieces = [tok.decode([t]) for t in row]
    start = sum(len(p) for p in pieces[:pos])
    text, piece = "".join(pieces), pieces[pos]
    inner = [k for k, ch in enumerate(piece) if ch.isalnum()]
    if not inner:
        return None
    lo, hi = start + inner[0], start + inner[-1] + 1
    while lo > 0 and text[lo - 1].isalnum():
        lo -= 1
    while hi < len(text) and text[hi].isalnum():
        hi += 1
    return text[lo:hi]


@pytest.mark.parametrize("word", ["law", "Gesetz", "return"])
def test_search_ranks_experts_by_their_hits_on_the_word(client, atlas, tiny_ckpt, word):
    tok = load_tokenizer(tiny_ckpt)
    found = _get(client, f"/api/search?q={word}&limit=1000")
    assert found["kind"] == "word" and found["results"]
    counts = {}
    for g in range(atlas.groups):
        for e in range(atlas.experts ** 2):
            for p in atlas.top_position[g, e].tolist():
                if p >= 0 and (_word_of(tok, atlas.ids[p // atlas.seq_len].tolist(), p % atlas.seq_len) or "").lower() \
                        == word.lower():
                    counts[(g, e)] = counts.get((g, e), 0) + 1
    assert {(r["group"], r["id"]): r["hits"] for r in found["results"]} == counts
    keys = [(-r["hits"], -r["max_weight"]) for r in found["results"]]
    assert keys == sorted(keys)
    assert _get(client, f"/api/search?q={word.upper()}&limit=1000")["results"] == found["results"]


def test_search_by_expert_id_token_and_corpus(client, atlas):
    E = atlas.experts
    for q in ("1/2/3", "1:2,3", f"1:{2 * E + 3}"):
        doc = _get(client, f"/api/search?q={q}")
        assert doc["kind"] == "expert" and [(r["group"], r["i"], r["j"]) for r in doc["results"]] == [(1, 2, 3)]
    token_id = int(atlas.ids[0, 3])
    doc = _get(client, f"/api/search?q=%23{token_id}&limit=1000")
    flat = np.asarray(atlas.ids).reshape(-1)
    want = {}
    for g in range(atlas.groups):
        for e in range(E * E):
            n = sum(1 for p in atlas.top_position[g, e].tolist() if p >= 0 and flat[p] == token_id)
            if n:
                want[(g, e)] = n
    assert doc["kind"] == "token" and {(r["group"], r["id"]): r["hits"] for r in doc["results"]} == want
    corpus = _get(client, "/api/search?q=corpus:user-prose&limit=5")
    assert corpus["kind"] == "corpus" and corpus["corpus"] == "user-prose"
    assert corpus["results"] == _get(client, "/api/corpus/user-prose?limit=5")["results"]


def test_corpus_ranking_is_the_specificity(client, atlas):
    doc = _get(client, "/api/corpus/user-code?limit=1000&min_active=2")
    tokens = atlas.corpus_tokens()
    seen = []
    for r in doc["results"]:
        g, e = r["group"], r["id"]
        mean = np.asarray(atlas.usage[g, e], dtype=np.float64) / tokens
        assert atlas.active[g, e, 0] >= 2
        if mean[1] == 0:
            assert r["only_here"] and r["specificity"] is None
            seen.append((float("inf"), mean[0]))
        else:
            assert r["specificity"] == pytest.approx(np.log10(mean[0] / mean[1]), rel=1e-9)
            seen.append((r["specificity"], mean[0]))
    assert seen == sorted(seen, key=lambda s: (-s[0], -s[1]))
    eligible = int(sum((np.asarray(atlas.active[g, :, 0]) >= 2).sum() for g in range(atlas.groups)))
    assert len(doc["results"]) == min(1000, eligible)


def test_masking_panel_equals_load_model_with_the_mask(client, atlas, tiny_ckpt):
    best = _get(client, "/api/search?q=law")["results"][0]
    g, i, j = best["group"], best["i"], best["j"]
    res = client.post("/api/mask", json={"group": g, "i": i, "j": j, "text": TEXT, "new_tokens": 8})
    assert res.status_code == 200, res.text
    doc = res.json()
    tok = load_tokenizer(tiny_ckpt)
    ids = tok.encode(TEXT)
    E = atlas.experts
    mask = torch.zeros(E, E, dtype=torch.bool)
    mask[i, j] = True
    plain, masked = load_model(tiny_ckpt), load_model(tiny_ckpt, mask={g: mask})
    batch = torch.tensor([ids])
    with torch.inference_mode():
        out = plain(batch, output_routing=True)
        losses = [torch.nn.functional.cross_entropy(m(batch).logits[0, :-1], batch[0, 1:], reduction="none")
                  for m in (plain, masked)]
    g1, g2 = out.routing[g]
    weight = (g1[0, :, :, i] * g2[0, :, :, j]).sum(-1)
    assert [t["token_id"] for t in doc["tokens"]] == ids
    np.testing.assert_allclose([t["weight"] for t in doc["tokens"]], weight.tolist(), rtol=1e-5, atol=1e-7)
    for key, loss in zip(("loss_before", "loss_after"), losses, strict=True):
        np.testing.assert_allclose([t[key] for t in doc["tokens"][1:]], loss.tolist(), rtol=1e-5)
        assert doc[key] == pytest.approx(float(loss.mean()), rel=1e-5)
    assert doc["fires_on"] == int((weight > 0).sum()) > 0
    assert doc["loss_after"] != doc["loss_before"]  # the expert fires here, so masking it matters
    for key, model in (("continuation_before", plain), ("continuation_after", masked)):
        cont = generate.sample(model, ids, max_new_tokens=8, temperature=0, eos_id=tok.eos_id)[0]
        assert doc[key] == tok.decode(cont)
    again = client.post("/api/mask", json={"group": g, "i": i, "j": j, "text": TEXT, "new_tokens": 8}).json()
    assert again == doc  # the checkpoint's own masks were put back


BAD = [
    ("GET", "/api/expert/0/999/0", None, 404, "out of range"),
    ("GET", "/api/expert/7/0/0", None, 404, "group 7 out of range"),
    ("GET", "/api/expert/-1/0/0", None, 400, "group must be"),
    ("GET", "/api/expert/zero/0/0", None, 400, "group must be an integer"),
    ("GET", "/api/expert/0/1/2?k=1000000", None, 400, "k must be in 1..6"),
    ("GET", "/api/expert/0/1/2?k=0", None, 400, "k must be"),
    ("GET", "/api/expert/0/1/2?k=99999999999999999999999", None, 400, "k must be an integer"),
    ("GET", "/api/search", None, 400, "q is empty"),
    ("GET", "/api/search?q=%20%20", None, 400, "q is empty"),
    ("GET", "/api/search?q=" + "a" * 300, None, 400, "at most 200"),
    ("GET", "/api/search?q=law&limit=100000", None, 400, "limit must be in 1..1000"),
    ("GET", "/api/search?q=law&limit=ten", None, 400, "limit must be an integer"),
    ("GET", "/api/search?q=law&group=9", None, 404, "group 9"),
    ("GET", "/api/search?q=%23999999", None, 404, "token id"),
    ("GET", "/api/search?q=0:99999", None, 404, "expert id"),
    ("GET", "/api/search?q=9/0/0", None, 404, "group 9"),
    ("GET", "/api/search?q=corpus:nothing", None, 404, "no corpus 'nothing'"),
    ("GET", "/api/corpus/nothing", None, 404, "no corpus"),
    ("GET", "/api/corpus/user-code?min_active=0", None, 400, "min_active"),
    ("GET", "/api/nothing", None, 404, "no endpoint"),
    ("GET", "/api/mask", None, 405, ""),
    ("POST", "/api/mask", b"{not json", 400, "body must be JSON"),
    ("POST", "/api/mask", b"[1, 2]", 400, "JSON object"),
    ("POST", "/api/mask", json.dumps({"group": 0, "i": 1, "j": 2}).encode(), 400, "text is empty"),
    ("POST", "/api/mask", json.dumps({"group": 0, "i": 1, "text": "x y"}).encode(), 400, "j is required"),
    ("POST", "/api/mask", json.dumps({"group": 5, "i": 1, "j": 2, "text": "x y"}).encode(), 404, "group 5"),
    ("POST", "/api/mask", json.dumps({"group": 0, "i": 1, "j": 2, "text": 5}).encode(), 400, "text must be a string"),
    ("POST", "/api/mask", json.dumps({"group": 0, "i": 1, "j": 2, "text": "x" * 3000}).encode(), 413, "at most 2000"),
    ("POST", "/api/mask", json.dumps({"group": 0, "i": 1, "j": 2, "text": "law " * 400}).encode(), 413, "positions"),
    ("POST", "/api/mask", json.dumps({"group": 0, "i": 1, "j": 2, "text": "x", "new_tokens": 99}).encode(), 400,
     "new_tokens"),
    ("POST", "/api/mask", b"x" * 20000, 413, "body"),
]


@pytest.mark.parametrize("method,path,body,status,needle", BAD, ids=[f"{b[0]} {b[1][:40]}" for b in BAD])
def test_bad_requests_get_a_4xx_with_a_message(client, method, path, body, status, needle):
    res = client.request(method, path, content=body)
    assert res.status_code == status, res.text
    assert needle in res.json()["error"]


def test_odd_queries_never_give_a_500(client):
    for q in ("%00", "%E2%80%8B", "%F0%9F%98%80", "corpus:", "#", "#-1", "1/2", "1:2:3", "a%2Fb", "..%2F..", "'\"<>"):
        res = client.get(f"/api/search?q={q}")
        assert 200 <= res.status_code < 500 and "error" in res.json() or res.status_code == 200, (q, res.text)


# ---------------------------------------------------------------------------- the browser


@pytest.fixture()
def served(atlas_dir):
    """`monet-edit atlas serve DIR --port 0` in its own process; its base URL."""
    proc = subprocess.Popen([sys.executable, "-m", "monet_edit", "atlas", "serve", str(atlas_dir), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "300"})
    line, deadline = "", time.monotonic() + 120
    while time.monotonic() < deadline and "serving" not in line:
        line = proc.stderr.readline()
        assert line or proc.poll() is None, "the server exited"
    match = re.search(r"http://127\.0\.0\.1:\d+/", line)
    assert match, line
    yield match.group(0)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0


@pytest.fixture()
def browser():
    assert CHROMIUM and CHROMEDRIVER, "chromium and chromium-driver are needed (scripts/system-packages.txt)"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="atlas-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,1000",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _wait(driver, css: str, timeout: float = 60):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(ec.presence_of_element_located((By.CSS_SELECTOR, css)))


def _value(element) -> float:
    return float(element.get_attribute("data-value"))


def test_web_app_in_headless_chromium(served, browser, client):
    from selenium.webdriver.common.by import By

    browser.get(served)
    _wait(browser, "#corpora tbody tr")
    assert [r.text.split()[0] for r in browser.find_elements(By.CSS_SELECTOR, "#corpora tbody tr")] == \
        ["user-code", "user-prose"]
    box = browser.find_element(By.ID, "q")
    box.send_keys("law")
    browser.find_element(By.ID, "go").click()
    _wait(browser, "#results tbody tr")
    found = _get(client, "/api/search?q=law")
    rows = browser.find_elements(By.CSS_SELECTOR, "#results tbody tr")
    assert [r.get_attribute("data-expert") for r in rows] == [f"{r['group']}/{r['i']}/{r['j']}" for r in found["results"]]
    assert [_value(r.find_elements(By.CSS_SELECTOR, "td span")[0]) for r in rows] == [r["hits"] for r in found["results"]]

    rows[0].find_element(By.CSS_SELECTOR, "a.expert").click()
    _wait(browser, "#hits tbody tr")
    top = found["results"][0]
    assert browser.current_url.endswith(f"/expert/{top['group']}/{top['i']}/{top['j']}")
    doc = _get(client, f"/api/expert/{top['group']}/{top['i']}/{top['j']}")
    hits = browser.find_elements(By.CSS_SELECTOR, "#hits tbody tr")
    assert len(hits) == len(doc["hits"])
    for row, hit in zip(hits, doc["hits"], strict=True):
        assert _value(row.find_element(By.CSS_SELECTOR, ".weight")) == hit["weight"]
        shown = row.find_element(By.CSS_SELECTOR, ".hit").get_attribute("textContent")
        assert shown == experts.visible(hit["token"])
        assert row.find_element(By.CSS_SELECTOR, ".corpus").text == hit["corpus"]
    assert _value(browser.find_element(By.CSS_SELECTOR, "#density span")) == doc["density"]
    usage = browser.find_elements(By.CSS_SELECTOR, "#usage tbody tr")
    assert [r.get_attribute("data-corpus") for r in usage] == [u["corpus"] for u in doc["usage"]]
    assert [_value(r.find_elements(By.CSS_SELECTOR, "td span")[0]) for r in usage] == [u["active"] for u in doc["usage"]]
    sib = browser.find_elements(By.CSS_SELECTOR, "#siblings-same_i tbody tr")
    assert [r.get_attribute("data-expert") for r in sib] == \
        [f"{s['group']}/{s['i']}/{s['j']}" for s in doc["siblings"]["same_i"]["experts"]]

    browser.find_element(By.ID, "mask-text").send_keys(TEXT)
    browser.find_element(By.ID, "mask-run").click()
    _wait(browser, "#mask-summary")
    panel = client.post("/api/mask", json={"group": top["group"], "i": top["i"], "j": top["j"], "text": TEXT}).json()
    assert _value(browser.find_element(By.ID, "loss-before")) == panel["loss_before"]
    assert _value(browser.find_element(By.ID, "loss-after")) == panel["loss_after"]
    assert _value(browser.find_element(By.ID, "fires-on")) == panel["fires_on"]
    for key in ("continuation_before", "continuation_after"):
        shown = browser.find_element(By.ID, "cont-" + key.split("_")[1]).get_attribute("textContent")
        assert shown == experts.visible(panel[key])
    tokens = browser.find_elements(By.CSS_SELECTOR, "#mask-tokens tbody tr")
    assert [_value(t.find_element(By.CSS_SELECTOR, ".weight")) for t in tokens] == [t["weight"] for t in panel["tokens"]]
    assert browser.get_log("browser") == []  # no console error, warning or message

    browser.get(served + "expert/0/999/0")  # a bad expert: the page says what the API said
    error = _wait(browser, "#error")
    assert error.text == client.get("/api/expert/0/999/0").json()["error"]
    logs = browser.get_log("browser")
    assert len(logs) == 1 and "404" in logs[0]["message"], logs  # only the refused request itself


def test_serve_checks_the_model_and_works_without_it(atlas_dir, tiny_ckpt_vd, tmp_path):
    from starlette.testclient import TestClient

    from monet_edit.errors import UsageError

    with pytest.raises(UsageError, match="fingerprint"):
        server.open_app(atlas_dir, model=str(tiny_ckpt_vd))  # another model: refused
    moved = tmp_path / "moved"
    shutil.copytree(atlas_dir, moved)
    meta = json.loads((moved / "atlas.json").read_text())
    meta["model"]["directory"] = str(tmp_path / "gone")
    (moved / "atlas.json").write_text(json.dumps(meta))
    notes: list[str] = []
    app, _ = server.open_app(moved, say=notes.append)
    assert len(notes) == 1 and "masking is off" in notes[0]
    client = TestClient(app, raise_server_exceptions=False)
    assert client.get("/api/atlas").json()["masking"] is False
    assert client.get("/api/expert/0/1/2").status_code == 200  # browsing still works (stored tokenizer)
    res = client.post("/api/mask", json={"group": 0, "i": 1, "j": 2, "text": TEXT})
    assert res.status_code == 503 and "--model" in res.json()["error"]
    (moved / "experts.safetensors").write_bytes(b"damaged")
    with pytest.raises(UsageError, match="sha256"):
        server.open_app(moved)
