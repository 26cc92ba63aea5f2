// Discriminative Class Tokens: the pack's face in the ComfyUI frontend (1.27 to 1.58; canvas and Vue renderers).
// - the nodes' result text (what they send as `text` in their output: the Train node's summary, the classifier's
//   class count...) in a read-only box on the node, kept in the node's properties so a reload still shows it;
// - a live loss / accuracy chart on the Train nodes (the simple one and the legacy one with every setting), fed
//   by the "dct.train.progress" events the node pushes, also kept in the node's properties;
// - a run's start clears what the previous run left (chart, result text, the images of the nodes downstream); a
//   Cancel says on the node which step's token was saved and where ("dct.train.stopped");
// - a saved token refreshes the page's model lists ("dct.train.saved"), so a workflow loading it is not flagged;
// - a class picker for target_class, fed by /dct/labels with the connected Load Classifier's settings;
//   a target class that is not among the labels is flagged before the prompt is queued, with the close names.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

// DCTTrainToken: the simple Train node; DCTTrainClassToken: the legacy one (saved workflows). Both have
// target_class and push progress events.
const TRAIN_NODES = new Set(["DCTTrainToken", "DCTTrainClassToken"]);
const PICKER_TARGETS = new Set([...TRAIN_NODES, "DCTAdaptiveClassGuidance"]);
const LOADER = "DCTLoadClassifier";
// The nodes whose output carries a line of text for the artist (ui.PreviewText on the server).
const TEXT_NODES = new Set([...TRAIN_NODES, LOADER, "DCTLoadClassToken", "DCTSaveClassToken", "DCTClassTokenClip"]);
const PICK_BUTTON = "pick class…";
const CANVAS_IMAGE_PREVIEW = "$$canvas-image-preview"; // the canvas renderer's image widget (1.27 to 1.58)
const MAX_POINTS = 2000;

window.__dct = { loaded: true, events: 0, refreshes: 0 };

function widget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

// The node an event names: its id, or for a node inside a subgraph its execution path ("5:3").
function nodeFor(id) {
  let graph = app.rootGraph ?? app.graph;
  let node = null;
  for (const part of String(id).split(":")) {
    node = graph?.getNodeById?.(Number(part)) ?? graph?.getNodeById?.(part) ?? null;
    if (!node) return null;
    graph = node.subgraph;
  }
  return node;
}

// Let the frontend notice changed node properties, so the workflow it persists keeps them. 1.58 renamed
// ChangeTracker.checkState (deprecated there, with a console warning) to captureCanvasState.
function persist() {
  const tracker = app.extensionManager?.workflow?.activeWorkflow?.changeTracker;
  if (typeof tracker?.captureCanvasState === "function") tracker.captureCanvasState();
  else tracker?.checkState?.();
}

// ---- result text ------------------------------------------------------------------------------------------------
const PLACEHOLDER = {
  [LOADER]: "classes and input size appear here after a run",
  DCTLoadClassToken: "trigger word and widths appear here after a run",
  DCTSaveClassToken: "the saved file appears here after a run",
  DCTClassTokenClip: "the trigger word appears here after a run",
};

function addResultText(node) {
  const box = document.createElement("div");
  box.className = "dct-result";
  box.setAttribute("role", "status");
  Object.assign(box.style, {
    whiteSpace: "pre-wrap", overflowWrap: "anywhere", overflowY: "auto", boxSizing: "border-box",
    minHeight: "36px", maxHeight: "160px", padding: "4px 6px", borderRadius: "4px", background: "#1a1a1a",
    color: "#ddd", font: "11px/1.35 ui-monospace, monospace", userSelect: "text", cursor: "text",
  });
  node.__dctResult = box;
  node.properties = node.properties || {};
  node.addDOMWidget("dct_result", "dct_result", box, {
    serialize: false, hideInPanel: true, getValue: () => node.properties?.dct_result ?? "", setValue: () => {},
    getMinHeight: () => Math.min(160, 14 * Math.max(2, lineCount(node)) + 10),
  });
  showResult(node);
}

