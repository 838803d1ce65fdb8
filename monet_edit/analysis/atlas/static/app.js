// The atlas web app: every page renders from the JSON API (GET /api lists it), nothing else.
// Numbers shown are also kept exactly in data-value attributes, so a test can compare them.
"use strict";

const view = document.getElementById("view");

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined) continue;
    if (key === "style") node.style.cssText = value;
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function num(value, digits, attrs) {
  const text = value === null ? "-" : Number(value).toFixed(digits);
  return el("span", Object.assign({"data-value": value === null ? "" : String(value)}, attrs || {}), text);
}

function percent(value) {
  return el("span", {"data-value": String(value)}, (100 * value).toFixed(3) + "%");
}

const visible = text => text.replace(/\n/g, "\u21b5").replace(/\t/g, "\u2192").replace(/\r/g, "");

async function api(path, options) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = {error: `${response.status} (no JSON body)`}; }
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function show(...nodes) { view.replaceChildren(...nodes); }
function failed(error) { show(el("p", {class: "error", id: "error"}, error.message)); }

function expertLink(e) {
  return el("a", {href: `/expert/${e.group}/${e.i}/${e.j}`, class: "expert"}, `${e.group}/${e.i}/${e.j}`);
}

function table(id, headers, rows) {
  const head = el("tr", {}, headers.map(h => el("th", {class: h.num ? "num" : null}, h.label)));
  return el("table", {id}, el("thead", {}, head), el("tbody", {}, rows));
}

function expertRows(results, extra) {
  return results.map(e => el("tr", {"data-expert": `${e.group}/${e.i}/${e.j}`},
    el("td", {}, expertLink(e)), ...extra.map(f => f(e)),
    el("td", {class: "num"}, percent(e.density)),
    el("td", {class: "tok"}, e.top_token === null ? "-" : visible(e.top_token))));
}

// ---------------------------------------------------------------- pages

async function home(atlas) {
  const rows = atlas.corpora.map(c => el("tr", {},
    el("td", {}, el("a", {href: `/corpus/${encodeURIComponent(c.name)}`}, c.name)), el("td", {}, c.kind),
    el("td", {class: "num"}, c.tokens.toLocaleString("en"))));
  show(el("h1", {}, "Expert atlas"),
    el("p", {}, `${atlas.tokens.toLocaleString("en")} tokens scanned; ${atlas.groups} routing groups of `
      + `${atlas.experts_per_group.toLocaleString("en")} experts; the top ${atlas.top} occurrences of each.`),
    el("p", {class: "note"}, "Search a word (experts whose top occurrences it is), #id for a token id, "
      + "G/I/J for expert (i, j) of group G, or corpus:NAME. Open a corpus for its most specific experts."),
    el("h2", {}, "Corpora"),
    table("corpora", [{label: "corpus"}, {label: "kind"}, {label: "tokens", num: true}], rows));
}

async function search(q) {
  document.getElementById("q").value = q;
  const found = await api(`/api/search?q=${encodeURIComponent(q)}`);
  if (found.kind === "expert" && found.results.length === 1) {
    const e = found.results[0];
    window.location.replace(`/expert/${e.group}/${e.i}/${e.j}`);
    return;
  }
  if (found.kind === "corpus") return corpusPage(found);
  const nodes = [el("h1", {}, `Experts for ${JSON.stringify(q)}`)];
  if (found.forms && found.forms.length) {
    nodes.push(el("p", {class: "note"}, "matched as: " + found.forms.map(f => JSON.stringify(f)).join(", ")));
  }
  if (found.corpus) {
    nodes.push(el("p", {}, `${found.corpus} is also a corpus: `,
      el("a", {href: `/corpus/${encodeURIComponent(found.corpus)}`}, "its most specific experts")));
  }
  if (!found.results.length) nodes.push(el("p", {id: "empty"}, "No expert has this among its top occurrences."));
  else nodes.push(table("results", [{label: "expert"}, {label: "hits", num: true}, {label: "max weight", num: true},
    {label: "density", num: true}, {label: "top token"}], expertRows(found.results, [
      e => el("td", {class: "num"}, num(e.hits, 0)), e => el("td", {class: "num"}, num(e.max_weight, 4))])));
  show(...nodes);
}

