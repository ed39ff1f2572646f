// The page: a form that asks the server for an analysis's charts, token chips, and downloads.
// The charts are Vega-Lite specs built by the server (views/charts.py); selecting or hovering a token only
// sets the `selected` and `hovered` Vega parameters in every chart, so it never asks the server again.
// Shift+click pairs a second token: the pair's similarity against the layer and a token × token heatmap whose
// layer is a slider (a Vega parameter), read from the similarity the page asks for once, on the first pairing.
// "Pin" keeps the current analysis as run A; a changed model, tap, reference or text then draws as run B beside
// it (POST /api/compare: a line per run, heatmaps side by side; tokens are run A's, matched by text).
// "Which heads moved it" opens a panel: the cosine's change per layer split into the residual term and the heads,
// a layer × part heatmap of the cosine's shares and, for the head whose cell is clicked (or reached with the arrow
// keys), each source's share and norm, with the chips shaded by that head's attention from the selected token.
// Opening it asks the server once (`"attribution": true`); choosing a token or a head only sets Vega parameters
// (`head_layer`, `head`, `hovered_layer`, `hovered_head`) and reads the attention the page already holds.
// The table under the charts switches between the nearest vocabulary items and the output head's predictions
// without asking the server either: both are drawn, one is shown.
// The whole view (text, settings, selected and paired tokens, the pinned run, the table, the panel of heads and
// its head as `head=L.H`) lives in the URL's
// fragment, so the address can be shared.
// (The fragment, not the query: Vega's SVG legends refer to their gradients by the page's address without
// its fragment, so changing the query would break them.)

const $ = (selector) => document.querySelector(selector);
const SETTINGS = ["model", "tap", "reference", "top_k", "neighbours", "normalize", "stats", "lens"];
const NUMBERS = new Set(["top_k", "neighbours"]);
const VEGA_LOG_ERRORS = 1;  // vega.Error: warnings such as an empty hover layer's extent are noise here

const PINNED = "a.";  // the URL keys of the pinned run A: a.text, a.model, a.tap, …
const CANVAS = new Set(["similarity"]);  // T × T cells draw faster on a canvas than as SVG elements

const page = {
  server: null,      // GET /api/models
  result: null,      // the last POST /api/charts (or /api/compare) answer
  request: null,     // the body that produced it (run B's when comparing)
  views: {},         // chart name -> Vega view
  params: {},        // chart name -> the names of its Vega parameters
  selected: null,
  paired: -1,        // the token paired with the selected one, -1 for none
  pinned: null,      // run A's request, or null
  hovered: -1,
  table: "neighbours",  // which item table shows: "neighbours" or "predictions"
  heads: false,      // whether the panel of heads is open
  head: { layer: -1, head: -1 },     // the chosen head (layer 1..N), -1 for none
  hoveredHead: { layer: -1, head: -1 },
  attention: new Map(),  // "layer.head.token" -> run A's attention weights over the sources
  generation: 0,     // answers to older requests are ignored
};

async function call(path, body) {
  const response = await fetch(path, body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    try { detail = (await response.json()).detail || detail; } catch { /* not JSON: keep the status line */ }
    throw new Error(detail);
  }
  return response;
}

function option(select, value, text) {
  const item = document.createElement("option");
  item.value = value;
  item.textContent = text;
  select.append(item);
}

function fillControls(server) {
  for (const model of server.models) option($("#model"), model.id, model.label);
  for (const tap of server.taps) option($("#tap"), tap, tap);
  for (const reference of server.references) option($("#reference"), reference, reference);
  for (const mode of server.normalizations) option($("#normalize"), mode, mode);
  for (const stats of server.stats) option($("#stats"), stats, stats.split("/").pop());
  $("#normalize").value = server.defaults.normalize;
  option($("#lens"), "", "none");  // a learned lens adds its measures' charts (serve --lens LENS_DIR)
  for (const lens of server.lenses || []) option($("#lens"), lens.name, `${lens.name} (${lens.target})`);
  $("#lens").disabled = !(server.lenses || []).length;
  if (server.stats.length === 0) {
    $("#normalize").disabled = true;
    $("#normalize").title = "This server has no statistics to normalise with (start it with --stats FILE).";
  }
  $("#top_k").value = server.defaults.top_k;
  $("#neighbours").value = server.defaults.neighbours;
  $("#neighbours").max = server.limits.max_neighbours;
  $("#tap").value = server.defaults.tap;
  $("#reference").value = server.defaults.reference;
}

