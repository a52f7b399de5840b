"""The report page: HTML, CSS and the script that drives every panel from one step slider."""

from __future__ import annotations

import html
import json

from actrec.recording.colors import PALETTE
from actrec.recording.scale import ColourScale
from actrec.report.charts import css_color

_CSS = """
:root { --tile: 40px; font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #1e1e1e; }
body { margin: 0; background: #fafafa; }
header { position: sticky; top: 0; z-index: 5; background: #fff; border-bottom: 1px solid #ddd;
         padding: 8px 16px; display: flex; flex-wrap: wrap; gap: 12px; align-items: center; }
header h1 { font-size: 16px; margin: 0 12px 0 0; font-weight: 600; }
#slider { flex: 1 1 320px; }
#step-label { font-variant-numeric: tabular-nums; min-width: 170px; font-weight: 600; }
button { font: inherit; padding: 3px 12px; }
main { padding: 12px 16px 40px; }
section { margin-bottom: 18px; }
h2 { font-size: 14px; margin: 8px 0; color: #444; text-transform: uppercase; letter-spacing: .04em; }
.panels { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; margin-bottom: 12px; }
.panel { background: #fff; border: 1px solid #e2e2e2; border-radius: 4px; padding: 8px 10px; margin: 0; }
.panel figcaption, .panel .caption { font-size: 13px; margin-bottom: 6px; display: flex; gap: 10px;
         justify-content: space-between; }
.panel-step { color: #666; font-variant-numeric: tabular-nums; }
.grid { position: relative; line-height: 0; }
.grid img, .grid canvas { width: 100%; height: 100%; image-rendering: pixelated; image-rendering: crisp-edges; }
.grid::after { content: ""; position: absolute; inset: 0; pointer-events: none;
         background-image: linear-gradient(to right, #d6d6d6 1px, transparent 1px),
                           linear-gradient(to bottom, #d6d6d6 1px, transparent 1px);
         background-size: var(--tw) var(--th); border-right: 1px solid #d6d6d6;
         border-bottom: 1px solid #d6d6d6; }
.labels { display: grid; font-size: 11px; text-align: center; line-height: 16px; }
.labels span { overflow: hidden; white-space: nowrap; text-overflow: ellipsis; }
.right { color: #1a853c; } .wrong { color: #c81e1e; }
.scalebar { font-size: 11px; color: #777; }
.layer-body { display: grid; grid-template-columns: auto auto; column-gap: 6px; align-items: start; }
.rowlabels { display: grid; font-size: 11px; color: #777; text-align: right; white-space: nowrap; }
.rowlabels span { display: flex; align-items: center; justify-content: flex-end; overflow: hidden; }
.probe-labels { color: #555; }
.cbar { display: inline-flex; flex-direction: column; gap: 1px; min-width: 110px; font-size: 10px; color: #555; }
.cbar-ramp { height: 8px; border: 1px solid #ccc; }
.cbar-ticks { display: flex; justify-content: space-between; font-variant-numeric: tabular-nums; }
#sticky-predictions { flex-basis: 100%; display: flex; gap: 8px; align-items: center; font-size: 11px; }
#sticky-predictions .labels { flex: 0 0 auto; }
.chart .grid { stroke: #e8e8e8; } .chart .axis { stroke: #3c3c3c; }
.chart .tick { font-size: 10px; fill: #777; } .chart .chart-title { font-size: 12px; fill: #1e1e1e; }
.chart .cursor { stroke: #c81e1e; stroke-width: 1.2; }
.swatch { display: inline-block; width: 14px; height: 4px; margin: 0 4px 2px 8px; vertical-align: middle; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
td, th { padding: 3px 10px; border-bottom: 1px solid #eee; text-align: right; }
td:first-child, th:first-child { text-align: left; }
.note { font-size: 12px; color: #666; max-width: 900px; }
"""