async function corpusPage(found) {
  if (typeof found === "string") found = await api(`/api/corpus/${encodeURIComponent(found)}`);
  show(el("h1", {}, `Experts most specific to ${found.corpus}`),
    el("p", {class: "note"}, `score: ${found.score}; experts active on at least ${found.min_active} of its tokens`),
    table("results", [{label: "expert"}, {label: "specificity", num: true}, {label: "mean weight here", num: true},
      {label: "density", num: true}, {label: "top token"}], expertRows(found.results, [
        e => el("td", {class: "num"}, e.only_here ? el("span", {"data-value": "inf"}, "only here")
          : num(e.specificity, 2)),
        e => el("td", {class: "num"}, num(e.corpus_mean_weight, 5))])));
}

function stat(id, label, node) {
  return el("div", {class: "stat", id}, el("b", {}, node), el("span", {}, label));
}

function contexts(e) {
  const best = e.hits.length ? e.hits[0].weight : 1;
  const rows = e.hits.map((h, n) => el("tr", {class: "hit-row"},
    el("td", {class: "num"}, n + 1), el("td", {class: "num"}, num(h.weight, 4, {class: "weight"})),
    el("td", {class: "context"}, el("span", {class: "left"}, visible(h.left)),
      el("span", {class: "hit", style: `background: rgba(217, 72, 15, ${(0.15 + 0.85 * h.weight / best).toFixed(3)})`},
        visible(h.token)),
      el("span", {class: "right"}, visible(h.right))),
    el("td", {class: "corpus"}, h.corpus)));
  if (!rows.length) return el("p", {id: "hits-empty"}, "No scanned token routes to this expert.");
  return table("hits", [{label: "#", num: true}, {label: "weight", num: true}, {label: "context"}, {label: "corpus"}], rows);
}

function usage(e) {
  const most = Math.max(...e.usage.map(u => u.density), 1e-12);
  return table("usage", [{label: "corpus"}, {label: "active tokens", num: true}, {label: "density", num: true},
    {label: "mean weight", num: true}, {label: ""}], e.usage.map(u => el("tr", {"data-corpus": u.corpus},
      el("td", {}, el("a", {href: `/corpus/${encodeURIComponent(u.corpus)}`}, u.corpus)),
      el("td", {class: "num"}, num(u.active, 0)), el("td", {class: "num"}, percent(u.density)),
      el("td", {class: "num"}, num(u.mean_weight, 5)),
      el("td", {}, el("span", {class: "bar", style: `width: ${(120 * u.density / most).toFixed(1)}px`})))));
}

function siblings(e, key, title) {
  const s = e.siblings[key];
  return el("div", {}, el("h2", {}, `${title} (${s.active} active)`),
    table(`siblings-${key}`, [{label: "expert"}, {label: "density", num: true}, {label: "top token"}],
      expertRows(s.experts, [])));
}

function maskPanel(e, preset) {
  const text = el("textarea", {id: "mask-text", placeholder: "type a short text"});
  text.value = preset || "";
  const run = el("button", {id: "mask-run", type: "button"}, "run before / after");
  const out = el("div", {id: "mask-result"});
  run.addEventListener("click", async () => {
    out.replaceChildren(el("p", {class: "note"}, "running..."));
    try {
      const r = await api("/api/mask", {method: "POST", headers: {"Content-Type": "application/json"},
        body: JSON.stringify({group: e.group, i: e.i, j: e.j, text: text.value})});
      out.replaceChildren(...maskResult(r));
    } catch (error) {
      out.replaceChildren(el("p", {class: "error", id: "mask-error"}, error.message));
    }
  });
  return el("section", {id: "mask"}, el("h2", {}, "What masking this expert does"),
    el("p", {class: "note"}, "Runs the model on your text with and without this expert "
      + "(the checkpoint's own masks stay on)."), text, el("p", {}, run), out);
}