function readNumber(query, key) {
  const value = Number.parseInt(query.get(key), 10);
  return Number.isInteger(value) ? value : null;
}

// Sets the form, the pair and the pinned run from the URL; returns the token to select.
function readURL() {
  const query = new URLSearchParams(location.hash.slice(1));
  if (query.has("text")) $("#text").value = query.get("text");
  for (const name of SETTINGS) {
    const select = $(`#${name}`);
    const value = query.get(name);
    if (value !== null && !(name === "normalize" && select.disabled)
        && (select.tagName !== "SELECT" || [...select.options].some((o) => o.value === value))) {
      select.value = value;
    }
  }
  page.paired = readNumber(query, "pair") ?? -1;
  const head = (query.get("head") || "").match(/^(\d+)\.(\d+)$/);
  page.head = head ? { layer: Number(head[1]), head: Number(head[2]) } : { layer: -1, head: -1 };
  page.heads = query.has("heads") || head !== null;
  page.pinned = null;
  if (query.has(`${PINNED}text`)) {
    const pinned = { ...formRequest(), text: query.get(`${PINNED}text`) };
    for (const name of SETTINGS) {
      const value = query.get(`${PINNED}${name}`);
      if (value !== null) pinned[name] = NUMBERS.has(name) ? Number(value) : value;
    }
    page.pinned = runOf(pinned);
  }
  syncStats();
  page.table = query.get("table") || "neighbours";
  return readNumber(query, "token");
}

function writeURL() {
  const query = new URLSearchParams();
  query.set("text", $("#text").value);
  for (const name of SETTINGS) query.set(name, $(`#${name}`).value);
  if (page.selected !== null) query.set("token", page.selected);
  if (page.paired >= 0) query.set("pair", page.paired);
  if (page.pinned) {
    query.set(`${PINNED}text`, page.pinned.text);
    for (const name of SETTINGS) if (page.pinned[name] !== undefined) query.set(`${PINNED}${name}`, page.pinned[name]);
  }
  if (page.table !== "neighbours") query.set("table", page.table);
  if (page.heads && page.head.layer > 0) query.set("head", `${page.head.layer}.${page.head.head}`);
  else if (page.heads) query.set("heads", "1");
  history.replaceState(null, "", `#${query}`);
}

// A run: the text and the settings, without what only adds data (the similarity).
function runOf(request) {
  const run = { text: request.text };
  for (const name of SETTINGS) run[name] = request[name];
  if (run.normalize === "none" || !run.stats) delete run.stats;  // statistics only go with a normalisation
  if (!run.lens) delete run.lens;
  return run;
}

function sameRun(a, b) {
  return JSON.stringify(runOf(a)) === JSON.stringify(runOf(b));
}

// Statistics only mean something when normalising, and the server refuses them otherwise.
function syncStats() {
  $("#stats").disabled = $("#normalize").value === "none" || $("#stats").options.length === 0;
}

function formRequest() {
  const body = { text: $("#text").value };
  for (const name of SETTINGS) {
    const value = $(`#${name}`).value;
    body[name] = NUMBERS.has(name) ? Number(value) : value;
  }
  body.similarity = page.paired >= 0;
  body.attribution = page.heads;
  if (body.normalize === "none" || !body.stats) delete body.stats;
  if (!body.lens) delete body.lens;
  return body;
}