_SCRIPT = r"""
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("report-data").textContent);
  const slider = document.getElementById("slider");
  const playButton = document.getElementById("play");
  const stepLabel = document.getElementById("step-label");
  const zoom = document.getElementById("zoom");
  const count = D.steps.length;
  let current = 0, timer = null;
  const png = (b64) => "data:image/png;base64," + b64;
  // Frames come as palette indices, each step minus the one before (mod 256), deflated: inflated once here,
  // added up, and painted through the palette into each layer's canvas at the maps' own resolution.
  const palette = new Uint32Array(256);
  D.palette.forEach(([r, g, b], i) => { palette[i] = ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0; });

  async function inflate(text) {
    const binary = atob(text);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }

  async function decodeFrames(layer) {
    layer.size = layer.channels * layer.height * layer.width * D.labels.length;
    const pixels = layer.frameCount > 0 ? await inflate(layer.frames) : new Uint8Array(0);
    for (let i = layer.size; i < pixels.length; i++) pixels[i] += pixels[i - layer.size];  // wraps mod 256
    layer.pixels = pixels;
  }

  function paint(panel, layer, row) {
    const canvas = panel.querySelector("canvas");
    const width = layer.width * D.labels.length, height = layer.channels * layer.height;
    if (canvas.width !== width) canvas.width = width;
    if (canvas.height !== height) canvas.height = height;
    const context = canvas.getContext("2d");
    canvas.dataset.row = String(row);
    if (row < 0 || layer.pixels === undefined) { context.clearRect(0, 0, width, height); return; }
    const image = context.createImageData(width, height);
    const out = new Uint32Array(image.data.buffer);
    const pixels = layer.pixels, offset = row * layer.size;
    for (let i = 0; i < layer.size; i++) out[i] = palette[pixels[offset + i]];
    context.putImageData(image, 0, 0);
  }
  const fmt = (v, digits) => (v === null || v === undefined ? "–" : v.toFixed(digits));

  function sizeGrids() {
    const tile = Number(zoom.value);
    document.querySelectorAll(".grid[data-channels]").forEach((grid) => {
      const w = Number(grid.dataset.width), h = Number(grid.dataset.height);
      // A vector layer (one row of units) stays at least 8 px high, so it reads as a row, not a line.
      const th = Math.max(Number(grid.dataset.channels) === 1 && h === 1 ? 8 : 3, Math.round(tile * h / w));
      grid.style.setProperty("--tw", tile + "px");
      grid.style.setProperty("--th", th + "px");
      grid.style.width = (tile * Number(grid.dataset.probes)) + "px";
      grid.style.height = (th * Number(grid.dataset.channels)) + "px";
      const rows = grid.parentElement.querySelector(".rowlabels");
      if (rows) rows.style.gridTemplateRows = "repeat(" + grid.dataset.channels + ", " + th + "px)";
    });
    document.querySelectorAll(".labels").forEach((row) => {
      row.style.gridTemplateColumns = "repeat(" + D.labels.length + ", " + tile + "px)";
    });
  }

  function className(index) {
    if (index >= 0 && D.classNames.length === 0) return String(index);  // no names: the number, as frames do
    return index >= 0 && index < D.classNames.length ? D.classNames[index] : "?";
  }

  function setPanelStep(panel, text) {
    panel.querySelector(".panel-step").textContent = text;
    panel.dataset.step = text;
  }

  function showPredictions(current, step) {
    if (D.predictions === null) {  // not a classifier: no predictions, no tally; its outputs instead
      setPanelStep(document.getElementById("probes"), "step " + step);
      if (D.outputs && D.outputs.frames) document.getElementById("output-img").src = png(D.outputs.frames[current]);
      else if (D.outputs) {
        document.querySelectorAll("#outputs span").forEach((cell, i) => {
          cell.textContent = D.outputs.texts[current][i];
          cell.title = cell.textContent;
        });
      }
      return;
    }
    const predicted = D.predictions[current];
    document.querySelectorAll(".predictions span").forEach((cell, i) => {
      const probe = i % D.labels.length;
      if (D.labels[probe] < 0) {  // unlabeled: neither right nor wrong
        cell.textContent = className(predicted[probe]);
        cell.className = "";
        return;
      }
      const right = predicted[probe] === D.labels[probe];
      cell.textContent = (right ? "✓ " : "✗ ") + className(predicted[probe]);
      cell.className = right ? "right" : "wrong";
    });
    const labeled = D.labels.map((label, probe) => probe).filter((probe) => D.labels[probe] >= 0);
    const correct = labeled.filter((probe) => predicted[probe] === D.labels[probe]).length;
    const tally = correct + "/" + labeled.length + " right";
    setPanelStep(document.getElementById("probes"), "step " + step + " · " + tally);
  }

  function show(index) {
    current = Math.max(0, Math.min(count - 1, index));
    slider.value = String(current);
    const step = D.steps[current];
    stepLabel.textContent = "step " + step + " · epoch " + D.epochs[current];
    document.querySelectorAll("figure.layer[data-run='0']").forEach((panel) => {
      const layer = D.layers[Number(panel.dataset.index)];
      paint(panel, layer, current);
      setPanelStep(panel, "step " + step);
    });
    D.compare.forEach((other, k) => {
      const row = other.index[current];
      document.querySelectorAll("figure.layer[data-run='" + (k + 1) + "']").forEach((panel) => {
        const layer = other.layers[Number(panel.dataset.index)];
        paint(panel, layer, row);
        setPanelStep(panel, row < 0 ? "not started at step " + step : "step " + other.steps[row]);
      });
    });
    showPredictions(current, step);
    document.querySelectorAll("svg.chart[data-s0]").forEach((svg) => {
      const x0 = Number(svg.dataset.x0), x1 = Number(svg.dataset.x1);
      const s0 = Number(svg.dataset.s0), s1 = Number(svg.dataset.s1);
      const x = x0 + (Math.min(Math.max(step, s0), s1) - s0) / (s1 - s0) * (x1 - x0);
      const cursor = svg.querySelector(".cursor");
      cursor.setAttribute("x1", x.toFixed(1));
      cursor.setAttribute("x2", x.toFixed(1));
    });
    document.querySelectorAll(".chart-panel").forEach((panel) => setPanelStep(panel, "step " + step));
    D.dynamics.forEach((layer, i) => {
      const row = document.getElementById("dyn-" + i);
      row.querySelector(".cka-final").textContent = fmt(layer.ckaFinal[current], 3);
      row.querySelector(".cka-first").textContent = fmt(layer.ckaFirst[current], 3);
      row.querySelector(".change").textContent = fmt(layer.change[current], 4);
      const sat = layer.saturated[current];
      row.querySelector(".saturated").textContent = sat === null ? "–" : (100 * sat).toFixed(1) + "%";
    });
    setPanelStep(document.getElementById("dynamics-table"), "step " + step);
  }

  function play() {
    if (timer !== null) { stop(); return; }
    if (current >= count - 1) show(0);
    playButton.textContent = "❚❚ pause";
    timer = setInterval(() => { if (current >= count - 1) stop(); else show(current + 1); }, 1000 / D.fps);
  }
  function stop() {
    if (timer !== null) clearInterval(timer);
    timer = null;
    playButton.textContent = "▶ play";
  }

  slider.addEventListener("input", () => { stop(); show(Number(slider.value)); });
  playButton.addEventListener("click", play);
  zoom.addEventListener("input", sizeGrids);
  document.addEventListener("keydown", (event) => {
    if (event.target === zoom) return;
    const moves = { ArrowRight: 1, ArrowLeft: -1, PageDown: 10, PageUp: -10 };
    if (event.key in moves) { stop(); show(current + moves[event.key]); event.preventDefault(); }
    else if (event.key === "Home") { stop(); show(0); event.preventDefault(); }
    else if (event.key === "End") { stop(); show(count - 1); event.preventDefault(); }
    else if (event.key === " " && event.target.tagName !== "BUTTON") { play(); event.preventDefault(); }
  });
  if (D.probeImage !== null) document.getElementById("probe-img").src = png(D.probeImage);
  sizeGrids();
  show(0);
  const layers = D.layers.concat(...D.compare.map((other) => other.layers));
  // Each layer is painted as soon as it is unpacked; the page is ready once all are.
  const unpacked = layers.map((layer) => decodeFrames(layer).then(() => show(current)));
  Promise.all(unpacked).then(() => show(current), (error) => {
    document.querySelectorAll("figure.layer .panel-step").forEach((label) => {
      label.textContent = "this browser cannot unpack the frames (" + error + ")";
    });
    throw error;
  }).finally(() => { document.body.dataset.ready = "1"; });
})();
"""


