// medclf web page: runs list, run page, predict page. Plain JS, no external resources.
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined) continue;
    if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function fmt(x, digits = 3) {
  return typeof x === "number" && isFinite(x) ? x.toFixed(digits) : "–";
}

async function api(path, options) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    let detail = body && body.detail !== undefined ? body.detail : response.statusText;
    if (typeof detail !== "string") detail = JSON.stringify(detail);
    throw new Error(`${response.status}: ${detail}`);
  }
  return body;
}

const view = () => document.getElementById("view");
function show(...nodes) { view().replaceChildren(...nodes); }
function showError(err) { show(el("p", { class: "error", text: String(err.message || err) })); }

async function runsPage() {
  const runs = await api("/api/runs");
  if (!runs.length) {
    show(el("h1", { text: "Runs" }), el("p", { class: "muted", text: "No run directories found. Train one with: medclf train DATA --out RUNS_DIR" }));
    return;
  }
  const rows = runs.map((r) => el("tr", { "data-run": r.name },
    el("td", {}, el("a", { href: `#/run/${encodeURIComponent(r.name)}`, text: r.name })),
    el("td", { text: r.data || "" }), el("td", { text: r.model }),
    el("td", { text: (r.date || "").replace("T", " ").replace("+00:00", " UTC") }),
    el("td", { class: "num", text: r.metrics ? r.metrics.n : "–" }),
    el("td", { class: "num", text: fmt(r.metrics && r.metrics.accuracy) }),
    el("td", { class: "num", text: fmt(r.metrics && r.metrics.balanced_accuracy) }),
    el("td", { class: "num", text: fmt(r.metrics && r.metrics.roc_auc) }),
    el("td", {}, r.has_model ? el("a", { href: `#/predict/${encodeURIComponent(r.name)}`, text: "predict" }) : "")));
  show(el("h1", { text: "Runs" }),
    el("table", { id: "runs" },
      el("thead", {}, el("tr", {}, ["run", "data", "model", "date", "test n", "accuracy", "balanced accuracy", "ROC AUC", ""].map((h) => el("th", { text: h })))),
      el("tbody", {}, rows)));
}

async function runPage(name) {
  const run = await api(`/api/runs/${encodeURIComponent(name)}`);
  const parts = [el("h1", { text: run.name }),
    el("p", {}, `data: ${run.data || "?"} · model: ${run.model} · ${run.spatial_dims}D · image size ${run.image_size.join("×")} · classes: ${run.class_names.join(", ")} · `,
      run.has_model ? el("a", { href: `#/predict/${encodeURIComponent(run.name)}`, text: "predict with this run" }) : "no checkpoint")];
  const m = run.test_metrics;
  if (m) {
    parts.push(el("h2", { text: "Test metrics" }),
      el("p", { text: `n = ${m.n} · accuracy ${fmt(m.accuracy)} · balanced accuracy ${fmt(m.balanced_accuracy)} · ROC AUC ${fmt(m.roc_auc)}` }));
    if (m.per_class) {
      parts.push(el("table", { id: "per-class" },
        el("thead", {}, el("tr", {}, ["class", "sensitivity", "specificity", "precision", "F1", "n"].map((h) => el("th", { text: h })))),
        el("tbody", {}, Object.entries(m.per_class).map(([cls, v]) => el("tr", {},
          el("td", { text: cls }), el("td", { class: "num", text: fmt(v.sensitivity) }), el("td", { class: "num", text: fmt(v.specificity) }),
          el("td", { class: "num", text: fmt(v.precision) }), el("td", { class: "num", text: fmt(v.f1) }), el("td", { class: "num", text: v.support }))))));
    }
  }
  const plotNames = Object.keys(run.plots);
  if (plotNames.length) {
    const order = ["learning_curves", "confusion_matrix", "roc_curves"];
    plotNames.sort((a, b) => (order.indexOf(a) + 1 || 99) - (order.indexOf(b) + 1 || 99));
    parts.push(el("h2", { text: "Plots" }), el("div", { class: "plots" }, plotNames.map((p) =>
      el("figure", { class: p === "learning_curves" ? "wide" : null }, el("img", { src: run.plots[p], alt: p.replace(/_/g, " ") }),
        el("figcaption", { text: p.replace(/_/g, " ") })))));
  }
  if (run.epochs.length) {
    const cols = Object.keys(run.epochs[0]);
    parts.push(el("h2", { text: `Per-epoch metrics (${run.epochs.length} epochs)` }),
      el("div", { class: "scroll" }, el("table", { id: "epochs" },
        el("thead", {}, el("tr", {}, cols.map((c) => el("th", { text: c })))),
        el("tbody", {}, run.epochs.map((row) => el("tr", {}, cols.map((c) =>
          el("td", { class: "num", text: typeof row[c] === "number" && !Number.isInteger(row[c]) ? Number(row[c].toPrecision(4)).toString() : (row[c] ?? "–") }))))))));
  }
  if (run.report) {
    parts.push(el("h2", { text: "Report" }), el("iframe", { class: "report", src: run.report, title: "report", sandbox: "" }));
  }
  parts.push(el("h2", { text: "Configuration" }), el("pre", { text: JSON.stringify(run.config, null, 2) }));
  show(...parts);
}