function setBusy(busy) {
  document.body.classList.toggle("busy", busy);
  $("#analyse").disabled = busy;
  $("#analyse .label").textContent = busy ? "Analysing…" : "Analyse";
}

function showError(message) {
  $("#error").textContent = message ? `Could not analyse: ${message}` : "";
  $("#error").hidden = !message;
}

async function analyse(wanted = null) {
  const generation = ++page.generation;
  const request = formRequest();
  setBusy(true);
  showError("");
  try {
    const comparing = page.pinned !== null && !sameRun(page.pinned, request);
    const answer = comparing
      ? await call("/api/compare", { runs: [{ ...page.pinned, similarity: request.similarity, attribution: request.attribution }, request] })
      : await call("/api/charts", request);
    const result = await answer.json();
    if (generation !== page.generation) return;
    page.result = result;
    page.request = request;
    await draw(result, wanted);
  } catch (error) {
    if (generation === page.generation) showError(error.message);
  } finally {
    if (generation === page.generation) setBusy(false);
  }
}

function describeModel(model) {
  const notes = model.notes.map((note) => ` Note: ${note}.`).join("");
  $("#model-line").textContent = `Model: ${model.label}, ${model.layers} layers, ${model.vocab_size.toLocaleString()} vocabulary items, on ${model.device} (${model.reason}).${notes}`;
}

function chipText(token) {
  // The convention of display.shown: spaces at either end as ␣, unprintable characters escaped.
  if (token.text === "") return "''";
  const core = token.text.replace(/^ +| +$/g, "");
  const ends = token.text.match(/^ */)[0].length;
  const lead = core === "" ? token.text.length : ends;
  const trail = core === "" ? 0 : token.text.length - ends - core.length;
  const escaped = core.replace(/\p{C}/gu, (c) => JSON.stringify(c).slice(1, -1));
  return "␣".repeat(lead) + escaped + "␣".repeat(trail);
}

function drawChips(tokens) {
  const box = $("#tokens");
  box.replaceChildren();
  for (const token of tokens) {
    const chip = document.createElement("button");
    chip.type = "button";
    chip.className = token.special ? "chip special" : "chip";
    chip.dataset.index = token.index;
    chip.setAttribute("role", "option");
    chip.title = `token ${token.index}, id ${token.id}${token.special ? ", special" : ""}`;
    chip.innerHTML = `<small>${token.index}</small>`;
    chip.append(chipText(token));
    chip.addEventListener("click", (event) => (event.shiftKey ? pair(token.index) : select(token.index)));
    chip.addEventListener("mouseenter", () => hover(token.index));
    chip.addEventListener("mouseleave", () => hover(-1));
    box.append(chip);
  }
}

// One line chart and one heatmap per measure the analysis has, in the server's order (views/charts.py), and
// one figure per item table it has.
function layoutFigures(result) {
  const figures = (names, suffix = "") => names.map((name) => {
    const figure = document.createElement("figure");
    figure.className = "chart";
    figure.dataset.chart = `${name}${suffix}`;
    return figure;
  });
  $("#lines").replaceChildren(...figures(result.measures));
  $("#maps").replaceChildren(...figures(result.measures, "_heatmap"));
  $("#tables").replaceChildren(...figures(result.tables));
}

// Show the chosen item table; the head's predictions only where the model has an output head.
function showTable() {
  const tables = page.result ? page.result.tables : ["neighbours"];
  const shown = tables.includes(page.table) ? page.table : "neighbours";
  for (const figure of document.querySelectorAll("#tables figure")) figure.hidden = figure.dataset.chart !== shown;
  for (const radio of document.querySelectorAll("input[name=table]")) {
    radio.checked = radio.value === shown;
    radio.disabled = !tables.includes(radio.value);
    radio.parentElement.classList.toggle("disabled", radio.disabled);
  }
  const comparing = page.result && page.result.runs.length > 1;
  const missing = comparing ? "(not every run has an output head)" : "(this model has no output head)";
  $("#table-note").textContent = tables.includes("predictions") ? "" : missing;
}

