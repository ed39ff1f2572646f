// The page: a form that asks the server for an analysis's charts, token chips, and downloads.
// The charts are Vega-Lite specs built by the server (views/charts.py); selecting or hovering a token only
// sets the `selected` and `hovered` Vega parameters in every chart, so it never asks the server again.
// The whole view (text, settings, selected token) lives in the URL's fragment, so the address can be shared.
// (The fragment, not the query: Vega's SVG legends refer to their gradients by the page's address without
// its fragment, so changing the query would break them.)

const $ = (selector) => document.querySelector(selector);
const SETTINGS = ["model", "tap", "reference", "top_k", "neighbours"];
const NUMBERS = new Set(["top_k", "neighbours"]);
const VEGA_LOG_ERRORS = 1;  // vega.Error: warnings such as an empty hover layer's extent are noise here

const page = {
  server: null,      // GET /api/models
  result: null,      // the last POST /api/charts answer
  request: null,     // the body that produced it
  views: {},         // chart name -> Vega view
  selected: null,
  hovered: -1,
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
  $("#top_k").value = server.defaults.top_k;
  $("#neighbours").value = server.defaults.neighbours;
  $("#neighbours").max = server.limits.max_neighbours;
  $("#tap").value = server.defaults.tap;
  $("#reference").value = server.defaults.reference;
}

function readURL() {
  const query = new URLSearchParams(location.hash.slice(1));
  if (query.has("text")) $("#text").value = query.get("text");
  for (const name of SETTINGS) {
    const select = $(`#${name}`);
    const value = query.get(name);
    if (value !== null && (select.tagName !== "SELECT" || [...select.options].some((o) => o.value === value))) {
      select.value = value;
    }
  }
  const token = Number.parseInt(query.get("token"), 10);
  return Number.isInteger(token) ? token : null;
}

function writeURL() {
  const query = new URLSearchParams();
  query.set("text", $("#text").value);
  for (const name of SETTINGS) query.set(name, $(`#${name}`).value);
  if (page.selected !== null) query.set("token", page.selected);
  history.replaceState(null, "", `#${query}`);
}

function formRequest() {
  const body = { text: $("#text").value };
  for (const name of SETTINGS) {
    const value = $(`#${name}`).value;
    body[name] = NUMBERS.has(name) ? Number(value) : value;
  }
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
    const result = await (await call("/api/charts", request)).json();
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
  $("#model-line").textContent = `Model: ${model.label}, ${model.layers} layers, ${model.vocab_size.toLocaleString()} vocabulary items, on ${model.device} (${model.reason}).`;
}

function chipText(token) {
  return token.text.trim() === "" ? JSON.stringify(token.text) : token.text;
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
    chip.addEventListener("click", () => select(token.index));
    chip.addEventListener("mouseenter", () => hover(token.index));
    chip.addEventListener("mouseleave", () => hover(-1));
    box.append(chip);
  }
}

// One line chart and one heatmap per measure the analysis has, in the server's order (views/charts.py).
function layoutFigures(measures) {
  const figures = (suffix) => measures.map((name) => {
    const figure = document.createElement("figure");
    figure.className = "chart";
    figure.dataset.chart = `${name}${suffix}`;
    return figure;
  });
  $("#lines").replaceChildren(...figures(""));
  $("#maps").replaceChildren(...figures("_heatmap"));
}

async function draw(result, wanted) {
  describeModel(result.model);
  drawChips(result.tokens);
  $("#result").hidden = false;
  for (const view of Object.values(page.views)) view.finalize();
  page.views = {};
  layoutFigures(result.measures);
  const indices = new Set(result.tokens.map((t) => t.index));
  page.selected = indices.has(wanted) ? wanted : result.selected;
  page.hovered = -1;
  await Promise.all([...document.querySelectorAll("figure.chart")].map(async (figure) => {
    const name = figure.dataset.chart;
    const spec = { ...result.charts[name], datasets: result.datasets };
    const holder = document.createElement("div");
    figure.replaceChildren(holder, chartDownloads(name));
    const { view } = await vegaEmbed(holder, spec, { renderer: "svg", actions: false, logLevel: VEGA_LOG_ERRORS });
    view.addEventListener("click", (event, item) => {
      if (item && item.datum && Number.isInteger(item.datum.token_index)) select(item.datum.token_index);
    });
    view.addEventListener("mouseover", (event, item) => {
      if (item && item.datum && Number.isInteger(item.datum.token_index)) hover(item.datum.token_index);
    });
    view.addEventListener("mouseout", () => hover(-1));
    page.views[name] = view;
  }));
  await select(page.selected);
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
  await Promise.all(Object.values(page.views).map((view) => view.signal(name, value).runAsync()));
}

async function select(index) {
  page.selected = index;
  for (const chip of document.querySelectorAll(".chip")) {
    const on = Number(chip.dataset.index) === index;
    chip.classList.toggle("selected", on);
    chip.setAttribute("aria-selected", on);
  }
  writeURL();
  await setSignal("selected", index);
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
    const response = await call(format === "csv" ? "/api/analyze/csv" : "/api/analyze", page.request);
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
  for (const name of SETTINGS) $(`#${name}`).addEventListener("change", () => analyse(page.selected));
  for (const button of document.querySelectorAll("[data-download]")) {
    button.addEventListener("click", () => saveAnalysis(button.dataset.download));
  }
  window.addEventListener("hashchange", () => analyse(readURL()));
  await analyse(wanted);
}

start();