async function predictPage(name) {
  const runs = (await api("/api/runs")).filter((r) => r.has_model);
  if (!runs.length) { show(el("p", { class: "muted", text: "No run with a trained model." })); return; }
  if (!name || !runs.some((r) => r.name === name)) name = runs[0].name;
  const select = el("select", { id: "run-select", onchange: (e) => { location.hash = `#/predict/${encodeURIComponent(e.target.value)}`; } },
    runs.map((r) => { const o = el("option", { value: r.name, text: r.name }); if (r.name === name) o.selected = true; return o; }));
  const gradcam = el("input", { type: "checkbox", id: "gradcam", checked: "checked" });
  const input = el("input", { type: "file", id: "file-input", accept: "image/png,image/jpeg,.png,.jpg,.jpeg,.dcm,.nii,.nii.gz", hidden: "hidden" });
  const zone = el("div", { id: "dropzone", tabindex: "0" }, el("strong", { text: "Drop an image here" }), el("br"),
    el("span", { class: "muted", text: "or click to choose a file (PNG, JPEG)" }));
  const result = el("div", { id: "result" });
  zone.addEventListener("click", () => input.click());
  zone.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") input.click(); });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault(); zone.classList.remove("over");
    if (e.dataTransfer && e.dataTransfer.files.length) predictFile(select.value, e.dataTransfer.files[0], gradcam.checked, result);
  });
  input.addEventListener("change", () => { if (input.files.length) predictFile(select.value, input.files[0], gradcam.checked, result); });
  show(el("h1", { text: "Predict" }),
    el("div", { class: "controls" }, el("label", {}, "run ", select), el("label", {}, gradcam, " show Grad-CAM heatmap")),
    zone, input, result);
}

async function predictFile(run, file, withCam, result) {
  result.replaceChildren(el("p", { class: "muted", id: "status", text: `Predicting ${file.name}…` }));
  const form = new FormData();
  form.append("file", file, file.name);
  let answer;
  try {
    answer = await api(`/api/runs/${encodeURIComponent(run)}/predict?gradcam=${withCam}`, { method: "POST", body: form });
  } catch (err) {
    result.replaceChildren(el("p", { class: "error", id: "predict-error", text: String(err.message || err) }));
    return;
  }
  const entries = Object.entries(answer.probabilities).sort((a, b) => b[1] - a[1]);
  const fmt = (v) => Number(v).toPrecision(4);
  let headline = el("div", {}, "predicted: ", el("span", { id: "predicted", text: answer.predicted }),
    ` (${(100 * answer.probability).toFixed(1)} %)`);
  if (answer.task === "multilabel") {  // independent probabilities, one per finding
    const found = answer.findings.length ? answer.findings.join(", ") : "none";
    headline = el("div", {}, "findings above their threshold: ", el("span", { id: "predicted", text: found }));
  }
  if (answer.task === "regression") {  // a number with its prediction interval
    const interval = answer.interval ? ` (${Math.round(100 * answer.interval_level)} % interval ${fmt(answer.interval[0])} to ${fmt(answer.interval[1])})` : "";
    const value = el("div", { class: "bars" }, el("div", {}, `${answer.predicted}: `, el("span", { id: "predicted", text: fmt(answer.value) }),
      el("span", { id: "interval", text: interval })), el("p", { class: "muted", text: `run ${answer.run} · file ${answer.filename}` }));
    const figs = [];
    if (/^image\/(png|jpeg|gif|bmp|webp)$/.test(file.type)) {
      figs.push(el("figure", {}, el("img", { id: "upload-preview", src: URL.createObjectURL(file), alt: "uploaded image" }), el("figcaption", { text: "image" })));
    }
    if (answer.gradcam) {
      figs.push(el("figure", {}, el("img", { id: "heatmap", src: `data:image/png;base64,${answer.gradcam}`, alt: "Grad-CAM" }),
        el("figcaption", { text: "Grad-CAM of the predicted value" })));
    }
    result.replaceChildren(el("div", { class: "result" }, figs, value));
    return;
  }
  const bars = el("div", { class: "bars" }, headline,
    entries.map(([cls, p]) => {
      const fill = el("div", { class: "fill" });
      fill.style.width = `${(100 * p).toFixed(1)}%`;
      return el("div", { class: cls === answer.predicted ? "bar top" : "bar", "data-class": cls },
        el("div", { class: "label" }, el("span", { text: cls }), el("span", { text: `${(100 * p).toFixed(1)} %` })),
        el("div", { class: "track" }, fill));
    }),
    el("p", { class: "muted", text: `run ${answer.run} · file ${answer.filename}` }));
  const figures = [];
  if (/^image\/(png|jpeg|gif|bmp|webp)$/.test(file.type)) {
    figures.push(el("figure", {}, el("img", { id: "upload-preview", src: URL.createObjectURL(file), alt: "uploaded image" }), el("figcaption", { text: "image" })));
  }
  if (answer.gradcam) {
    figures.push(el("figure", {}, el("img", { id: "heatmap", src: `data:image/png;base64,${answer.gradcam}`, alt: `Grad-CAM for ${answer.predicted}` }),
      el("figcaption", { text: `Grad-CAM: where the model looks for “${answer.predicted}”` })));
  }
  result.replaceChildren(el("div", { class: "result" }, figures, bars));
}

async function route() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [page, ...rest] = hash.split("/");
  const arg = rest.length ? decodeURIComponent(rest.join("/")) : null;
  // the previous page goes at once: its controls (e.g. another run's drop zone) must not stay usable while this one loads
  show(el("p", { class: "muted", id: "loading", text: "loading…" }));
  try {
    if (page === "run" && arg) await runPage(arg);
    else if (page === "predict") await predictPage(arg);
    else await runsPage();
  } catch (err) {
    showError(err);
  }
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", route);