function lineCount(node) {
  const text = node.properties?.dct_result ?? "";
  const width = Math.max(20, ((node.size?.[0] ?? 300) - 30) / 6.6); // monospace 11px: about 6.6 px a character
  return text.split("\n").reduce((n, line) => n + Math.max(1, Math.ceil(line.length / width)), 0);
}

// What the box shows: node.properties.dct_result (the last result), in grey while a run is under way.
function showResult(node) {
  const box = node.__dctResult;
  if (!box) return;
  const text = node.properties?.dct_result ?? "";
  const state = node.properties?.dct_state ?? "";
  box.textContent = text || PLACEHOLDER[node.comfyClass] || "the result appears here after a run";
  box.dataset.state = text ? state || "done" : "empty";
  box.style.color = !text || state === "running" ? "#999" : state === "cancelled" ? "#ffb35c" : "#ddd";
  box.style.fontStyle = text ? "normal" : "italic";
}

function setResult(node, text, state = "done") {
  node.properties = node.properties || {};
  node.properties.dct_result = text;
  node.properties.dct_state = state;
  showResult(node);
  // canvas renderer: grow the node when the text needs more room than it has
  const size = node.computeSize?.();
  if (size && node.size && size[1] > node.size[1]) node.setSize?.([node.size[0], size[1]]);
  node.setDirtyCanvas?.(true, true);
  persist();
}

function outputText(output) {
  const text = output?.text;
  if (text == null) return null;
  return Array.isArray(text) ? text.filter((t) => t != null).join("\n") : String(text);
}

// ---- live chart -------------------------------------------------------------------------------------------
function drawChart(node) {
  const canvas = node.__dctCanvas;
  if (!canvas) return;
  const history = node.properties?.dct_history ?? [];
  const ctx = canvas.getContext("2d");
  const w = (canvas.width = canvas.clientWidth || 300);
  const h = (canvas.height = canvas.clientHeight || 120);
  ctx.fillStyle = "#1e1e1e";
  ctx.fillRect(0, 0, w, h);
  ctx.font = "11px sans-serif";
  if (!history.length) {
    ctx.fillStyle = "#888";
    const running = node.properties?.dct_state === "running";
    const hint = running ? "training: waiting for the first step…" : "loss / accuracy appear here while training runs";
    ctx.fillText(hint, 8, h / 2);
    return;
  }
  const losses = history.map((p) => p.loss);
  const lo = Math.min(...losses), hi = Math.max(...losses), span = hi - lo || 1;
  const x = (i) => 30 + ((w - 40) * i) / Math.max(1, history.length - 1);
  const line = (values, color, scale) => {
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    values.forEach((v, i) => {
      const y = h - 18 - (h - 34) * scale(v);
      i ? ctx.lineTo(x(i), y) : ctx.moveTo(x(i), y);
    });
    ctx.stroke();
  };
  line(losses, "#4ea1ff", (v) => (v - lo) / span);
  line(history.map((p) => p.accuracy), "#ffa640", (v) => v);
  const last = history[history.length - 1];
  ctx.fillStyle = "#ddd";
  ctx.fillText(`step ${last.step + 1}  loss ${last.loss.toFixed(3)}  accuracy ${last.accuracy.toFixed(2)}`, 8, 12);
}

function addChart(node) {
  const canvas = document.createElement("canvas");
  canvas.className = "dct-chart";
  canvas.style.width = "100%";
  canvas.style.height = "120px";
  node.__dctCanvas = canvas;
  node.properties = node.properties || {};
  node.properties.dct_history = node.properties.dct_history || [];
  node.addDOMWidget("dct_chart", "dct_chart", canvas, { serialize: false, hideInPanel: true, getMinHeight: () => 120 });
  requestAnimationFrame(() => drawChart(node));
}

function onProgress(event) {
  const data = event.detail;
  window.__dct.events += 1;
  const node = nodeFor(data.node);
  if (!node) return;
  node.properties = node.properties || {};
  const history = (node.properties.dct_history = data.step === 0 ? [] : node.properties.dct_history || []);
  history.push({ step: data.step, loss: data.loss, accuracy: data.accuracy });
  if (history.length > MAX_POINTS) history.shift();
  drawChart(node);
  node.setDirtyCanvas?.(true, true);
  persist();
}