def _class_name(names: list[str], label: int) -> str:
    """A label's class name; its number when no class is named (an autoencoder's digits), as the frames write it;
    ``"?"`` for unlabeled probes (-1) and labels past the named classes."""
    if label >= 0 and not names:
        return str(label)
    return str(names[label]) if 0 <= label < len(names) else "?"


def _grid(layer: dict, probes: int, probe_labels: str = "") -> str:
    """A layer's tiles with its labels: class names above the columns, channels beside the rows."""
    grid = (
        f'<div class="grid" data-channels="{layer["channels"]}" data-height="{layer["height"]}" '
        f'data-width="{layer["width"]}" data-probes="{probes}">'
        f'<canvas aria-label="{html.escape(layer["name"])}"></canvas></div>'
    )
    channels, height = int(layer["channels"]), int(layer["height"])
    if channels == 1:
        names = ["units" if height == 1 else "tokens"]
    else:
        names = [f"ch {channel}" for channel in range(channels)]
    rows = "".join(f"<span>{name}</span>" for name in names)
    return (
        f'<div class="layer-body"><span></span><div class="labels probe-labels">{probe_labels}</div>'
        f'<div class="rowlabels">{rows}</div>{grid}</div>'
    )


def _colour_bar(scale_label: str) -> str:
    """The colour bar of a layer's scale (``"-1 .. +1, fixed (tanh)"``): its ramp and the numbers at its ends.

    The ramp is sampled from the palette's own ramp (:meth:`ColourScale.bar_indices`), so it shows the colours
    the tiles are drawn in; the numbers are the scale's.
    """
    ends, _, rule = scale_label.partition(", ")
    low, _, high = ends.partition(" .. ")
    one_sided = low == "0"
    stops = ColourScale(one_sided=one_sided, limit=1.0).bar_indices(9)
    gradient = ", ".join(css_color(PALETTE[index]) for index in stops.tolist())
    ticks = [low, high] if one_sided else [low, "0", high]
    return (
        f'<span class="cbar" title="{html.escape(scale_label)}"><span class="cbar-ramp" '
        f'style="background: linear-gradient(to right, {gradient})"></span><span class="cbar-ticks">'
        + "".join(f"<span>{html.escape(tick)}</span>" for tick in ticks)
        + f'</span><span class="cbar-rule">{html.escape(rule)}</span></span>'
    )