function maskResult(r) {
  const delta = r.loss_after - r.loss_before;
  const most = Math.max(...r.tokens.map(t => t.weight), 1e-12);
  const rows = r.tokens.map(t => {
    const d = t.loss_before === null ? null : t.loss_after - t.loss_before;
    return el("tr", {class: "mask-token"},
      el("td", {class: "tok", style: t.weight > 0 ? `background: rgba(217, 72, 15, ${(0.15 + 0.85 * t.weight / most).toFixed(3)})` : null},
        visible(t.token)),
      el("td", {class: "num"}, num(t.weight, 4, {class: "weight"})),
      el("td", {class: "num"}, num(t.loss_before, 3)), el("td", {class: "num"}, num(t.loss_after, 3)),
      el("td", {class: "num " + (d > 0 ? "up" : d < 0 ? "down" : "")}, d === null ? "-" : (d >= 0 ? "+" : "") + d.toFixed(4)));
  });
  return [
    el("p", {id: "mask-summary"}, "mean next-token loss ", num(r.loss_before, 4, {id: "loss-before"}), " \u2192 ",
      num(r.loss_after, 4, {id: "loss-after"}), ` (${delta >= 0 ? "+" : ""}${delta.toFixed(4)} nats); the expert fires on `,
      num(r.fires_on, 0, {id: "fires-on"}), ` of ${r.tokens.length} tokens`
      + (r.already_masked ? " (already masked in this checkpoint)" : "")),
    el("p", {}, "greedy continuation before: ", el("span", {class: "tok", id: "cont-before"}, visible(r.continuation_before))),
    el("p", {}, "after: ", el("span", {class: "tok", id: "cont-after"}, visible(r.continuation_after))),
    table("mask-tokens", [{label: "token"}, {label: "weight", num: true}, {label: "loss before", num: true},
      {label: "loss after", num: true}, {label: "change", num: true}], rows)];
}

async function expertPage(atlas, group, i, j, preset) {
  const e = await api(`/api/expert/${group}/${i}/${j}`);
  document.title = `expert ${e.group}/${e.i}/${e.j} - monet-edit atlas`;
  const nodes = [el("h1", {id: "title"}, `Expert (${e.i}, ${e.j}) of group ${e.group}`),
    el("div", {class: "stats"},
      stat("id", "id (i*E + j)", String(e.id)), stat("density", "density (tokens with weight > 0)", percent(e.density)),
      stat("active", "active tokens", num(e.usage.reduce((s, u) => s + u.active, 0), 0)),
      stat("mean-weight", "mean weight per token", num(e.mean_weight, 6))),
    el("h2", {}, `Top ${e.hits.length} occurrences (of ${e.scanned.toLocaleString("en")} tokens)`), contexts(e),
    el("h2", {}, "Usage per corpus"), usage(e),
    el("div", {class: "cols"}, siblings(e, "same_i", `Experts (${e.i}, *)`), siblings(e, "same_j", `Experts (*, ${e.j})`))];
  if (atlas.masking) nodes.push(maskPanel(e, preset));
  else nodes.push(el("p", {class: "note", id: "mask-off"}, `Masking panel off: ${atlas.masking_note}`));
  show(...nodes);
  if (atlas.masking && preset) document.getElementById("mask-run").click();
}

async function route() {
  const params = new URLSearchParams(window.location.search);
  const path = window.location.pathname;
  try {
    const atlas = await api("/api/atlas");
    document.getElementById("model").textContent =
      `${atlas.model.source} (${atlas.model.fingerprint.slice(0, 12)})`;
    let m;
    if ((m = path.match(/^\/expert\/([^/]+)\/([^/]+)\/([^/]+)$/))) await expertPage(atlas, m[1], m[2], m[3], params.get("mask"));
    else if ((m = path.match(/^\/corpus\/([^/]+)$/))) await corpusPage(decodeURIComponent(m[1]));
    else if (path === "/search") await search(params.get("q") || "");
    else await home(atlas);
  } catch (error) {
    failed(error);
  }
}

route();