// ---- a run's start, its Cancel, its saved token ------------------------------------------------------------------
// The nodes fed, directly or not, by `node`'s outputs.
function downstream(node) {
  const found = new Map();
  const stack = [node];
  while (stack.length) {
    const current = stack.pop();
    (current.outputs ?? []).forEach((output, slot) => {
      let targets = [];
      if (typeof current.getOutputNodes === "function") targets = current.getOutputNodes(slot) ?? [];
      else {
        for (const id of output.links ?? []) {
          const link = current.graph?.links?.get?.(id) ?? current.graph?.links?.[id];
          const target = link && current.graph.getNodeById(link.target_id);
          if (target) targets.push(target);
        }
      }
      for (const target of targets) {
        if (!found.has(target.id)) {
          found.set(target.id, target);
          stack.push(target);
        }
      }
    });
  }
  return [...found.values()];
}

// Forget a node's shown outputs (images, text): app.nodeOutputs is the frontend's record of them in 1.27 and a
// view that writes through to its output store in 1.58 (Vue renderer); node.imgs is what the canvas draws.
function clearOutputs(node) {
  try {
    const outputs = app.nodeOutputs;
    for (const key of [String(node.id), node.graph && node.graph !== (app.rootGraph ?? app.graph)
      ? `${node.graph.id}:${node.id}` : null]) {
      if (key && outputs && key in outputs) delete outputs[key];
    }
  } catch (error) {
    console.warn("[DCT] could not clear a node's outputs", error);
  }
  node.imgs = undefined;
  node.images = undefined;
  node.imageIndex = null;
  // the canvas renderer's image widget would draw an image that is gone; the frontend adds it again with new ones
  const at = node.widgets?.findIndex((w) => w.name === CANVAS_IMAGE_PREVIEW) ?? -1;
  if (at >= 0) {
    node.widgets[at].onRemove?.();
    node.widgets.splice(at, 1);
  }
  node.setDirtyCanvas?.(true, true);
}

function onStarted(event) {
  const data = event.detail;
  const node = nodeFor(data.node);
  if (!node) return;
  node.properties = node.properties || {};
  node.properties.dct_history = [];
  const steps = data.steps ? `, up to ${data.steps} steps` : "";
  // the previous run's text, chart and downstream images would read as this run's: cleared
  clearOutputs(node);
  for (const target of downstream(node)) {
    clearOutputs(target);
    if (TEXT_NODES.has(target.comfyClass) && target.properties?.dct_result) setResult(target, "", "");
  }
  setResult(node, `training ${data.label ?? ""}${steps}…`, "running");
  drawChart(node);
  window.__dct.lastStarted = data;
}

function onStopped(event) {
  const data = event.detail;
  window.__dct.lastStopped = data;
  const node = nodeFor(data.node);
  if (node) setResult(node, data.text, "cancelled");
  app.extensionManager?.toast?.add?.({ severity: "info", summary: "Training cancelled", detail: data.text,
                                       life: 8000 });
}

// A Cancel the node could not report itself (before training started, or a host that stops it elsewhere): a
// Train node still saying "training…" says it was cancelled.
function onInterrupted(event) {
  const node = event.detail?.node_id != null ? nodeFor(event.detail.node_id) : null;
  for (const n of node ? [node] : (app.graph?._nodes ?? []).filter((n) => TRAIN_NODES.has(n.comfyClass))) {
    if (n.properties?.dct_state === "running") setResult(n, `${n.properties.dct_result}\ncancelled`, "cancelled");
  }
}

function onExecutionError(event) {
  const data = event.detail ?? {};
  const node = data.node_id != null ? nodeFor(data.node_id) : null;
  if (node && TEXT_NODES.has(node.comfyClass)) {
    setResult(node, `failed: ${data.exception_message ?? data.exception_type ?? "see the error"}`.trim(), "error");
  }
}

// A node whose result the server had cached is not run again, and the host sends its text only for output nodes:
// for the pack's nodes among the cached ones, the text comes from the prompt's history once it is written.
const cachedTextNodes = new Map(); // prompt id -> ids of the pack's cached nodes with a text