def _chart_panel(svg: str) -> str:
    caption = '<div class="caption"><span></span><span class="panel-step"></span></div>'
    return f'<div class="panel chart-panel">{caption}{svg}</div>'


def render_page(data: dict, *, charts: dict[str, list[str]], title: str) -> str:
    """The whole HTML document: data as one JSON block, charts inline, no external resource."""
    probes = len(data["labels"])
    names = data["classNames"]
    label_row = "".join(f"<span>{html.escape(_class_name(names, label))}</span>" for label in data["labels"])
    probe_picture = ""
    if data["probeShape"] is not None:
        probe_height, probe_width = data["probeShape"]
        probe_picture = (
            f'<div class="grid" data-channels="1" data-height="{probe_height}" data-width="{probe_width}" '
            f'data-probes="{probes}"><img id="probe-img" alt="probe images"></div>'
        )
    outputs = data.get("outputs")
    output_row = ""
    if outputs is not None and "frames" in outputs:
        output_height, output_width = outputs["shape"]
        output_row = (
            f'<div class="scalebar">{html.escape(outputs["label"])}</div>'
            f'<div class="grid" data-channels="1" data-height="{output_height}" data-width="{output_width}" '
            f'data-probes="{probes}"><img id="output-img" alt="outputs"></div>'
        )
    elif outputs is not None:
        output_row = (
            f'<div class="scalebar">{html.escape(outputs["label"])}</div>'
            f'<div class="labels outputs" id="outputs">{"<span></span>" * probes}</div>'
        )
    layer_panels = []
    for index, layer in enumerate(data["layers"]):
        figures = [
            f'<figure class="panel layer" data-run="0" data-index="{index}" data-layer="{html.escape(layer["name"])}">'
            f"<figcaption><b>{html.escape(layer['name'])}</b>{_colour_bar(layer['scaleLabel'])}"
            f'<span class="panel-step"></span></figcaption>{_grid(layer, probes, label_row)}</figure>'
        ]
        for k, other in enumerate(data["compare"]):
            match = [i for i, theirs in enumerate(other["layers"]) if theirs["name"] == layer["name"]]
            if match:
                theirs = other["layers"][match[0]]
                figures.append(
                    f'<figure class="panel layer" data-run="{k + 1}" data-index="{match[0]}" '
                    f'data-layer="{html.escape(layer["name"])}"><figcaption><b>{html.escape(other["run"])}</b>'
                    f'<span class="scalebar">{html.escape(layer["name"])}</span>'
                    f'<span class="panel-step"></span></figcaption>{_grid(theirs, probes, label_row)}</figure>'
                )
        layer_panels.append(
            "".join(figures) if not data["compare"] else f'<div class="panels">{"".join(figures)}</div>'
        )
    dynamics_rows = "".join(
        f'<tr id="dyn-{i}"><td>{html.escape(layer["name"])}</td>'
        f"<td>{'never' if layer['settling'] is None else layer['settling']}</td>"
        f"<td>{len(layer['dead'])}/{layer['channels']}</td>"
        '<td class="cka-final"></td><td class="cka-first"></td><td class="change"></td><td class="saturated"></td></tr>'
        for i, layer in enumerate(data["dynamics"])
    )
    compare_note = "".join(
        f"<p class='note'>Compared: <b>{html.escape(other['run'])}</b>, aligned by training step (its latest "
        f"recorded step at or before the one shown); dashed in the curves. Settling steps: "
        + ", ".join(f"{html.escape(k)} {'never' if v is None else v}" for k, v in other["settling"].items())
        + ".</p>"
        for other in data["compare"]
    )
    # None: the run is not a classifier (the recording's rule), so no predictions row and no ✓/✗ anywhere.
    predicted = data.get("predictions") is not None
    sticky_predictions = (
        f'<div id="sticky-predictions"><span class="scalebar">predicted</span>\n'
        f'<div class="labels predictions">{"<span></span>" * probes}</div></div>'
        if predicted
        else ""
    )
    predictions_row = (
        f'<div class="labels predictions" id="predictions">{"<span></span>" * probes}</div>' if predicted else ""
    )
    stride_note = (
        f"every {data['stride']}th of {data['recordedSteps']} recorded steps (and the last)"
        if data["stride"] > 1
        else f"all {data['recordedSteps']} recorded steps"
    )
    layers_html = "".join(layer_panels) if data["compare"] else f'<div class="panels">{"".join(layer_panels)}</div>'
    # Every "<" as \u003c: neither "</script>" nor "<!--" (which makes the element swallow the page script)
    # can then appear inside the JSON element, whatever a folder, layer or class name holds.
    payload = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
    training = "".join(_chart_panel(svg) for svg in charts["training"])
    dynamics = "".join(_chart_panel(svg) for svg in charts["dynamics"])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{_CSS}</style></head>