// The pinned run and, when comparing, what sets the runs apart and which tokens did not match.
function describeRuns(result) {
  $("#pin").textContent = page.pinned ? "Unpin run A" : "Pin as run A";
  $("#pin").setAttribute("aria-pressed", page.pinned !== null);
  const line = $("#runs-line");
  line.hidden = page.pinned === null;
  if (result.runs.length > 1) {
    line.textContent = `Comparing run A (${result.runs[0].label}) with run B (${result.runs[1].label}); chips are run A's tokens.`;
  } else if (page.pinned) {
    line.textContent = "Run A is pinned: change the model, tap, reference or text to draw run B beside it.";
  }
  $("#note").textContent = result.note ? `Note: ${result.note}.` : "";
  $("#note").hidden = !result.note;
}

function showPairs() {
  $("#pairs").hidden = !(page.paired >= 0 && page.result && page.result.charts.pair);
}

// The panel of heads shows when open and drawn; its note says why a long text has no per-source detail.
function showHeads() {
  const drawn = page.result && page.result.attribution;
  $("#heads").hidden = !(page.heads && drawn);
  $("#heads-toggle").setAttribute("aria-pressed", page.heads);
  const notes = drawn ? page.result.attribution.map((run) => run.note).filter(Boolean) : [];
  $("#heads-note").textContent = notes.length ? `Note: ${notes[0]}.` : "";
  $("#heads-note").hidden = !notes.length;
}

// Run A's attention rows, by layer, head and token, from the `head_sources` dataset the page already holds.
function indexAttention(result) {
  page.attention = new Map();
  for (const row of (result.datasets.head_sources || [])) {
    if (row.run === 0) page.attention.set(`${row.layer}.${row.head}.${row.key}`, row.weights);
  }
}

// Shade each chip by the chosen head's attention from the selected token (relative to its largest weight).
function shadeChips() {
  const weights = page.heads && page.head.layer > 0 ? page.attention.get(`${page.head.layer}.${page.head.head}.${page.selected}`) : null;
  const largest = weights ? Math.max(...weights) || 1 : 1;
  for (const chip of document.querySelectorAll(".chip")) {
    const weight = weights ? weights[Number(chip.dataset.index)] : undefined;
    chip.classList.toggle("attended", weight !== undefined);
    chip.classList.toggle("strong", weight !== undefined && weight / largest > 0.6);
    if (weight === undefined) {
      delete chip.dataset.attention;
      chip.style.removeProperty("--attention");
    } else {
      chip.dataset.attention = weight.toFixed(4);
      chip.style.setProperty("--attention", (0.85 * weight / largest).toFixed(3));
    }
  }
}

// Open the panel (the first time, asking the server for the attribution) or close it.
async function toggleHeads() {
  page.heads = !page.heads;
  writeURL();
  if (page.heads && !page.result?.attribution) {  // (no result yet when the first analysis failed)
    await analyse(page.selected);
    return;
  }
  showHeads();
  shadeChips();
}

// Choose a head (layer 1..N, head 0..H-1; -1, -1: none): its cell outlined, its sources drawn, the chips shaded.
async function chooseHead(layer, head) {
  page.head = { layer, head };
  writeURL();
  shadeChips();
  await Promise.all([setSignal("head_layer", layer), setSignal("head", head)]);
}

async function hoverHead(layer, head) {
  if (layer === page.hoveredHead.layer && head === page.hoveredHead.head) return;
  page.hoveredHead = { layer, head };
  await Promise.all([setSignal("hovered_layer", layer), setSignal("hovered_head", head)]);
}