function onCached(event) {
  const { nodes = [], prompt_id: promptId } = event.detail ?? {};
  const wanted = nodes.filter((id) => TEXT_NODES.has(nodeFor(id)?.comfyClass));
  if (wanted.length && promptId) cachedTextNodes.set(promptId, wanted);
}

async function fillCachedTexts(event) {
  const promptId = event.detail?.prompt_id;
  const wanted = cachedTextNodes.get(promptId);
  if (!wanted) return;
  cachedTextNodes.delete(promptId);
  try {
    for (let attempt = 0; attempt < 6; attempt++) { // the history entry is written just after the run ends
      const response = await api.fetchApi(`/history/${encodeURIComponent(promptId)}`);
      const outputs = response.ok ? (await response.json())?.[promptId]?.outputs : null;
      if (outputs) {
        for (const id of wanted) {
          const node = nodeFor(id), text = outputText(outputs[id]);
          if (node && text != null && node.properties?.dct_state !== "running") setResult(node, text, "done");
        }
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
  } catch (error) {
    console.warn("[DCT] could not read a cached node's result from the history", error);
  }
}

// Refresh the page's model lists (what R does) once a token is saved, so the new file is in every token list and
// a workflow that loads it is not flagged as missing a model.
let refreshing = null;
async function refreshModelLists() {
  const command = app.extensionManager?.command;
  const known = command?.commands;
  const listed = !known || [...(Array.isArray(known) ? known : Object.values(known))]
    .some((c) => c?.id === "Comfy.RefreshNodeDefinitions");
  if (typeof command?.execute === "function" && listed) {
    await command.execute("Comfy.RefreshNodeDefinitions");
  } else if (typeof app.refreshComboInNodes === "function") {
    await app.refreshComboInNodes();
  }
}

function onSaved(event) {
  window.__dct.lastSaved = event.detail;
  const run = async () => {
    try {
      await refreshModelLists();
      window.__dct.refreshes += 1;
    } catch (error) {
      console.warn("[DCT] refreshing the model lists failed; press R to refresh them", error);
    }
  };
  refreshing = (refreshing ?? Promise.resolve()).then(run);
}

// ---- class picker -------------------------------------------------------------------------------------------
// The node feeding input `slot`: the frontend's own accessor where it has one (1.5x marks input.link
// deprecated), else the link table (older frontends).
function upstreamNode(node, slot) {
  if (typeof node.getInputNode === "function") return node.getInputNode(slot) ?? null;
  const id = node.inputs?.[slot]?.link;
  const link = id != null ? (app.graph.links.get?.(id) ?? app.graph.links[id]) : null;
  return link ? app.graph.getNodeById(link.origin_id) : null;
}

// A label's synonyms, as dct_core.classifiers.labels.synonyms makes them.
function synonyms(name) {
  return String(name).split(",").map((s) => s.trim().toLowerCase()).filter(Boolean);
}

function classifierSource(node) {
  const slot = node.inputs?.findIndex((i) => i.name === "classifier") ?? -1;
  const source = slot < 0 ? null : upstreamNode(node, slot);
  if (!source || source.comfyClass !== LOADER) return null;
  const value = (name) => widget(source, name)?.value ?? "";
  const labels = String(value("labels")).trim();
  const inline = labels.includes("\n") || (labels && !/\.(txt|json)$/i.test(labels));
  return {
    params: {
      classifier: value("classifier"),
      kind: value("kind") || "auto",
      timm_architecture: value("timm_architecture"),
      labels: inline ? "" : labels,
    },
    inline: inline ? labels.split("\n").map((s) => s.trim()).filter(Boolean) : null,
  };
}

async function fetchLabels(node, query = "", limit = 200) {
  const source = classifierSource(node);
  if (!source) throw new Error("connect a Load Classifier (DCT) node to 'classifier' first");
  if (source.inline) {
    const q = query.toLowerCase();
    const all = source.inline.map((name, index) => ({ index, name, synonyms: synonyms(name) }));
    const matched = all.filter((l) => !q || l.name.toLowerCase().includes(q) || String(l.index) === q);
    return { total: all.length, matched: matched.length, labels: matched.slice(0, limit) };
  }
  const params = new URLSearchParams({ ...source.params, q: query, limit: String(limit) });
  const response = await api.fetchApi(`/dct/labels?${params}`);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `labels request failed (${response.status})`);
  return body;
}

// difflib.SequenceMatcher(None, a, b).ratio(), as Python computes it (its autojunk rule included), on code points.
function similarity(a, b) {
  const b2j = new Map();
  b.forEach((ch, j) => (b2j.get(ch) ?? b2j.set(ch, []).get(ch)).push(j));
  if (b.length >= 200) {
    const most = Math.floor(b.length / 100) + 1;
    for (const [ch, at] of [...b2j]) if (at.length > most) b2j.delete(ch);
  }
  const longest = (alo, ahi, blo, bhi) => {
    let besti = alo, bestj = blo, size = 0, j2len = new Map();
    for (let i = alo; i < ahi; i++) {
      const next = new Map();
      for (const j of b2j.get(a[i]) ?? []) {
        if (j < blo) continue;
        if (j >= bhi) break;
        const k = (j2len.get(j - 1) ?? 0) + 1;
        next.set(j, k);
        if (k > size) [besti, bestj, size] = [i - k + 1, j - k + 1, k];
      }
      j2len = next;
    }
    while (besti > alo && bestj > blo && a[besti - 1] === b[bestj - 1]) {
      [besti, bestj, size] = [besti - 1, bestj - 1, size + 1];
    }
    while (besti + size < ahi && bestj + size < bhi && a[besti + size] === b[bestj + size]) size += 1;
    return [besti, bestj, size];
  };
  let matches = 0;
  const queue = [[0, a.length, 0, b.length]];
  while (queue.length) {
    const [alo, ahi, blo, bhi] = queue.pop();
    const [i, j, k] = longest(alo, ahi, blo, bhi);
    if (!k) continue;
    matches += k;
    if (alo < i && blo < j) queue.push([alo, i, blo, j]);
    if (i + k < ahi && j + k < bhi) queue.push([i + k, ahi, j + k, bhi]);
  }
  const total = a.length + b.length;
  return total ? (2 * matches) / total : 1;
}

// The close names the server's check lists (dct_core.classifiers.labels.resolve_class): difflib's
// get_close_matches(n=5, cutoff=0.6) over every label's synonyms, then names containing the text.
function closeMatches(text, labels) {
  const wanted = String(text).trim().toLowerCase();
  const names = new Map();
  for (const l of labels) for (const s of l.synonyms?.length ? l.synonyms : synonyms(l.name)) names.set(s, l.index);
  const query = Array.from(wanted);
  const scored = [];
  for (const name of names.keys()) {
    const score = similarity(Array.from(name), query);
    if (score >= 0.6) scored.push([score, name]);
  }
  scored.sort((x, y) => y[0] - x[0] || (x[1] < y[1] ? 1 : x[1] > y[1] ? -1 : 0));
  const close = scored.slice(0, 5).map(([, name]) => name);
  for (const name of names.keys()) {
    if (close.length >= 5) break;
    if (name.includes(wanted) && !close.includes(name)) close.push(name);
  }
  return close.map((name) => ({ name, index: names.get(name) }));
}

function didYouMean(suggestions) {
  return suggestions.length ? `did you mean ${suggestions.map((s) => `'${s.name}'`).join(" or ")}?` : "";
}

function setTarget(node, value) {
  const target = widget(node, "target_class");
  if (!target) return;
  target.value = value;
  target.callback?.(target.value);
  markValidity(node, true);
  node.setDirtyCanvas?.(true, true);
}

let closeOpenPicker = null;

function openPicker(node) {
  closeOpenPicker?.();
  document.querySelector(".dct-picker")?.remove();
  const box = document.createElement("div");
  box.className = "dct-picker";
  box.setAttribute("role", "dialog");
  box.setAttribute("aria-label", "pick a class");
  Object.assign(box.style, {
    position: "fixed", top: "15%", left: "50%", transform: "translateX(-50%)", width: "420px", maxHeight: "60%",
    background: "#222", color: "#eee", border: "1px solid #555", borderRadius: "6px", padding: "8px",
    zIndex: 10000, display: "flex", flexDirection: "column", gap: "6px", fontFamily: "sans-serif",
  });
  const head = document.createElement("div");
  Object.assign(head.style, { display: "flex", gap: "6px", alignItems: "center" });
  const search = document.createElement("input");
  search.className = "dct-picker-search";
  search.placeholder = "type to filter the classifier's labels";
  search.style.flex = "1";
  const closeButton = document.createElement("button");
  closeButton.className = "dct-picker-close";
  closeButton.type = "button";
  closeButton.title = "close (Esc)";
  closeButton.setAttribute("aria-label", "close");
  closeButton.textContent = "×";
  Object.assign(closeButton.style, {
    background: "none", border: "1px solid #555", borderRadius: "4px", color: "#eee", cursor: "pointer",
    font: "16px/1 sans-serif", padding: "2px 8px",
  });
  head.append(search, closeButton);
  const status = document.createElement("div");
  status.className = "dct-picker-status";
  status.style.fontSize = "11px";
  const suggested = document.createElement("div");
  suggested.className = "dct-picker-suggestions";
  const list = document.createElement("div");
  list.className = "dct-picker-list";
  Object.assign(list.style, { overflowY: "auto", flex: "1" });
  box.append(head, status, suggested, list);
  document.body.append(box);

  // closes on its button, on Escape wherever the focus is, and on a click anywhere outside it
  const onKey = (e) => {
    if (e.key === "Escape") {
      e.stopPropagation();
      close();
    }
  };
  const onPointer = (e) => {
    if (!box.contains(e.target)) close();
  };
  const close = () => {
    box.remove();
    window.removeEventListener("keydown", onKey, true);
    window.removeEventListener("pointerdown", onPointer, true);
    if (closeOpenPicker === close) closeOpenPicker = null;
  };
  closeOpenPicker = close;
  closeButton.addEventListener("click", close);
  window.addEventListener("keydown", onKey, true);
  // after the click that opened it has finished
  setTimeout(() => box.isConnected && window.addEventListener("pointerdown", onPointer, true), 0);

  const row = (cls, text, onPick) => {
    const item = document.createElement("div");
    item.className = cls;
    item.textContent = text;
    Object.assign(item.style, { padding: "2px 4px", cursor: "pointer" });
    item.addEventListener("mouseenter", () => (item.style.background = "#333"));
    item.addEventListener("mouseleave", () => (item.style.background = ""));
    item.addEventListener("click", () => {
      onPick();
      close();
    });
    return item;
  };
  // a flagged name's close matches first: one click sets one
  const suggestions = node.__dctInvalid ? node.__dctSuggestions ?? [] : [];
  if (suggestions.length) {
    const title = document.createElement("div");
    title.style.fontSize = "11px";
    title.textContent = `"${widget(node, "target_class")?.value}" is not a label; did you mean:`;
    suggested.append(title, ...suggestions.map((s) => {
      const item = row("dct-picker-suggestion", `${s.index}: ${s.name}`, () => setTarget(node, s.name));
      item.dataset.index = s.index;
      item.style.color = "#ffd27a";
      return item;
    }));
    Object.assign(suggested.style, { borderBottom: "1px solid #444", paddingBottom: "4px" });
  }

  let pending = 0;
  const refresh = async () => {
    const ticket = ++pending;
    suggested.style.display = search.value ? "none" : "";
    try {
      const body = await fetchLabels(node, search.value, 300);
      if (ticket !== pending) return;
      status.textContent = `${body.matched} of ${body.total} labels`;
      list.replaceChildren(...body.labels.map((l) => {
        const item = row("dct-picker-item", `${l.index}: ${l.name}`, () => setTarget(node, l.synonyms[0] || l.name));
        item.dataset.index = l.index;
        return item;
      }));
    } catch (error) {
      status.textContent = String(error.message || error);
    }
  };
  search.addEventListener("input", refresh);
  search.focus();
  refresh();
}

function markValidity(node, ok, message = "", suggestions = []) {
  const target = widget(node, "target_class");
  if (!target) return;
  node.__dctInvalid = !ok;
  node.__dctSuggestions = ok ? [] : suggestions;
  target.label = ok ? undefined : "target_class (not a label!)";
  const button = widget(node, PICK_BUTTON);
  if (button) button.label = !ok && suggestions.length ? `${didYouMean(suggestions)} pick…` : undefined;
  node.color = ok ? node.__dctColor : "#a33";
  if (!ok) node.__dctMessage = message;
  node.setDirtyCanvas?.(true, true);
}

async function validateTarget(node) {
  const target = widget(node, "target_class");
  const value = String(target?.value ?? "").trim().toLowerCase();
  if (!value || !classifierSource(node)) return true;
  const body = await fetchLabels(node, "", 2000);
  if (body.total > body.labels.length) return true; // too many to check here; the node checks when it runs
  const ok = body.labels.some((l) => String(l.index) === value || l.name.toLowerCase() === value
    || l.synonyms.some((s) => s.toLowerCase() === value));
  const suggestions = ok ? [] : closeMatches(value, body.labels);
  const hint = suggestions.length ? `; ${didYouMean(suggestions)} (the node's button picks it)` : "";
  markValidity(node, ok, ok ? "" : `"${target.value}" is not one of the classifier's ${body.total} labels${hint}`,
               suggestions);
  return ok;
}

// ---- registration ---------------------------------------------------------------------------------------------
app.registerExtension({
  name: "dct.discriminative-class-tokens",
  async setup() {
    api.addEventListener("dct.train.progress", onProgress);
    api.addEventListener("dct.train.started", onStarted);
    api.addEventListener("dct.train.stopped", onStopped);
    api.addEventListener("dct.train.saved", onSaved);
    api.addEventListener("execution_interrupted", onInterrupted);
    api.addEventListener("execution_error", onExecutionError);
    api.addEventListener("execution_cached", onCached);
    for (const name of ["execution_success", "execution_error", "execution_interrupted"]) {
      api.addEventListener(name, fillCachedTexts);
    }
    // flag invalid class names before the prompt is queued
    const original = app.queuePrompt.bind(app);
    app.queuePrompt = async function (...args) {
      const bad = [];
      for (const node of app.graph?._nodes ?? []) {
        if (PICKER_TARGETS.has(node.comfyClass)) {
          try {
            if (!(await validateTarget(node))) bad.push(node.__dctMessage);
          } catch (error) {
            // a label lookup failure must never block queueing; the node reports errors itself
          }
        }
      }
      if (bad.length) {
        window.__dct.lastBlocked = bad;
        app.extensionManager?.toast?.add?.({ severity: "error", summary: "Invalid target class", detail: bad.join("\n"), life: 8000 });
        return false;
      }
      return original(...args);
    };
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!TEXT_NODES.has(nodeData?.name) || nodeType.prototype.__dctWrapped) return;
    nodeType.prototype.__dctWrapped = true;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      const result = onExecuted?.apply(this, arguments);
      const text = outputText(output);
      if (text != null) setResult(this, text, "done");
      return result;
    };
    // a loaded or pasted node shows the result it was saved with
    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const result = onConfigure?.apply(this, arguments);
      if (this.properties?.dct_state === "running") this.properties.dct_state = "stale";
      showResult(this);
      requestAnimationFrame(() => drawChart(this));
      return result;
    };
  },
  async nodeCreated(node) {
    if (PICKER_TARGETS.has(node.comfyClass)) {
      node.__dctColor = node.color;
      node.addWidget("button", PICK_BUTTON, null, () => openPicker(node), { serialize: false, hideInPanel: true });
    }
    if (TEXT_NODES.has(node.comfyClass)) addResultText(node);
    if (TRAIN_NODES.has(node.comfyClass)) addChart(node);
  },
  loadedGraphNode(node) {
    if (TEXT_NODES.has(node.comfyClass)) showResult(node);
    if (TRAIN_NODES.has(node.comfyClass)) requestAnimationFrame(() => drawChart(node));
  },
});