<body>
<header>
<h1>{html.escape(title)}</h1>
<button id="play" type="button">▶ play</button>
<input id="slider" type="range" min="0" max="{len(data["steps"]) - 1}" value="0" step="1" aria-label="training step">
<span id="step-label"></span>
<label class="scalebar">zoom <input id="zoom" type="range" min="12" max="96" value="40" step="2"></label>
{sticky_predictions}
</header>
<main>
<p class="note">One slider drives every panel ({stride_note}). Keys: ← → one step, PgUp/PgDn ten, Home/End,
space plays. Activations: blue +, white 0, red − (one-sided layers: white 0 to blue),
on each layer's fixed scale, as actrec render draws them; rows are channels, columns probes.</p>
{compare_note}
<section><h2>{"Probes and predictions" if predicted else "Probes and outputs" if output_row else "Probes"}</h2>
<div class="panel" id="probes"><div class="caption"><b>probes</b><span class="panel-step"></span></div>
<div class="labels">{label_row}</div>
{probe_picture}
{output_row}
{predictions_row}</div></section>
<section><h2>Layers</h2>{layers_html}</section>
<section><h2>Training curves</h2><p class="note">{"".join(charts["training_legend"])}</p>
<div class="panels">{training}</div></section>
<section><h2>Layer dynamics</h2><p class="note">{"".join(charts["legend"])}</p><div class="panels">{dynamics}</div>
<div class="panel" id="dynamics-table" style="margin-top:12px"><div class="caption"><b>per layer</b>
<span class="panel-step"></span></div>
<table><thead><tr><th>layer</th><th>settles at step</th><th>dead channels</th><th>CKA to final</th>
<th>CKA to first</th><th>relative change</th><th>saturated</th></tr></thead><tbody>{dynamics_rows}</tbody></table>
<p class="note">Settling step: the first step from which CKA to the final step stays at or above the threshold.
Dead channels: constant over the probes at every recorded step.</p></div></section>
</main>
<script type="application/json" id="report-data">{payload}</script>
<script>{_SCRIPT}</script>
</body></html>
"""
