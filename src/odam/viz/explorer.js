// The odam explorer page (odam/viz/explorer.py writes it and documents its data and DOM hooks).
// Every text from the data goes into the page with textContent, never as markup.
(() => {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const page = JSON.parse($("odam-page").textContent);
  const CMAP = page.colormap; // 256 x RGB, flattened
  const ALPHA = page.alpha; // 256 blending weights at opacity 1 (odam.viz.colors.heat_alpha)
  const DECODED_LIMIT = 600; // decoded maps kept in memory
  // the settings (odam.nms.Suppression) that matter to each method, for the summary line
  const SETTINGS = {
    nms: ["iou_threshold", "max_candidates"],
    "odam-nms": ["iou_threshold", "low", "high", "short_edge", "centred", "max_candidates"],
    "feature-nms": ["low", "high", "distance", "max_candidates"],
    "soft-nms": ["sigma", "soft_method", "soft_threshold", "iou_threshold", "max_candidates"],
  };

  const state = {
    image: -1, // index of the shown image
    data: null, // its parsed dict
    view: "explain",
    detection: -1,
    mode: "attribute",
    method: null,
    target: "score",
    normalise: false,
    zoom: false,
    opacity: page.opacity,
    threshold: 0,
    sort: { key: "index", dir: 1 },
    order: [], // detection indices in the table's order
    generation: 0, // bumps on every render so that a late decode never paints over a newer view
    nmsGeneration: 0,
  };
  const parsed = new Map(); // image index -> {data, photo (object URL)}
  const decoded = new Map(); // MAP entry -> Promise of {q, x0, y0, w, h} (insertion order = LRU)
  const painted = []; // canvases on screen with what they show, repainted when the opacity changes
  const nmsPainted = []; // the same for the suppression view's pair of maps
  let scratch = null;

  // ---------- small helpers ----------
  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    if (attrs) for (const [k, v] of Object.entries(attrs)) if (v !== null && v !== undefined) node.setAttribute(k, v);
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function fmt(v) {
    if (v === null || v === undefined) return "\u2013";
    if (v === 0) return "0";
    const a = Math.abs(v);
    if (a >= 0.01 && a < 1e4) return String(Number(v.toPrecision(3)));
    return v.toExponential(2);
  }

  function fmtBox(b) {
    return b.map((v) => Math.round(v)).join(", ");
  }

  function blobOf(uri) {
    const comma = uri.indexOf(",");
    const mime = uri.slice(5, uri.indexOf(";"));
    const bytes = atob(uri.slice(comma + 1));
    const out = new Uint8Array(bytes.length);
    for (let i = 0; i < bytes.length; i++) out[i] = bytes.charCodeAt(i);
    return new Blob([out], { type: mime });
  }

  function image(i) {
    if (!parsed.has(i)) {
      const data = JSON.parse($("odam-image-" + i).textContent);
      parsed.set(i, { data, photo: URL.createObjectURL(blobOf(data.image)) });
    }
    return parsed.get(i);
  }

  // The 8-bit values q of a stored map (null when it has no picture: every q is 0).
  function decode(entry) {
    if (!entry || !entry.png) return Promise.resolve(null);
    let p = decoded.get(entry);
    if (p) {
      decoded.delete(entry);
      decoded.set(entry, p);
      return p;
    }
    p = createImageBitmap(blobOf(entry.png), { colorSpaceConversion: "none", premultiplyAlpha: "none" }).then(
      (bitmap) => {
        const [x0, y0, x1, y1] = entry.crop;
        const w = x1 - x0;
        const h = y1 - y0;
        if (bitmap.width !== w || bitmap.height !== h) throw new Error(`map image is ${bitmap.width}x${bitmap.height}, its crop ${w}x${h}`);
        if (!scratch) scratch = document.createElement("canvas").getContext("2d", { willReadFrequently: true });
        scratch.canvas.width = w;
        scratch.canvas.height = h;
        scratch.drawImage(bitmap, 0, 0);
        bitmap.close();
        const rgba = scratch.getImageData(0, 0, w, h).data;
        const q = new Uint8Array(w * h);
        for (let i = 0; i < q.length; i++) q[i] = rgba[4 * i];
        return { q, x0, y0, w, h };
      },
    );
    decoded.set(entry, p);
    if (decoded.size > DECODED_LIMIT) decoded.delete(decoded.keys().next().value);
    return p;
  }

  // Colour q into canvas: value v = lo + q / 255 (hi - lo), t = (v - slo) / (shi - slo) in [0, 1],
  // colour = colormap(t), alpha = heat_alpha(t, opacity) (odam.viz.colors), both looked up at round(255 t).
  function paint(canvas, entry, values, size, slo, shi) {
    const [gw, gh] = size;
    canvas.width = gw;
    canvas.height = gh;
    const ctx = canvas.getContext("2d");
    const picture = ctx.createImageData(gw, gh);
    const px = new Uint32Array(picture.data.buffer);
    const lut = new Uint32Array(256);
    const range = shi - slo;
    for (let q = 0; q < 256; q++) {
      const v = entry.lo + (q / 255) * (entry.hi - entry.lo);
      const t = range > 0 ? Math.min(1, Math.max(0, (v - slo) / range)) : 0;
      const i = Math.round(t * 255);
      const a = Math.round(state.opacity * ALPHA[i] * 255);
      lut[q] = ((a << 24) | (CMAP[3 * i + 2] << 16) | (CMAP[3 * i + 1] << 8) | CMAP[3 * i]) >>> 0;
    }
    px.fill(lut[0]);
    if (values) {
      const { q, x0, y0, w, h } = values;
      for (let y = 0; y < h; y++) {
        const row = (y0 + y) * gw + x0;
        const src = y * w;
        for (let x = 0; x < w; x++) px[row + x] = lut[q[src + x]];
      }
    }
    ctx.putImageData(picture, 0, 0);
  }

  // A box as a positioned element inside a frame whose coordinates are the image's pixels.
  function boxElement(data, box, color, cls) {
    const [x1, y1, x2, y2] = box;
    const b = el("div", { class: cls });
    b.style.left = (100 * x1) / data.width + "%";
    b.style.top = (100 * y1) / data.height + "%";
    b.style.width = (100 * Math.max(0, x2 - x1)) / data.width + "%";
    b.style.height = (100 * Math.max(0, y2 - y1)) / data.height + "%";
    b.style.setProperty("--c", color);
    return b;
  }

  // Zoom a stage's frame onto box (or back to the whole image when box is null).
  function frameOn(frame, data, box) {
    if (!box) {
      frame.style.cssText = "";
      return;
    }
    const W = data.width;
    const H = data.height;
    const [x1, y1, x2, y2] = box;
    let vw = Math.max(1.8 * (x2 - x1), (1.8 * (y2 - y1) * W) / H, W / 8);
    vw = Math.min(W, vw);
    const vh = (vw * H) / W;
    const x0 = Math.min(Math.max(0, (x1 + x2) / 2 - vw / 2), W - vw);
    const y0 = Math.min(Math.max(0, (y1 + y2) / 2 - vh / 2), H - vh);
    frame.style.width = (100 * W) / vw + "%";
    frame.style.height = (100 * H) / vh + "%";
    frame.style.left = (-100 * x0) / vw + "%";
    frame.style.top = (-100 * y0) / vh + "%";
  }

  // ---------- image list and errors ----------
  function buildSidebar() {
    $("odam-title").textContent = page.title;
    const list = $("odam-images");
    page.images.forEach((im, i) => {
      const button = el("button", { type: "button", "data-image": i, title: im.name });
      button.append(el("span", { class: "odam-name" }, im.name), el("span", { class: "odam-count" }, im.detections));
      button.addEventListener("click", () => showImage(i));
      list.appendChild(el("li")).append(button);
    });
    if (page.errors.length) {
      $("odam-errors-section").hidden = false;
      for (const e of page.errors) {
        const li = el("li");
        li.append(el("strong", null, e.image), document.createTextNode(": " + e.error));
        $("odam-errors").append(li);
      }
    }
  }

  // ---------- one image ----------
  function showImage(i) {
    const { data, photo } = image(i);
    state.image = i;
    state.data = data;
    state.detection = -1;
    document.body.dataset.image = i;
    for (const b of document.querySelectorAll("#odam-images button")) {
      if (Number(b.dataset.image) === i) b.setAttribute("aria-current", "true");
      else b.removeAttribute("aria-current");
    }
    $("odam-image-name").textContent = `${data.name} \u00b7 ${data.width}\u00d7${data.height} \u00b7 ${data.detections.length} detections`;
    const stage = $("odam-stage");
    stage.style.aspectRatio = `${data.width} / ${data.height}`;
    stage.style.width = `min(100%, ${(62 * data.width) / data.height}vh)`;
    $("odam-photo").src = photo;
    if (!data.methods.includes(state.method)) state.method = data.methods[0];
    const several = data.methods.length > 1;
    $("odam-mode").hidden = !several;
    if (!several) state.mode = "attribute";
    fillSelect($("odam-method"), data.methods, state.method);
    const targets = [...data.targets, "combined"];
    if (!targets.includes(state.target)) state.target = targets[0];
    fillSelect($("odam-target"), targets, state.target);
    buildDetections();
    $("odam-tab-suppression").hidden = !data.nms;
    $("odam-empty").hidden = data.detections.length > 0;
    $("odam-empty").textContent = data.detections.length ? "" : "No detections in this image.";
    state.nmsBuilt = false;
    setView(state.view === "suppression" && data.nms ? "suppression" : "explain");
    const first = visibleOrder()[0];
    if (first !== undefined) select(first);
    else clearMaps();
  }

  function fillSelect(select, values, current) {
    select.replaceChildren(...values.map((v) => el("option", { value: v }, v)));
    select.value = current;
  }

  function buildDetections() {
    const data = state.data;
    const boxes = $("odam-boxes");
    const body = document.querySelector("#odam-table tbody");
    boxes.replaceChildren();
    body.replaceChildren();
    const area = (d) => (d.box[2] - d.box[0]) * (d.box[3] - d.box[1]);
    // larger boxes first, so that a box inside another stays clickable
    const byArea = [...data.detections].sort((a, b) => area(b) - area(a));
    for (const d of byArea) {
      const b = boxElement(data, d.box, d.color, "odam-box");
      b.dataset.index = d.index;
      b.title = `#${d.index} ${d.name} ${d.score.toFixed(3)}`;
      b.append(el("span", { class: "odam-tag" }, "#" + d.index));
      b.addEventListener("click", (ev) => {
        ev.stopPropagation();
        select(d.index);
      });
      boxes.append(b);
    }
    for (const d of data.detections) {
      const tr = el("tr", { "data-index": d.index, tabindex: "-1" });
      const label = el("td");
      const swatch = el("span", { class: "odam-swatch" });
      swatch.style.background = d.color;
      label.append(swatch, document.createTextNode(d.name));
      tr.append(el("td", null, "#" + d.index), label, el("td", { class: "odam-num" }, d.score.toFixed(3)),
        el("td", { class: "odam-num" }, fmtBox(d.box)));
      tr.addEventListener("click", () => select(d.index));
      body.append(tr);
    }
    sortTable();
    applyThreshold();
  }

  function sortTable() {
    const data = state.data;
    const { key, dir } = state.sort;
    const value = (d) => (key === "box" ? d.box[0] * 1e6 + d.box[1] : d[key]);
    state.order = data.detections
      .map((d) => d.index)
      .sort((a, b) => {
        const va = value(data.detections[a]);
        const vb = value(data.detections[b]);
        return (va < vb ? -1 : va > vb ? 1 : a - b) * dir;
      });
    const body = document.querySelector("#odam-table tbody");
    const rows = new Map([...body.rows].map((r) => [Number(r.dataset.index), r]));
    body.append(...state.order.map((k) => rows.get(k)));
    for (const th of document.querySelectorAll("#odam-table th")) {
      if (th.dataset.sort === key) th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
      else th.removeAttribute("aria-sort");
    }
  }

  function applyThreshold() {
    const t = state.threshold;
    const data = state.data;
    if (!data) return;
    for (const node of document.querySelectorAll("#odam-boxes .odam-box, #odam-table tbody tr")) {
      node.hidden = data.detections[Number(node.dataset.index)].score < t;
    }
  }

  function visibleOrder() {
    if (!state.data) return [];
    return state.order.filter((k) => state.data.detections[k].score >= state.threshold);
  }

  function select(k) {
    state.detection = k;
    for (const node of document.querySelectorAll("#odam-boxes .selected, #odam-table tr.selected")) node.classList.remove("selected");
    for (const node of document.querySelectorAll(`#odam-boxes [data-index="${k}"], #odam-table tr[data-index="${k}"]`)) node.classList.add("selected");
    const row = document.querySelector(`#odam-table tr[data-index="${k}"]`);
    if (row) reveal(row);
    renderMaps();
  }

  // Scroll the table (not the page) so that row is in view below the header.
  function reveal(row) {
    const side = row.closest(".odam-side");
    const r = row.getBoundingClientRect();
    const s = side.getBoundingClientRect();
    const top = s.top + side.querySelector("thead").getBoundingClientRect().height;
    if (r.top < top) side.scrollTop -= top - r.top;
    else if (r.bottom > s.bottom) side.scrollTop += r.bottom - s.bottom;
  }

  function step(delta) {
    const order = visibleOrder();
    if (!order.length) return;
    const at = order.indexOf(state.detection);
    const next = at < 0 ? 0 : Math.min(order.length - 1, Math.max(0, at + delta));
    if (order[next] !== state.detection) select(order[next]);
  }

  // ---------- the maps of the selected detection ----------
  function clearMaps() {
    state.generation++;
    painted.length = 0;
    const maps = $("odam-maps");
    maps.replaceChildren();
    maps.dataset.detection = "";
    maps.dataset.state = "ready";
    $("odam-selected").textContent = "";
  }

  // One panel: the photo, a heat canvas and the boxes, all in one frame of the image's pixel coordinates.
  function panel(data, photo, caption, boxes) {
    const figure = el("figure", { class: "odam-panel" });
    const stage = el("div", { class: "odam-stage" });
    stage.style.aspectRatio = `${data.width} / ${data.height}`;
    const frame = el("div", { class: "odam-frame" });
    const canvas = el("canvas", { class: "odam-heat" });
    frame.append(el("img", { src: photo, alt: "" }), canvas);
    for (const [box, color, cls] of boxes) frame.append(boxElement(data, box, color, cls));
    stage.append(frame);
    const cap = el("figcaption");
    for (const part of caption) cap.append(typeof part === "string" ? document.createTextNode(part) : part);
    figure.append(stage, cap);
    return { figure, stage, frame, canvas, cap };
  }

  function scaleOf(entries, target, entry) {
    // the scale colours span: shared absolute over the attribute maps, or the map's own
    if (state.mode === "compare" || state.normalise) return [entry.lo, entry.hi];
    if (target === "combined") return [0, 1];
    let lo = 0;
    let hi = -Infinity;
    for (const [t, e] of Object.entries(entries)) {
      if (t === "combined") continue;
      lo = Math.min(lo, e.lo);
      hi = Math.max(hi, e.hi);
    }
    return [lo, Math.max(hi, lo)];
  }

  function renderMaps() {
    const data = state.data;
    const k = state.detection;
    if (!data || k < 0) return clearMaps();
    const generation = ++state.generation;
    const d = data.detections[k];
    const { photo } = image(state.image);
    const maps = $("odam-maps");
    maps.dataset.state = "loading";
    maps.dataset.detection = k;
    maps.dataset.mode = state.mode;
    $("odam-selected").replaceChildren(el("strong", null, `#${k}`), document.createTextNode(` ${d.name} ${d.score.toFixed(3)}`));
    $("odam-method-label").hidden = !(state.mode === "attribute" && data.methods.length > 1);
    $("odam-target-label").hidden = state.mode !== "compare";
    const normalise = $("odam-normalise");
    normalise.disabled = state.mode === "compare";
    normalise.parentElement.title = normalise.disabled ? "methods have different units: each map is normalised" : "";
    // what to show: [method, target, entry, entries of that method and detection]
    const shown = [];
    if (state.mode === "compare") {
      for (const m of data.methods) {
        const entries = data.maps[m][k];
        shown.push([m, state.target, entries[state.target] || null, entries]);
      }
    } else {
      const entries = data.maps[state.method][k];
      for (const t of Object.keys(entries)) shown.push([state.method, t, entries[t], entries]);
    }
    painted.length = 0;
    const figures = [];
    const jobs = [];
    for (const [m, t, entry, entries] of shown) {
      const title = state.mode === "compare" ? m : t;
      const p = panel(data, photo, [el("strong", null, title)], [[d.box, d.color, "odam-box selected"]]);
      if (state.zoom) frameOn(p.frame, data, d.box);
      figures.push(p.figure);
      if (!entry) {
        p.canvas.remove();
        p.stage.append(el("span", { class: "odam-zero" }, `${m} has no ${t} map`));
        continue;
      }
      const [slo, shi] = scaleOf(entries, t, entry);
      Object.assign(p.canvas.dataset, {
        method: m, target: t, detection: k, lo: String(entry.lo), hi: String(entry.hi),
        zero: String(entry.zero), scaleLo: String(slo), scaleHi: String(shi),
      });
      if (entry.zero) p.stage.append(el("span", { class: "odam-zero" }, "all zero"));
      const units = t === "combined" && state.mode === "attribute" && !state.normalise ? " (normalised units)" : "";
      p.cap.append(el("span", { class: "odam-range" }, ` ${fmt(entry.lo)} \u2026 ${fmt(entry.hi)}${units}`));
      jobs.push(decode(entry).then((values) => [p.canvas, entry, values, slo, shi]));
    }
    maps.replaceChildren(...figures);
    maps.style.setProperty("--n", String(figures.length === 4 ? 2 : Math.max(2, Math.min(3, figures.length))));
    updateColorbar(shown);
    Promise.all(jobs).then((done) => {
      if (generation !== state.generation) return;
      for (const [canvas, entry, values, slo, shi] of done) {
        paint(canvas, entry, values, data.grid, slo, shi);
        painted.push([canvas, entry, values, data.grid, slo, shi]);
      }
      maps.dataset.state = "ready";
    }, (error) => console.error("odam explorer: cannot show the maps:", error));
  }

  function updateColorbar(shown) {
    const bar = $("odam-colorbar");
    let lo = 0;
    let hi = 1;
    const normalised = state.mode === "compare" || state.normalise;
    if (!normalised && shown.length) {
      const attrs = shown.filter(([, t, e]) => e && t !== "combined");
      if (attrs.length) [lo, hi] = scaleOf(attrs[0][3], attrs[0][1], attrs[0][2]);
    }
    bar.dataset.lo = String(lo);
    bar.dataset.hi = String(hi);
    bar.dataset.normalised = String(normalised);
    const ticks = bar.querySelectorAll(".odam-ticks span");
    ticks[0].textContent = fmt(lo);
    ticks[1].textContent = fmt((lo + hi) / 2);
    ticks[2].textContent = fmt(hi);
    bar.querySelector(".odam-unit").textContent = normalised ? "normalised (each map: its min \u2026 max)" : "shared scale";
  }

  function drawColorbar() {
    const canvas = document.querySelector("#odam-colorbar canvas");
    const ctx = canvas.getContext("2d");
    const picture = ctx.createImageData(256, 1);
    for (let i = 0; i < 256; i++) {
      picture.data.set([CMAP[3 * i], CMAP[3 * i + 1], CMAP[3 * i + 2], 255], 4 * i);
    }
    ctx.putImageData(picture, 0, 0);
  }

  // ---------- suppression ----------
  function setView(view) {
    state.view = view;
    document.body.dataset.view = view;
    $("odam-explain-view").hidden = view !== "explain";
    $("odam-nms-view").hidden = view !== "suppression";
    $("odam-threshold-label").hidden = view !== "explain";
    for (const b of document.querySelectorAll("[data-view]")) {
      if (b.tagName === "BUTTON") b.setAttribute("aria-selected", String(b.dataset.view === view));
    }
    if (view === "suppression" && !state.nmsBuilt) buildSuppression();
  }

  function fateText(c, nms) {
    if (c.fate === "kept") return `kept as #${c.detection}`;
    if (c.fate === "capped") return "capped";
    if (c.suppressor < 0) return "suppressed";
    const by = nms.candidates[c.suppressor];
    return by.detection === null ? `suppressed by cand. ${c.suppressor}` : `suppressed by #${by.detection}`;
  }

  function buildSuppression() {
    const nms = state.data.nms;
    state.nmsBuilt = true;
    const counts = { kept: 0, suppressed: 0, capped: 0 };
    for (const c of nms.candidates) counts[c.fate]++;
    const relevant = SETTINGS[nms.method];
    const settings = Object.entries(nms.settings)
      .filter(([k]) => !relevant || relevant.includes(k))
      .map(([k, v]) => `${k} ${v}`)
      .join(", ");
    $("odam-nms-summary").textContent =
      `${nms.method} (${settings}) \u00b7 ${nms.candidates.length} candidates: ${counts.kept} kept, ` +
      `${counts.suppressed} suppressed, ${counts.capped} capped` + (nms.evidence ? ` \u00b7 evidence: ${nms.evidence}` : "");
    $("odam-evidence-head").textContent = nms.evidence || "evidence";
    const body = document.querySelector("#odam-nms-table tbody");
    body.replaceChildren();
    for (const c of nms.candidates) {
      const tr = el("tr", {
        "data-candidate": c.index, "data-fate": c.fate, "data-rule": c.rule, "data-suppressor": c.suppressor,
        "data-detection": c.detection, class: "odam-fate-" + c.fate,
      });
      const label = el("td");
      const swatch = el("span", { class: "odam-swatch" });
      swatch.style.background = c.color;
      label.append(swatch, document.createTextNode(c.name));
      tr.append(el("td", null, c.index), label, el("td", { class: "odam-num" }, c.score.toFixed(3)),
        el("td", { class: "odam-num" }, c.final.toFixed(3)), el("td", null, fateText(c, nms)),
        el("td", { class: "odam-num" }, c.iou === null ? "\u2013" : c.iou.toFixed(3)),
        el("td", { class: "odam-num" }, c.evidence === null ? "\u2013" : fmt(c.evidence)), el("td", { class: "odam-rule" }, c.rule));
      tr.addEventListener("click", () => showCandidates(c.index, c.suppressor));
      body.append(tr);
    }
    const pairs = document.querySelector("#odam-pairs-table tbody");
    pairs.replaceChildren();
    for (const p of nms.pairs) {
      const a = nms.candidates[p.a];
      const tr = el("tr", { "data-a": p.a, "data-b": p.b });
      tr.append(el("td", null, "#" + p.detections[0]), el("td", null, "#" + p.detections[1]), el("td", null, a.name),
        el("td", { class: "odam-num" }, p.iou.toFixed(3)),
        el("td", { class: "odam-num" }, p.correlation === null ? "\u2013" : p.correlation.toFixed(3)));
      tr.addEventListener("click", () => showCandidates(p.a, p.b));
      pairs.append(tr);
    }
    if (!nms.pairs.length) {
      const td = el("td", { colspan: "5", class: "odam-note" }, "no kept candidates of one class overlap with IoU > 0.3");
      pairs.appendChild(el("tr")).append(td);
    }
    showPairs($("odam-pairs-only").checked);
    const first = nms.candidates.find((c) => c.fate === "suppressed" && c.suppressor >= 0);
    if (first) showCandidates(first.index, first.suppressor);
    else {
      $("odam-nms-maps").replaceChildren(el("p", { class: "odam-note" }, "Click a candidate to see its map."));
    }
  }

  function showPairs(only) {
    $("odam-nms-table").hidden = only;
    $("odam-pairs-table").hidden = !only;
  }

  // Candidate a's map beside candidate b's (b < 0: a's alone); b is a's suppressor or, for a pair, the other one.
  function showCandidates(a, b) {
    const data = state.data;
    const nms = data.nms;
    const { photo } = image(state.image);
    const generation = ++state.nmsGeneration;
    nmsPainted.length = 0; // the maps shown before are replaced below
    const suppressed = b >= 0 && nms.candidates[a].suppressor === b;
    const holder = $("odam-nms-maps");
    holder.dataset.candidate = a;
    holder.dataset.other = b;
    holder.dataset.suppressor = suppressed ? b : -1;
    holder.dataset.state = "loading";
    for (const tr of document.querySelectorAll("#odam-nms-table tr.selected, #odam-pairs-table tr.selected")) tr.classList.remove("selected");
    for (const tr of document.querySelectorAll(`#odam-nms-table tr[data-candidate="${a}"], #odam-pairs-table tr[data-a="${a}"][data-b="${b}"]`)) tr.classList.add("selected");
    const ids = b >= 0 ? [a, b] : [a];
    const jobs = [];
    const figures = ids.map((i) => {
      const c = nms.candidates[i];
      const other = ids.find((j) => j !== i);
      const boxes = [];
      if (other !== undefined) boxes.push([nms.candidates[other].box, "#ffffff", "odam-box odam-other"]);
      boxes.push([c.box, c.color, "odam-box selected"]);
      const role = !suppressed ? "" : i === a ? " (suppressed)" : " (suppressor)";
      const title = `cand. ${i}` + (c.detection === null ? "" : ` = #${c.detection}`) + role;
      const p = panel(data, photo, [el("strong", null, title), ` ${c.name} ${c.score.toFixed(3)}`], boxes);
      p.canvas.dataset.candidate = i;
      if (!c.map) {
        p.canvas.dataset.zero = "false";
        p.cap.append(el("span", { class: "odam-range" }, " (no candidate map)"));
        return p.figure;
      }
      Object.assign(p.canvas.dataset, { lo: String(c.map.lo), hi: String(c.map.hi), zero: String(c.map.zero) });
      if (c.map.zero) p.stage.append(el("span", { class: "odam-zero" }, "all zero"));
      p.cap.append(el("span", { class: "odam-range" }, ` ${fmt(c.map.lo)} \u2026 ${fmt(c.map.hi)} (normalised)`));
      jobs.push(decode(c.map).then((values) => [p.canvas, c.map, values]));
      return p.figure;
    });
    holder.replaceChildren(...figures);
    Promise.all(jobs).then((done) => {
      if (generation !== state.nmsGeneration) return;
      for (const [canvas, entry, values] of done) {
        paint(canvas, entry, values, nms.grid, entry.lo, entry.hi);
        nmsPainted.push([canvas, entry, values, nms.grid, entry.lo, entry.hi]);
      }
      holder.dataset.state = "ready";
    }, (error) => console.error("odam explorer: cannot show the candidate maps:", error));
  }

  // ---------- controls ----------
  function wire() {
    for (const th of document.querySelectorAll("#odam-table th[data-sort]")) {
      th.tabIndex = 0;
      th.addEventListener("click", () => {
        const key = th.dataset.sort;
        state.sort = { key, dir: state.sort.key === key ? -state.sort.dir : key === "score" ? -1 : 1 };
        if (state.data) sortTable();
      });
    }
    $("odam-threshold").addEventListener("input", (ev) => {
      state.threshold = Number(ev.target.value);
      $("odam-threshold-value").textContent = state.threshold.toFixed(2);
      applyThreshold();
    });
    const opacity = $("odam-opacity");
    opacity.value = String(state.opacity);
    opacity.addEventListener("input", () => {
      state.opacity = Number(opacity.value);
      for (const args of painted) paint(...args);
      for (const args of nmsPainted) paint(...args);
    });
    $("odam-normalise").addEventListener("change", (ev) => {
      state.normalise = ev.target.checked;
      renderMaps();
    });
    $("odam-zoom").addEventListener("change", (ev) => {
      state.zoom = ev.target.checked;
      renderMaps();
    });
    for (const b of document.querySelectorAll("#odam-mode button")) {
      b.addEventListener("click", () => {
        state.mode = b.dataset.mode;
        updateMode();
        renderMaps();
      });
    }
    $("odam-method").addEventListener("change", (ev) => {
      state.method = ev.target.value;
      renderMaps();
    });
    $("odam-target").addEventListener("change", (ev) => {
      state.target = ev.target.value;
      renderMaps();
    });
    for (const b of document.querySelectorAll("button[data-view]")) b.addEventListener("click", () => setView(b.dataset.view));
    $("odam-pairs-only").addEventListener("change", (ev) => showPairs(ev.target.checked));
    document.addEventListener("keydown", (ev) => {
      if (ev.key !== "ArrowLeft" && ev.key !== "ArrowRight") return;
      if (ev.target instanceof HTMLInputElement || ev.target instanceof HTMLSelectElement) return;
      if (state.view !== "explain" || ev.altKey || ev.ctrlKey || ev.metaKey) return;
      ev.preventDefault();
      step(ev.key === "ArrowRight" ? 1 : -1);
    });
    updateMode();
  }

  function updateMode() {
    for (const b of document.querySelectorAll("#odam-mode button")) b.setAttribute("aria-pressed", String(b.dataset.mode === state.mode));
  }

  buildSidebar();
  drawColorbar();
  wire();
  if (page.images.length) showImage(0);
  else {
    document.body.dataset.view = "explain";
    $("odam-explain-view").hidden = true;
    $("odam-empty").hidden = false;
    $("odam-empty").textContent = "No images were explained.";
  }
})();
