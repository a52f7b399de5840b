// The actrec tab: every layer of a run on one step slider, read from its activation store.
//
// TensorBoard loads this module in an iframe whose <base> is this plugin's route prefix, so every
// request below ("runs", "frame?...") goes to the plugin's own routes on TensorBoard's server: no
// other network, no build step. Tiles arrive as PNGs at the maps' own resolution and are scaled up
// by whole numbers with `image-rendering: pixelated`; labels, predictions and colour bars are HTML.

const POLL_MS = 2000;
const PLAY_MS = 120;
const TILE_TARGETS = { small: 36, medium: 56, large: 96 };

const state = {
  run: null,
  info: null,
  timeline: null,
  row: 0,
  playing: false,
  following: true,
  size: "medium",
  cards: [],
  stepRequest: 0,
  compare: null, // { run, info, timeline }: a second run drawn under each layer, at the nearest step
};

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "style") Object.assign(node.style, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

async function getJson(path) {
  const response = await fetch(path);
  const payload = await response.json();
  if (!response.ok) throw new Error(payload.error || `${path}: HTTP ${response.status}`);
  return payload;
}

function query(params) {
  return new URLSearchParams(params).toString();
}

// -- layout -----------------------------------------------------------------------------------

function buildShell() {
  const link = el("link", { rel: "stylesheet", href: "dashboard.css" });
  document.head.append(link);
  const runPicker = el("select", { id: "run", title: "run", onchange: (e) => openRun(e.target.value) });
  const comparePicker = el("select", { id: "compare", title: "a second run, drawn under each layer at the nearest step" });
  comparePicker.addEventListener("change", () => openCompare(comparePicker.value));
  const play = el("button", { id: "play", type: "button", title: "play / pause (space)", onclick: togglePlay }, "▶");
  const slider = el("input", { id: "slider", type: "range", min: "0", max: "0", value: "0", step: "1" });
  slider.addEventListener("input", () => userRow(Number(slider.value), false));
  const follow = el("input", { id: "follow", type: "checkbox" });
  follow.checked = state.following;
  follow.addEventListener("change", () => {
    state.following = follow.checked;
    if (state.following && state.timeline) setRow(state.timeline.num_rows - 1);
  });
  const size = el("select", { id: "size", title: "tile size" });
  for (const name of Object.keys(TILE_TARGETS)) size.append(el("option", { value: name }, name));
  size.value = state.size;
  size.addEventListener("change", () => {
    state.size = size.value;
    layoutCards();
  });
  const bar = el(
    "div",
    { class: "bar" },
    el("label", {}, "run ", runPicker),
    el("label", {}, "compare ", comparePicker),
    play,
    slider,
    el("span", { id: "where", class: "where" }, ""),
    el("label", { title: "jump to new steps while the run trains" }, follow, " following"),
    el("label", {}, "tiles ", size),
  );
  const curves = el("div", { id: "curves", class: "curves" });
  const message = el("div", { id: "message", class: "message" });
  const layers = el("div", { id: "layers", class: "layers" });
  document.body.append(el("div", { class: "actrec" }, bar, message, curves, layers));
  document.addEventListener("keydown", onKey);
  window.addEventListener("resize", () => layoutCards());
}

function say(text) {
  document.getElementById("message").textContent = text || "";
}

function onKey(event) {
  if (!state.timeline || event.target.tagName === "SELECT") return;
  const last = state.timeline.num_rows - 1;
  const moves = { ArrowLeft: -1, ArrowRight: 1, PageDown: 10, PageUp: -10 };
  if (event.key in moves) userRow(Math.max(0, Math.min(last, state.row + moves[event.key])));
  else if (event.key === "Home") userRow(0);
  else if (event.key === "End") userRow(last);
  else if (event.key === " ") togglePlay();
  else return;
  event.preventDefault();
}

// -- runs -------------------------------------------------------------------------------------

async function loadRuns() {
  const { runs } = await getJson("runs");
  const picker = document.getElementById("run");
  picker.replaceChildren(...runs.map((name) => el("option", { value: name }, name)));
  const compare = document.getElementById("compare");
  compare.replaceChildren(el("option", { value: "" }, "none"), ...runs.map((name) => el("option", { value: name }, name)));
  if (!runs.length) {
    say("No run under this logdir has an activation store (activations.h5) yet.");
    return;
  }
  const wanted = new URLSearchParams(window.parent.location.search).get("actrecRun");
  await openRun(runs.includes(wanted) ? wanted : runs[0]);
}

async function openRun(name) {
  stopPlay();
  say(`opening ${name} ...`);
  state.run = name;
  document.getElementById("run").value = name;
  const [info, timeline] = await Promise.all([getJson(`run?${query({ run: name })}`), getJson(`timeline?${query({ run: name })}`)]);
  if (state.run !== name) return;
  state.info = info;
  state.timeline = timeline;
  buildCards();
  updateSlider();
  say(timeline.num_rows ? "" : "This run has no recorded step yet; the tab follows it as it trains.");
  if (timeline.num_rows) setRow(state.following ? timeline.num_rows - 1 : 0);
}

async function openCompare(name) {
  if (!name) {
    state.compare = null;
  } else {
    try {
      const [info, timeline] = await Promise.all([getJson(`run?${query({ run: name })}`), getJson(`timeline?${query({ run: name })}`)]);
      state.compare = { run: name, info, timeline };
    } catch (error) {
      say(error.message);
      state.compare = null;
    }
  }
  if (!state.info) return;
  buildCards();
  if (state.timeline && state.timeline.num_rows) setRow(state.row);
}

function nearestRow(steps, step) {
  let low = 0;
  let high = steps.length - 1;
  while (low < high) {
    const middle = (low + high) >> 1;
    if (steps[middle] < step) low = middle + 1;
    else high = middle;
  }
  return low > 0 && Math.abs(steps[low - 1] - step) <= Math.abs(steps[low] - step) ? low - 1 : low;
}

// The server fixed the run's colour scales and channel plans anew (it has twice the rows it had):
// redraw the cards from the new plan, staying at the step shown (or following the newest).
async function replan(name) {
  const info = await getJson(`run?${query({ run: name })}`);
  if (name !== state.run) return;
  state.info = info;
  buildCards();
  setRow(state.following && !state.playing ? state.timeline.num_rows - 1 : Math.min(state.row, state.timeline.num_rows - 1));
}

function updateSlider() {
  const slider = document.getElementById("slider");
  slider.max = String(Math.max(0, state.timeline.num_rows - 1));
  slider.disabled = state.timeline.num_rows === 0;
}

// -- layer cards ------------------------------------------------------------------------------

function colourBar(scale) {
  const stops = scale.bar.map((colour, i) => `${colour} ${((100 * i) / (scale.bar.length - 1)).toFixed(2)}%`);
  const strip = el("div", { class: "strip", style: { background: `linear-gradient(to right, ${stops.join(", ")})` } });
  const labels = el("div", { class: "strip-labels" });
  for (const [text, position] of scale.labels) {
    const label = el("span", { style: { left: `${100 * position}%` } }, text);
    label.dataset.anchor = String(position);
    labels.append(label);
  }
  return el("div", { class: "colourbar", title: `colour scale: ${scale.rule}` }, strip, labels);
}

function buildCards() {
  const container = document.getElementById("layers");
  const { probes } = state.info;
  state.cards = state.info.layers.map((layer) => {
    // The PNG (the maps at their own resolution, 1-pixel gutters) is drawn tile by tile into a canvas,
    // each tile scaled by a whole number with smoothing off, so maps stay crisp and gutters stay thin.
    const image = new Image();
    const canvas = el("canvas", { class: "tiles" });
    canvas.dataset.layer = layer.name;
    const note = el("div", { class: "note" });
    image.addEventListener("error", () => explainFailure(image, note));
    image.addEventListener("load", () => {
      note.textContent = "";
      drawTiles(entryOf(layer.name));
      canvas.dataset.row = image.dataset.pendingRow;
    });
    const grid = el("div", { class: "grid" });
    const card = el(
      "section",
      { class: "card" },
      el(
        "header",
        {},
        el("h3", {}, layer.name),
        el("span", { class: "meta" }, `${layer.module_type} · ${layer.kind}`),
        el("span", { class: "meta note-text" }, layer.note ? layer.note.replace(`${layer.name}: `, "") : ""),
        colourBar(layer.scale),
      ),
      grid,
      note,
    );
    const rowLabels = layer.kind === "maps" ? layer.channels.map((c) => `ch ${c}`) : [`units ${describeUnits(layer.channels)}`];
    return { layer, card, grid, image, canvas, note, rowLabels, probeLabels: [], predictions: [], inputs: [], zoom: 1 };
  });
  container.replaceChildren(...state.cards.map((entry) => entry.card));
  const other = state.compare;
  for (const entry of state.cards) {
    const layer = other && other.timeline.num_rows ? other.info.layers.find((l) => l.name === entry.layer.name) : null;
    entry.compare = null;
    if (!layer) continue;
    const sub = { layer, image: new Image(), canvas: el("canvas", { class: "tiles compare" }), zoom: 1 };
    sub.probes = other.info.probes.labels.length;
    sub.canvas.dataset.layer = layer.name;
    sub.predictions = other.info.probes.labels.map(() => el("span", { class: "prediction" }, ""));
    sub.image.addEventListener("error", () => explainFailure(sub.image, entry.note));
    sub.image.addEventListener("load", () => {
      drawTiles(sub);
      sub.canvas.dataset.row = sub.image.dataset.pendingRow;
    });
    entry.compare = sub;
  }
  for (const entry of state.cards) {
    entry.probeLabels = probes.labels.map((label) => el("span", { class: "probe-label" }, className(label)));
    entry.predictions = probes.labels.map(() => el("span", { class: "prediction" }, ""));
    entry.inputs = probes.images
      ? probes.labels.map((_, i) => el("img", { class: "input", alt: `probe ${i}`, src: `probe?${query({ run: state.run, index: i })}` }))
      : [];
  }
  layoutCards();
}

function entryOf(name) {
  return state.cards.find((entry) => entry.layer.name === name);
}

// Gap between tiles on screen, in CSS pixels (the served PNG has 1-pixel gutters at map resolution).
const GAP = 3;

// Vertical zoom: a vector layer's one-pixel-high heatmap row is drawn at least 24 pixels high.
function zoomY(layer, zoom) {
  return layer.kind === "vector" ? Math.max(zoom, Math.round(24 / layer.grid.height)) : zoom;
}

function canvasSize(layer, probes, zoom) {
  const { rows, height, width } = layer.grid;
  return { width: probes * (width * zoom + GAP) + GAP, height: rows * (height * zoomY(layer, zoom) + GAP) + GAP };
}

function drawTiles(entry) {
  if (!entry || !entry.image.complete || !entry.image.naturalWidth) return;
  const { rows, height, width, gutter } = entry.layer.grid;
  const probes = entry.probes || state.info.probes.labels.length;
  const zoom = entry.zoom;
  const tall = zoomY(entry.layer, zoom);
  const context = entry.canvas.getContext("2d");
  context.imageSmoothingEnabled = false;
  context.fillStyle = GUTTER_COLOUR;
  context.fillRect(0, 0, entry.canvas.width, entry.canvas.height);
  for (let row = 0; row < rows; row += 1) {
    for (let probe = 0; probe < probes; probe += 1) {
      context.drawImage(
        entry.image,
        gutter + probe * (width + gutter),
        gutter + row * (height + gutter),
        width,
        height,
        GAP + probe * (width * zoom + GAP),
        GAP + row * (height * tall + GAP),
        width * zoom,
        height * tall,
      );
    }
  }
}

const GUTTER_COLOUR = "#dcdcdc";

function describeUnits(units) {
  if (units.length > 2 && units.every((u, i) => u === units[0] + i)) return `${units[0]}-${units[units.length - 1]}`;
  return units.join(", ");
}

function className(label) {
  if (label < 0) return "?";
  const names = state.info.probes.class_names;
  return label < names.length ? names[label] : String(label);
}

function zoomFor(layer, probes, available) {
  const { height, width } = layer.grid;
  const target = TILE_TARGETS[state.size];
  let zoom = layer.kind === "maps" ? Math.round(target / Math.max(height, width)) : Math.round((2 * target) / width);
  zoom = Math.max(1, zoom);
  while (zoom > 1 && canvasSize(layer, probes, zoom).width > available) zoom -= 1;
  return zoom;
}

function layoutCards() {
  if (!state.info) return;
  const probes = state.info.probes.labels.length;
  const available = Math.max(200, document.getElementById("layers").clientWidth - 140);
  for (const entry of state.cards) {
    const { layer } = entry;
    const { height, width } = layer.grid;
    const zoom = (entry.zoom = zoomFor(layer, probes, available));
    const size = canvasSize(layer, probes, zoom);
    entry.canvas.width = size.width;
    entry.canvas.height = size.height;
    const column = (i) => ({ left: `${GAP + i * (width * zoom + GAP)}px`, width: `${width * zoom}px` });
    const strip = (children, extra = "") => {
      const node = el("div", { class: `columns ${extra}` }, ...children);
      node.style.width = `${size.width}px`;
      return node;
    };
    entry.probeLabels.forEach((label, i) => Object.assign(label.style, column(i)));
    const inputSize = Math.max(16, Math.min(width * zoom, 56));
    entry.inputs.forEach((image, i) => {
      Object.assign(image.style, { width: `${inputSize}px`, height: `${inputSize}px` });
      image.style.left = `${GAP + i * (width * zoom + GAP) + (width * zoom - inputSize) / 2}px`;
    });
    const inputs = strip(entry.inputs, "inputs");
    inputs.style.height = entry.inputs.length ? `${inputSize + 4}px` : "0";
    entry.predictions.forEach((label, i) => Object.assign(label.style, column(i)));
    const side = el("div", { class: "rowlabels", style: { height: `${size.height}px` } });
    const rowHeight = layer.kind === "maps" ? height * zoom + GAP : size.height - GAP;
    entry.narrow = width * zoom < 48;
    entry.rowLabels.forEach((text, i) => {
      side.append(el("span", { style: { top: `${GAP + i * rowHeight}px`, height: `${rowHeight - GAP}px` } }, text));
    });
    entry.grid.replaceChildren(
      el("span", { class: "side" }, "label"),
      strip(entry.probeLabels),
      el("span", { class: "side" }, entry.inputs.length ? "input" : ""),
      inputs,
      side,
      entry.canvas,
      el("span", { class: "side" }, "predicted"),
      strip(entry.predictions),
    );
    drawTiles(entry);
    const sub = entry.compare;
    if (sub) {
      sub.zoom = zoomFor(sub.layer, sub.probes, available);
      const subSize = canvasSize(sub.layer, sub.probes, sub.zoom);
      sub.canvas.width = subSize.width;
      sub.canvas.height = subSize.height;
      const subWidth = sub.layer.grid.width * sub.zoom;
      sub.predictions.forEach((label, i) => Object.assign(label.style, { left: `${GAP + i * (subWidth + GAP)}px`, width: `${subWidth}px` }));
      const predictions = el("div", { class: "columns" }, ...sub.predictions);
      predictions.style.width = `${subSize.width}px`;
      entry.grid.append(
        el("span", { class: "side compare-name", title: state.compare.run }, state.compare.run),
        el("div", { class: "compare-head" }, el("span", { class: "compare-step" }, ""), colourBar(sub.layer.scale)),
        el("span", { class: "side" }, ""),
        sub.canvas,
        el("span", { class: "side" }, "predicted"),
        predictions,
      );
      drawTiles(sub);
    }
  }
}

async function explainFailure(image, note) {
  const source = image.getAttribute("src");
  if (!source) return;
  try {
    const response = await fetch(source);
    const payload = await response.json();
    note.textContent = payload.error || `frame unavailable (HTTP ${response.status})`;
  } catch (error) {
    note.textContent = `frame unavailable: ${error.message}`;
  }
}

// -- steps ------------------------------------------------------------------------------------

// A step the user picked: looking back at an earlier step stops following the newest one.
function userRow(row, moveSlider = true) {
  const follow = document.getElementById("follow");
  if (state.timeline && row < state.timeline.num_rows - 1 && state.following) {
    state.following = false;
    follow.checked = false;
  }
  setRow(row, moveSlider);
}

function setRow(row, moveSlider = true) {
  if (!state.timeline || !state.timeline.num_rows) return;
  state.row = row;
  const { global_steps: steps, epochs, num_rows: rows } = state.timeline;
  if (moveSlider) document.getElementById("slider").value = String(row);
  document.getElementById("where").textContent = `step ${steps[row]} · epoch ${epochs[row]} · row ${row + 1} of ${rows}`;
  for (const entry of state.cards) {
    entry.image.dataset.pendingRow = String(row);
    entry.image.src = `frame?${query({ run: state.run, layer: entry.layer.name, row })}`;
  }
  if (state.compare && state.cards.some((entry) => entry.compare)) {
    const other = nearestRow(state.compare.timeline.global_steps, steps[row]);
    for (const entry of state.cards) {
      if (!entry.compare) continue;
      entry.compare.image.dataset.pendingRow = String(other);
      entry.compare.image.src = `frame?${query({ run: state.compare.run, layer: entry.layer.name, row: other })}`;
      const head = entry.grid.querySelector(".compare-step");
      if (head) head.textContent = `step ${state.compare.timeline.global_steps[other]} (nearest to ${steps[row]})`;
    }
    loadComparePredictions(other);
  }
  drawCurves();
  loadPredictions(row);
}

async function loadPredictions(row) {
  const request = ++state.stepRequest;
  let payload;
  try {
    payload = await getJson(`step?${query({ run: state.run, row })}`);
  } catch (error) {
    say(error.message);
    return;
  }
  if (request !== state.stepRequest) return;
  const labels = state.info.probes.labels;
  for (const entry of state.cards) {
    payload.predictions.forEach((predicted, i) => {
      const node = entry.predictions[i];
      if (!node) return;
      const known = labels[i] >= 0;
      const right = known && predicted === labels[i];
      const name = className(predicted);
      const mark = known && predicted >= 0 ? (right ? "✓" : "✗") : "";
      // A column too narrow for the class name shows the mark alone; the name is in its tooltip.
      node.textContent = entry.narrow && mark ? mark : `${mark} ${name}`.trim();
      node.title = `predicted ${name}`;
      node.className = `prediction ${known ? (right ? "right" : "wrong") : ""}`;
    });
  }
}

async function loadComparePredictions(row) {
  const compare = state.compare;
  let payload;
  try {
    payload = await getJson(`step?${query({ run: compare.run, row })}`);
  } catch (error) {
    say(error.message);
    return;
  }
  if (compare !== state.compare) return;
  const labels = compare.info.probes.labels;
  for (const entry of state.cards) {
    if (!entry.compare) continue;
    payload.predictions.forEach((predicted, i) => {
      const node = entry.compare.predictions[i];
      if (!node) return;
      const right = labels[i] >= 0 && predicted === labels[i];
      const mark = labels[i] >= 0 && predicted >= 0 ? (right ? "✓" : "✗") : "";
      node.textContent = entry.narrow && mark ? mark : `${mark} ${className(predicted)}`.trim();
      node.title = `predicted ${className(predicted)}`;
      node.className = `prediction ${labels[i] >= 0 ? (right ? "right" : "wrong") : ""}`;
    });
  }
}

function togglePlay() {
  if (state.playing) stopPlay();
  else startPlay();
}

function startPlay() {
  if (!state.timeline || state.timeline.num_rows < 2) return;
  state.playing = true;
  document.getElementById("play").textContent = "❚❚";
  if (state.row >= state.timeline.num_rows - 1) setRow(0);
  const tick = () => {
    if (!state.playing) return;
    const ready = state.cards.every((entry) => entry.image.complete && (!entry.compare || entry.compare.image.complete));
    if (ready) {
      if (state.row >= state.timeline.num_rows - 1) {
        stopPlay();
        return;
      }
      setRow(state.row + 1);
    }
    state.timer = setTimeout(tick, PLAY_MS);
  };
  state.timer = setTimeout(tick, PLAY_MS);
}

function stopPlay() {
  state.playing = false;
  clearTimeout(state.timer);
  const button = document.getElementById("play");
  if (button) button.textContent = "▶";
}

// -- curves -----------------------------------------------------------------------------------

function drawCurves() {
  const container = document.getElementById("curves");
  const curves = state.timeline ? state.timeline.curves : {};
  const panels = [
    ["loss", ["train/loss", "val/loss"]],
    ["accuracy", ["train/acc", "val/acc"]],
  ].filter(([, names]) => names.some((name) => curves[name] && curves[name][1].some((v) => v !== null)));
  if (container.childElementCount !== panels.length) {
    container.replaceChildren(
      ...panels.map(([title]) => {
        const canvas = el("canvas", { class: "curve", width: "460", height: "120" });
        canvas.dataset.title = title;
        canvas.addEventListener("click", (event) => seekFromCurve(canvas, event));
        return canvas;
      }),
    );
  }
  const cursor = state.timeline.global_steps[state.row];
  panels.forEach(([title, names], i) => drawCurve(container.children[i], title, names.map((n) => [n, curves[n]]), cursor));
}

function curveGeometry(canvas) {
  const steps = state.timeline.global_steps;
  const first = steps.length ? steps[0] : 0;
  const last = steps.length ? Math.max(steps[steps.length - 1], first + 1) : 1;
  const left = 46;
  const right = canvas.width - 10;
  return { first, last, left, right, x: (step) => left + ((step - first) / (last - first)) * (right - left) };
}

function drawCurve(canvas, title, series, cursor) {
  const context = canvas.getContext("2d");
  const { width, height } = canvas;
  const geometry = curveGeometry(canvas);
  const top = 18;
  const bottom = height - 18;
  const values = series.flatMap(([, data]) => (data ? data[1].filter((v) => v !== null) : []));
  let low = Math.min(...values);
  let high = Math.max(...values);
  if (title === "accuracy") [low, high] = [Math.min(0, low), Math.max(1, high)];
  if (!(high > low)) [low, high] = [low - 1, high + 1];
  const y = (v) => bottom - ((v - low) / (high - low)) * (bottom - top);
  context.clearRect(0, 0, width, height);
  context.font = "11px sans-serif";
  context.fillStyle = "#444";
  context.fillText(title, geometry.left, 12);
  context.fillStyle = "#777";
  context.fillText(high.toPrecision(3), 2, top + 4);
  context.fillText(low.toPrecision(3), 2, bottom);
  context.fillText(String(geometry.first), geometry.left, height - 4);
  const lastText = String(geometry.last);
  context.fillText(lastText, geometry.right - context.measureText(lastText).width, height - 4);
  context.strokeStyle = "#ddd";
  context.strokeRect(geometry.left, top, geometry.right - geometry.left, bottom - top);
  // As actrec render draws them: a training curve (every batch) smoothed (data[2], TensorBoard's EMA)
  // over its raw values in a faint tint of its colour; validation is drawn as it is, with its points.
  const colours = { "train/loss": "#2166ac", "train/acc": "#2166ac", "val/loss": "#e08a1e", "val/acc": "#e08a1e" };
  const faint = "#b0cbe4";
  const line = (steps, values, colour, lineWidth, dots) => {
    context.strokeStyle = colour;
    context.fillStyle = colour;
    context.lineWidth = lineWidth;
    context.beginPath();
    let drawing = false;
    steps.forEach((step, i) => {
      const value = values[i];
      if (value === null) {
        drawing = false;
        return;
      }
      if (drawing) context.lineTo(geometry.x(step), y(value));
      else context.moveTo(geometry.x(step), y(value));
      drawing = true;
      if (dots) context.fillRect(geometry.x(step) - 1.5, y(value) - 1.5, 3, 3);
    });
    context.stroke();
  };
  series.forEach(([name, data], index) => {
    if (!data) return;
    const smoothed = data.length > 2 ? data[2] : null;
    if (smoothed) {
      line(data[0], data[1], faint, 1, false);
      line(data[0], smoothed, colours[name], 2, false);
    } else {
      line(data[0], data[1], colours[name], 1, data[0].length < 30);
    }
    context.fillStyle = colours[name];
    context.fillText(smoothed ? `${name} (smoothed)` : name, geometry.left + 60 + index * 110, 12);
  });
  context.lineWidth = 1;
  const x = geometry.x(cursor);
  context.strokeStyle = "#c0392b";
  context.beginPath();
  context.moveTo(x, top);
  context.lineTo(x, bottom);
  context.stroke();
}

function seekFromCurve(canvas, event) {
  if (!state.timeline || !state.timeline.num_rows) return;
  const geometry = curveGeometry(canvas);
  const bounds = canvas.getBoundingClientRect();
  const px = ((event.clientX - bounds.left) * canvas.width) / bounds.width;
  const step = geometry.first + ((px - geometry.left) / (geometry.right - geometry.left)) * (geometry.last - geometry.first);
  const steps = state.timeline.global_steps;
  let best = 0;
  for (let i = 1; i < steps.length; i += 1) if (Math.abs(steps[i] - step) < Math.abs(steps[best] - step)) best = i;
  userRow(best);
}

// -- live -------------------------------------------------------------------------------------

async function poll() {
  if (state.run && state.timeline) {
    try {
      const name = state.run;
      const { num_rows: rows } = await getJson(`poll?${query({ run: name })}`);
      if (name === state.run && rows !== state.timeline.num_rows) {
        const timeline = await getJson(`timeline?${query({ run: name })}`);
        if (name === state.run) {
          const wasEmpty = !state.timeline.num_rows;
          const replanned = state.info && timeline.generation !== state.info.generation;
          state.timeline = timeline;
          updateSlider();
          if (wasEmpty) await openRun(name);
          else if (replanned) await replan(name);
          else if (state.following && !state.playing) setRow(timeline.num_rows - 1);
          else drawCurves();
        }
      }
    } catch (error) {
      say(error.message);
    }
  }
  setTimeout(poll, POLL_MS);
}

export async function render() {
  buildShell();
  try {
    await loadRuns();
  } catch (error) {
    say(error.message);
  }
  setTimeout(poll, POLL_MS);
}