// Arrow keys on the heatmap: left and right move between heads, up and down between layers (run A's).
function moveHead(event) {
  const moves = { ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0] };
  if (!(event.key in moves) || !page.result || !page.result.attribution) return;
  event.preventDefault();
  const { layers, heads } = page.result.attribution[0];
  const [down, right] = moves[event.key];
  const { layer, head } = page.head.layer > 0 ? page.head : { layer: 1, head: 0 };
  const moved = page.head.layer > 0;
  chooseHead(
    Math.min(layers, Math.max(1, layer + (moved ? down : 0))),
    Math.min(heads - 1, Math.max(0, head + (moved ? right : 0))),
  );
}

// The head a chart item stands for: a head's cell of the heatmap, or null.
function headOf(item) {
  const datum = item && item.datum;
  return datum && "component" in datum && Number.isInteger(datum.head) ? { layer: datum.layer, head: datum.head } : null;
}

async function draw(result, wanted) {
  describeModel(result.model);
  drawChips(result.tokens);
  $("#result").hidden = false;
  for (const view of Object.values(page.views)) view.finalize();
  page.views = {};
  page.params = {};
  layoutFigures(result);
  showTable();
  describeRuns(result);
  const indices = new Set(result.tokens.map((t) => t.index));
  page.selected = indices.has(wanted) ? wanted : result.selected;
  if (!indices.has(page.paired) || page.paired === page.selected) page.paired = -1;
  page.hovered = -1;
  page.hoveredHead = { layer: -1, head: -1 };
  indexAttention(result);
  showPairs();
  showHeads();
  for (const figure of document.querySelectorAll("#heads figure.chart")) figure.replaceChildren();
  const figures = [...document.querySelectorAll("figure.chart")].filter((f) => f.dataset.chart in result.charts);
  for (const figure of document.querySelectorAll("#pairs figure.chart")) figure.replaceChildren();
  await Promise.all(figures.map(async (figure) => {
    const name = figure.dataset.chart;
    const spec = { ...result.charts[name], datasets: result.datasets };
    const holder = document.createElement("div");
    figure.replaceChildren(holder, chartDownloads(name));
    const renderer = CANVAS.has(name) ? "canvas" : "svg";
    const { view } = await vegaEmbed(holder, spec, { renderer, actions: false, logLevel: VEGA_LOG_ERRORS });
    view.addEventListener("click", (event, item) => {
      const head = headOf(item);
      if (head !== null) {
        figure.focus();
        chooseHead(head.layer, head.head);
        return;
      }
      const token = tokenOf(item);
      if (token !== null) (event.shiftKey ? pair(token) : select(token));
    });
    view.addEventListener("mouseover", (event, item) => {
      const head = headOf(item);
      if (head !== null) hoverHead(head.layer, head.head);
      const token = tokenOf(item);
      if (token !== null) hover(token);
    });
    view.addEventListener("mouseout", () => { hover(-1); hoverHead(-1, -1); });
    page.views[name] = view;
    page.params[name] = new Set((spec.params || []).map((p) => p.name));
  }));
  await setSignal("paired", page.paired);
  await Promise.all([setSignal("head_layer", page.head.layer), setSignal("head", page.head.head)]);
  await select(page.selected);
}

// The token (of run A) a chart item stands for: compared rows name it in `key` (-1: no match in run A); a source
// bar names its source in `source_key`; the panel's cells and lines stand for the selected token, not one to pick.
function tokenOf(item) {
  const datum = item && item.datum;
  if (!datum || "component" in datum || "series" in datum) return null;
  const token = "source_key" in datum ? datum.source_key : "key" in datum ? datum.key : datum.token_index;
  return Number.isInteger(token) && token >= 0 ? token : null;
}

function chartDownloads(name) {
  const bar = document.createElement("figcaption");
  bar.className = "downloads";
  bar.append("Download ");
  for (const format of ["png", "svg"]) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "link";
    button.dataset.chartDownload = format;
    button.textContent = format.toUpperCase();
    button.addEventListener("click", () => saveChart(name, format));
    bar.append(button, " ");
  }
  return bar;
}

async function setSignal(name, value) {
  const views = Object.entries(page.views).filter(([chart]) => page.params[chart].has(name));
  await Promise.all(views.map(([, view]) => view.signal(name, value).runAsync()));
}

