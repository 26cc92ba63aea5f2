// Discriminative Class Tokens: the pack's face in the ComfyUI frontend.
// - a live loss / accuracy chart on the Train nodes (the simple one and the legacy one with every setting), fed
//   by the "dct.train.progress" events the node pushes, kept in the node's properties so it survives a reload;
// - a class picker for target_class, fed by /dct/labels with the connected Load Classifier's settings;
//   a target class that is not among the labels is flagged before the prompt is queued.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

// DCTTrainToken: the simple Train node; DCTTrainClassToken: the legacy one (saved workflows). Both have
// target_class and push progress events.
const TRAIN_NODES = new Set(["DCTTrainToken", "DCTTrainClassToken"]);
const PICKER_TARGETS = new Set([...TRAIN_NODES, "DCTAdaptiveClassGuidance"]);
const LOADER = "DCTLoadClassifier";
const MAX_POINTS = 2000;

window.__dct = { loaded: true, events: 0 };

function widget(node, name) {
  return node.widgets?.find((w) => w.name === name);
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
    ctx.fillText("loss / accuracy appear here while training runs", 8, h / 2);
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
  node.addDOMWidget("dct_chart", "dct_chart", canvas, { serialize: false, getMinHeight: () => 120 });
  requestAnimationFrame(() => drawChart(node));
}

function onProgress(event) {
  const data = event.detail;
  window.__dct.events += 1;
  const node = app.graph?.getNodeById?.(Number(data.node)) ?? app.graph?.getNodeById?.(data.node);
  if (!node) return;
  node.properties = node.properties || {};
  const history = (node.properties.dct_history = data.step === 0 ? [] : node.properties.dct_history || []);
  history.push({ step: data.step, loss: data.loss, accuracy: data.accuracy });
  if (history.length > MAX_POINTS) history.shift();
  drawChart(node);
  node.setDirtyCanvas?.(true, true);
  // let the frontend notice the changed properties, so the workflow it persists keeps the chart
  app.extensionManager?.workflow?.activeWorkflow?.changeTracker?.checkState?.();
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
    const all = source.inline.map((name, index) => ({ index, name, synonyms: name.split(",").map((s) => s.trim()) }));
    const matched = all.filter((l) => !q || l.name.toLowerCase().includes(q) || String(l.index) === q);
    return { total: all.length, matched: matched.length, labels: matched.slice(0, limit) };
  }
  const params = new URLSearchParams({ ...source.params, q: query, limit: String(limit) });
  const response = await api.fetchApi(`/dct/labels?${params}`);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `labels request failed (${response.status})`);
  return body;
}

function openPicker(node) {
  document.querySelector(".dct-picker")?.remove();
  const target = widget(node, "target_class");
  const box = document.createElement("div");
  box.className = "dct-picker";
  Object.assign(box.style, {
    position: "fixed", top: "15%", left: "50%", transform: "translateX(-50%)", width: "420px", maxHeight: "60%",
    background: "#222", color: "#eee", border: "1px solid #555", borderRadius: "6px", padding: "8px",
    zIndex: 10000, display: "flex", flexDirection: "column", gap: "6px", fontFamily: "sans-serif",
  });
  const search = document.createElement("input");
  search.className = "dct-picker-search";
  search.placeholder = "type to filter the classifier's labels";
  const status = document.createElement("div");
  status.className = "dct-picker-status";
  status.style.fontSize = "11px";
  const list = document.createElement("div");
  list.className = "dct-picker-list";
  Object.assign(list.style, { overflowY: "auto", flex: "1" });
  box.append(search, status, list);
  document.body.append(box);
  const close = () => box.remove();
  search.addEventListener("keydown", (e) => e.key === "Escape" && close());
  let pending = 0;
  const refresh = async () => {
    const ticket = ++pending;
    try {
      const body = await fetchLabels(node, search.value, 300);
      if (ticket !== pending) return;
      status.textContent = `${body.matched} of ${body.total} labels`;
      list.replaceChildren(...body.labels.map((l) => {
        const row = document.createElement("div");
        row.className = "dct-picker-item";
        row.dataset.index = l.index;
        row.textContent = `${l.index}: ${l.name}`;
        Object.assign(row.style, { padding: "2px 4px", cursor: "pointer" });
        row.addEventListener("click", () => {
          target.value = l.synonyms[0] || l.name;
          target.callback?.(target.value);
          markValidity(node, true);
          node.setDirtyCanvas?.(true, true);
          close();
        });
        return row;
      }));
    } catch (error) {
      status.textContent = String(error.message || error);
    }
  };
  search.addEventListener("input", refresh);
  search.focus();
  refresh();
}

function markValidity(node, ok, message = "") {
  const target = widget(node, "target_class");
  if (!target) return;
  node.__dctInvalid = !ok;
  target.label = ok ? undefined : "target_class (not a label!)";
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
  markValidity(node, ok, ok ? "" : `"${target.value}" is not one of the classifier's ${body.total} labels`);
  return ok;
}

app.registerExtension({
  name: "dct.discriminative-class-tokens",
  async setup() {
    api.addEventListener("dct.train.progress", onProgress);
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
  async nodeCreated(node) {
    if (!PICKER_TARGETS.has(node.comfyClass)) return;
    node.__dctColor = node.color;
    node.addWidget("button", "pick class…", null, () => openPicker(node), { serialize: false });
    if (TRAIN_NODES.has(node.comfyClass)) addChart(node);
  },
  loadedGraphNode(node) {
    if (TRAIN_NODES.has(node.comfyClass)) requestAnimationFrame(() => drawChart(node));
  },
});