function markChips() {
  for (const chip of document.querySelectorAll(".chip")) {
    const index = Number(chip.dataset.index);
    chip.classList.toggle("selected", index === page.selected);
    chip.classList.toggle("paired", index === page.paired);
    chip.setAttribute("aria-selected", index === page.selected);
  }
}

async function select(index) {
  page.selected = index;
  if (page.paired === index) page.paired = -1;
  markChips();
  shadeChips();
  showPairs();
  writeURL();
  await Promise.all([setSignal("selected", index), setSignal("paired", page.paired)]);
}

// Shift+click: pair a second token with the selected one (again, or the selected one: unpair). The first pairing
// asks the server for the similarity; every later one only sets the `paired` parameter.
async function pair(index) {
  page.paired = index === page.paired || index === page.selected ? -1 : index;
  markChips();
  writeURL();
  if (page.paired >= 0 && !page.result.charts.pair) {
    await analyse(page.selected);
    return;
  }
  showPairs();
  await setSignal("paired", page.paired);
}

// Pin the current analysis as run A, or unpin it (and draw the current run alone).
async function togglePin() {
  if (page.pinned) {
    page.pinned = null;
    writeURL();
    await analyse(page.selected);
    return;
  }
  page.pinned = runOf(page.request);
  writeURL();
  describeRuns(page.result);
}

async function hover(index) {
  if (index === page.hovered) return;
  page.hovered = index;
  for (const chip of document.querySelectorAll(".chip")) chip.classList.toggle("hovered", Number(chip.dataset.index) === index);
  await setSignal("hovered", index);
}

function fileStem() {
  const words = page.request.text.toLowerCase().match(/[\p{L}\p{N}]+/gu) || ["text"];
  return `attention-encodings-${words.slice(0, 4).join("-")}`;
}

function saveBlob(blob, filename) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
}

async function saveChart(name, format) {
  const view = page.views[name];
  const token = page.result.tokens.find((t) => t.index === page.selected);
  const filename = `${fileStem()}-${name}-${token ? token.index : "all"}.${format}`;
  if (format === "svg") saveBlob(new Blob([await view.toSVG()], { type: "image/svg+xml" }), filename);
  else saveBlob(await (await fetch(await view.toImageURL("png", 2))).blob(), filename);
}

async function saveAnalysis(format) {
  try {
    // the CSV is one row per token and layer: it cannot carry the similarity, which the JSON does
    const body = format === "csv" ? { ...page.request, similarity: false } : page.request;
    const response = await call(format === "csv" ? "/api/analyze/csv" : "/api/analyze", body);
    saveBlob(await response.blob(), `${fileStem()}.${format}`);
  } catch (error) {
    showError(error.message);
  }
}

async function start() {
  try {
    page.server = await (await call("/api/models")).json();
  } catch (error) {
    showError(`the server did not answer (${error.message})`);
    return;
  }
  fillControls(page.server);
  const wanted = readURL();
  $("#controls").addEventListener("submit", (event) => { event.preventDefault(); analyse(page.selected); });
  $("#text").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); analyse(page.selected); }
  });
  for (const name of SETTINGS) $(`#${name}`).addEventListener("change", () => { syncStats(); analyse(page.selected); });
  for (const radio of document.querySelectorAll("input[name=table]")) {
    radio.addEventListener("change", () => { page.table = radio.value; showTable(); writeURL(); });
  }
  for (const button of document.querySelectorAll("[data-download]")) {
    button.addEventListener("click", () => saveAnalysis(button.dataset.download));
  }
  $("#pin").addEventListener("click", togglePin);
  $("#heads-toggle").addEventListener("click", toggleHeads);
  $("figure[data-chart=heads_shares]").addEventListener("keydown", moveHead);
  window.addEventListener("hashchange", () => analyse(readURL()));
  await analyse(wanted);
}

start();
