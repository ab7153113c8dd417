/* ndt-store web views. Draws the view whose data are in the page's JSON island
 * (#ndt-data), with plotly.js. Everything from the store is put into the DOM with
 * textContent (never parsed as HTML) and entity-escaped before plotly renders it. */
(function () {
  "use strict";
  const DATA = JSON.parse(document.getElementById("ndt-data").textContent);
  const CFG = DATA.config || {};
  const SERVER = CFG.mode === "server";
  const PLOT_CONFIG = { displaylogo: false, responsive: true };
  const SMALL = { displayModeBar: false };
  const ndt = (window.ndt = { data: DATA, payload: DATA.payload, ready: false, errors: [], renders: 0, polls: 0 });
  window.addEventListener("error", (e) => ndt.errors.push(String(e.message || e)));

  // ----------------------------------------------------------------- helpers
  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = String(v);
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const kid of kids.flat()) {
      if (kid === null || kid === undefined) continue;
      e.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return e;
  }
  /** Text for plotly (which understands a few tags and entities): shown literally. */
  function pe(s) {
    return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }
  function href(path, params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {})) {
      if (Array.isArray(v)) v.forEach((x) => q.append(k, x));
      else if (v !== null && v !== undefined && v !== "") q.set(k, v);
    }
    const s = q.toString();
    return path + (s ? "?" + s : "");
  }
  function query() {
    return new URLSearchParams(location.search);
  }
  function setParam(key, value) {
    if (!SERVER) return;
    const q = query();
    if (value === null || value === undefined || value === "") q.delete(key);
    else q.set(key, value);
    const s = q.toString();
    history.replaceState(null, "", location.pathname + (s ? "?" + s : ""));
    updateDownload();
  }
  function go(path, params) {
    location.assign(href(path, params));
  }
  function fmt(v, digits) {
    if (v === null || v === undefined) return "";
    if (typeof v === "number") {
      if (Number.isInteger(v)) return String(v);
      return Math.abs(v) >= 1e-3 || v === 0 ? v.toFixed(digits || 4) : v.toExponential(2);
    }
    return String(v);
  }
  function select(id, options, value, onchange, label) {
    const s = el("select", { id: id, onchange: (e) => onchange(e.target.value) });
    for (const o of options) {
      const [val, text] = Array.isArray(o) ? o : [o, o];
      const opt = el("option", { value: String(val) }, String(text));
      if (String(val) === String(value)) opt.selected = true;
      s.append(opt);
    }
    return el("label", {}, label ? label + " " : "", s);
  }
  function plot(div, traces, layout, config) {
    const base = {
      uirevision: "keep",
      margin: { l: 70, r: 30, t: 30, b: 50 },
      hovermode: "closest",
      font: { family: "system-ui, sans-serif", size: 12 },
      paper_bgcolor: "#fff",
      plot_bgcolor: "#fff",
      legend: { orientation: "v" },
    };
    return Plotly.react(div, traces, Object.assign(base, layout || {}), Object.assign({}, PLOT_CONFIG, config || {}));
  }
  function axis(title, extra) {
    return Object.assign({ title: { text: pe(title) }, gridcolor: "#eee", zeroline: false }, extra || {});
  }
  function section(title, id, height, note) {
    return el("section", { class: "chart" }, el("h2", {}, title), note ? el("p", { class: "note" }, note) : null,
      el("div", { id: id, class: "plot", style: "height:" + height + "px" }));
  }
  function table(columns, rows, cell) {
    const head = el("tr", {}, columns.map((c) => el("th", {}, c)));
    const body = rows.map((r) => el("tr", {}, columns.map((c) => el("td", {}, cell ? cell(c, r) : fmt(r[c])))));
    return el("table", { class: "data" }, el("thead", {}, head), el("tbody", {}, body));
  }

  // ------------------------------------------------------------------ header
  function header(title) {
    const top = document.getElementById("top");
    top.replaceChildren();
    const nav = el("nav", {});
    if (SERVER) {
      nav.append(el("a", { href: "/", id: "nav-runs" }, "Runs"), el("a", { href: "/compare", id: "nav-compare" }, "Compare"));
      nav.append(el("a", { id: "download", href: "#", download: "" }, "Download data (CSV)"));
      nav.append(el("span", { class: "store" }, "store: ", CFG.store || ""));
    }
    top.append(el("span", { class: "brand" }, "ndt-store"), el("span", { class: "title" }, title), nav);
    updateDownload();
  }
  function updateDownload() {
    const a = document.getElementById("download");
    if (a && CFG.download) a.setAttribute("href", CFG.download + location.search);
  }

  // -------------------------------------------------------------------- runs
  const runsState = { sort: null, desc: false, q: "", col: {} };
  function runsFromUrl() {
    const q = query();
    runsState.sort = q.get("sort");
    runsState.desc = q.get("desc") === "1";
    runsState.q = q.get("q") || "";
    for (const [k, v] of q.entries()) if (k.startsWith("f.")) runsState.col[k.slice(2)] = v;
  }
  function matches(value, text) {
    if (!text) return true;
    const m = /^(>=|<=|>|<|=)\s*(-?[0-9.eE+-]+)$/.exec(text.trim());
    if (m && typeof value === "number") {
      const x = parseFloat(m[2]);
      return { ">": value > x, "<": value < x, ">=": value >= x, "<=": value <= x, "=": value === x }[m[1]];
    }
    return String(value === null || value === undefined ? "" : value).toLowerCase().includes(text.toLowerCase());
  }
  function buildRuns() {
    runsFromUrl();
    const app = document.getElementById("app");
    app.replaceChildren(
      el("h1", {}, "Runs ", el("span", { id: "run-count", class: "count" })),
      el("div", { class: "controls" },
        el("input", { id: "filter", type: "search", placeholder: "filter any column", value: runsState.q,
          oninput: (e) => { runsState.q = e.target.value; setParam("q", runsState.q); drawRuns(ndt.payload); } }),
        el("button", { id: "compare-selected", onclick: () => {
          const names = [...document.querySelectorAll("#runs-table tbody input:checked")].map((c) => c.value);
          go("/compare", { exp: names });
        } }, "Compare selected")),
      el("p", { class: "note" }, "Click a column to sort; type in the boxes below the headers to filter (text, or a comparison like >0.9)."),
      el("table", { id: "runs-table", class: "data runs" }, el("thead"), el("tbody")));
  }
  function drawRuns(p) {
    const t = document.getElementById("runs-table");
    const cols = p.columns;
    const headRow = el("tr", {}, el("th", {}, ""));
    const filterRow = el("tr", { class: "filters" }, el("th", {}, ""));
    for (const c of cols) {
      const arrow = runsState.sort === c ? (runsState.desc ? " ▼" : " ▲") : "";
      headRow.append(el("th", { class: "sortable", "data-col": c, onclick: () => {
        runsState.desc = runsState.sort === c ? !runsState.desc : false;
        runsState.sort = c;
        setParam("sort", c);
        setParam("desc", runsState.desc ? "1" : null);
        drawRuns(ndt.payload);
      } }, c + arrow));
      filterRow.append(el("th", {}, el("input", { type: "search", class: "col-filter", "data-col": c,
        value: runsState.col[c] || "", oninput: (e) => {
          runsState.col[c] = e.target.value;
          setParam("f." + c, e.target.value);
          drawRunsBody(ndt.payload);
        } })));
    }
    t.tHead.replaceChildren(headRow, filterRow);
    drawRunsBody(p);
  }
  function drawRunsBody(p) {
    const t = document.getElementById("runs-table");
    const checked = new Set([...t.querySelectorAll("tbody input:checked")].map((c) => c.value));
    let rows = p.rows.filter((r) => (!runsState.q || p.columns.some((c) => matches(r[c], runsState.q)))
      && p.columns.every((c) => matches(r[c], runsState.col[c])));
    if (runsState.sort) {
      const c = runsState.sort;
      rows = rows.slice().sort((a, b) => {
        const x = a[c], y = b[c];
        if (x === y) return 0;
        if (x === null || x === undefined) return 1;
        if (y === null || y === undefined) return -1;
        const r = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
        return runsState.desc ? -r : r;
      });
    }
    const body = rows.map((r) => el("tr", { "data-experiment": r.experiment },
      el("td", {}, el("input", { type: "checkbox", value: r.experiment, checked: checked.has(r.experiment) })),
      p.columns.map((c) => c === "experiment"
        ? el("td", {}, el("a", { class: "run-link", href: href("/run", { exp: r.experiment }) }, r.experiment))
        : el("td", { class: c === "status" ? "status status-" + String(r[c]).split(" ")[0] : (typeof r[c] === "number" ? "num" : "") }, fmt(r[c])))));
    t.tBodies[0].replaceChildren(...body);
    document.getElementById("run-count").textContent = "(" + rows.length + " of " + p.rows.length + ")";
  }

  // --------------------------------------------------------------------- run
  function periodShapes(p) {
    const dt = p.steps.length > 1 ? (p.steps[1] - p.steps[0]) / 2 : 0.5;
    return p.periods.map((q) => ({
      type: "rect", xref: "x", yref: "paper", x0: q.start_step - dt, x1: q.end_step + dt, y0: 0, y1: 1,
      fillcolor: "rgba(255, 160, 0, 0.18)", line: { width: 0 }, layer: "below",
    }));
  }
  function jumpTrace(p, jumps, significant) {
    return {
      type: "scatter", mode: "markers", meta: significant ? "jumps-significant" : "jumps-not-significant",
      name: significant ? "significant jump (p ≤ " + p.alpha + ")" : "jump, not significant",
      x: jumps.map((j) => j.step), y: jumps.map((j) => j.value),
      customdata: jumps.map((j) => [pe(j.layer), j.p_value, j.z, j.before, j.after, j.index]),
      hovertemplate: "<b>%{customdata[0]}</b><br>step %{x}<br>value %{y:.4g}<br>p = %{customdata[1]:.3g}" +
        "<br>z = %{customdata[2]:.2f}<extra>" + (significant ? "significant jump" : "not significant") + "</extra>",
      marker: significant
        ? { size: 12, symbol: "diamond", color: "#d62728", line: { width: 1, color: "#000" } }
        : { size: 10, symbol: "circle-open", color: "#7f7f7f", line: { width: 1.5 } },
    };
  }
  function openJump(j, onPick) {
    if (onPick) return onPick(j);
    go("/moments", { exp: ndt.payload.experiment, before: j.before, after: j.after });
  }
  function buildRun(p, container, onPick, metricPicker) {
    const moments = SERVER ? el("a", { id: "moments-link", href: href("/moments", { exp: p.experiment }) }, "Moments") : null;
    const compare = SERVER ? el("a", { href: href("/compare", { exp: p.experiment, metric: p.metric }) }, "Compare with other runs") : null;
    container.replaceChildren(
      el("h1", {}, "Run ", el("span", { id: "run-name" }, p.experiment), " ", el("span", { class: "badge status-" + p.status.split(" ")[0] }, p.status)),
      el("div", { class: "controls" },
        select("metric", p.metrics, p.metric, metricPicker || ((m) => go("/run", { exp: p.experiment, metric: m, show: p.show === "all" ? null : p.show })), "metric"),
        select("show", [["all", "all jumps (hollow: not significant)"], ["significant", "significant jumps only"]], p.show,
          (v) => { if (SERVER) go("/run", { exp: p.experiment, metric: p.metric, show: v === "all" ? null : v }); else { ndt.showAll = v === "all"; drawRun(ndt.runPayload, onPick); } }, "show"),
        moments, compare),
      section("Phase 1 curves per layer", "curves", 430, "Markers: z-score jumps; hover for the p-value, click to open the moment around it. Shaded: critical periods."),
      section("Layer × step", "heatmap", 320),
      section("Loss", "loss", 260),
      el("section", {}, el("h2", {}, "Jumps"), el("div", { id: "jumps" })));
  }
  function drawRun(p, onPick) {
    ndt.runPayload = p;
    const showAll = SERVER ? true : ndt.showAll !== false;
    const jumps = showAll ? p.jumps : p.jumps.filter((j) => j.significant);
    const curves = p.layers.map((layer, i) => ({
      type: "scatter", mode: "lines", meta: "curve", name: pe(layer), x: p.steps, y: p.values[i],
      hovertemplate: "%{y:.4g} at step %{x}<extra>" + pe(layer) + "</extra>",
    }));
    const sig = jumps.filter((j) => j.significant), ns = jumps.filter((j) => !j.significant);
    const traces = curves.concat([jumpTrace(p, sig, true)], ns.length ? [jumpTrace(p, ns, false)] : []);
    const shapes = periodShapes(p);
    const curvesDiv = document.getElementById("curves");
    const done = [
      plot(curvesDiv, traces, { xaxis: axis("training step"), yaxis: axis(p.metric), shapes: shapes, hovermode: "x" }).then(() => {
        if (!curvesDiv._ndtClick) {
          curvesDiv._ndtClick = true;
          curvesDiv.on("plotly_click", (ev) => {
            const pt = ev.points.find((q) => String(q.data.meta).startsWith("jumps"));
            if (!pt) return;
            const c = pt.customdata;
            openJump({ layer: c[0], before: c[3], after: c[4], step: pt.x, index: c[5] }, onPick);
          });
        }
      }),
      plot("heatmap", [{ type: "heatmap", z: p.values, x: p.steps, y: p.layers.map(pe), colorscale: "Viridis",
        colorbar: { title: { text: pe(p.metric) } }, hovertemplate: "%{y}<br>step %{x}<br>%{z:.4g}<extra></extra>" }],
        { xaxis: axis("training step"), yaxis: axis("layer", { automargin: true, autorange: "reversed" }), margin: { l: 160, r: 30, t: 20, b: 50 } }),
      plot("loss", [{ type: "scatter", mode: "lines", name: "loss", x: p.steps, y: p.loss, line: { color: "#333" } }],
        { xaxis: axis("training step"), yaxis: axis("loss"), shapes: shapes, showlegend: false }),
    ];
    const cols = ["layer", "step", "value", "z", "p_value", "significant", "moment"];
    const rows = jumps.slice().sort((a, b) => a.p_value - b.p_value || b.z - a.z);
    document.getElementById("jumps").replaceChildren(rows.length ? table(cols, rows, (c, j) => {
      if (c === "moment") {
        if (j.before === null || j.after === null) return "no snapshots around it";
        const text = "snapshots " + j.before + " → " + j.after;
        return SERVER
          ? el("a", { class: "moment-link", href: href("/moments", { exp: p.experiment, before: j.before, after: j.after }) }, text)
          : el("a", { class: "moment-link", href: "#moments", onclick: (e) => { e.preventDefault(); openJump(j, onPick); } }, text);
      }
      if (c === "significant") return j.significant ? "yes" : "no";
      if (c === "p_value") return fmt(j.p_value, 3);
      return fmt(j[c]);
    }) : el("p", {}, "No jumps found."));
    return Promise.all(done);
  }

  // ----------------------------------------------------------------- moments
  const momentState = { head: 0, layer: null };
  function buildMoments(p, container, pairPicker) {
    momentState.head = p.head || 0;
    momentState.layer = p.layer;
    const nHeads = p.attention ? p.attention.entropy[p.layer].change.length : 0;
    const serverNav = (k, v) => go("/moments", Object.assign({ exp: p.experiment, before: p.before, after: p.after, layer: p.layer, head: momentState.head }, { [k]: v }));
    const controls = el("div", { class: "controls" });
    if (pairPicker) controls.append(pairPicker);
    else if (p.snapshots.length) {
      controls.append(select("before", p.snapshots, p.before, (v) => serverNav("before", v), "before step"),
        select("after", p.snapshots, p.after, (v) => serverNav("after", v), "after step"));
    }
    if (p.attention) {
      controls.append(select("layer", p.attention_layers, p.layer, (v) => {
        if (SERVER) return serverNav("layer", v);
        if (!p.attention.maps[v]) return;
        momentState.layer = v;
        drawMoments(p);
      }, "layer"));
      const heads = [...Array(nHeads).keys()];
      controls.append(select("head", heads, momentState.head, (v) => {
        momentState.head = parseInt(v, 10);
        setParam("head", v);
        drawAttention(p);
      }, "head"));
    }
    if (SERVER) controls.append(el("a", { href: href("/run", { exp: p.experiment }) }, "Run view"));
    container.replaceChildren(
      el("h1", {}, "Moments of ", el("span", { id: "run-name" }, p.experiment)),
      p.snapshots.length ? el("p", { class: "note", id: "pair" }, "Snapshot at step " + p.before + " (before) and step " + p.after + " (after).")
        : el("p", { class: "note" }, "This run has no stored snapshots."),
      controls,
      p.attention ? el("section", { class: "chart" }, el("h2", { id: "attn-title" }, "Attention"),
        el("div", { class: "row" },
          el("div", { id: "attn-before", class: "plot third", style: "height:340px" }),
          el("div", { id: "attn-after", class: "plot third", style: "height:340px" }),
          el("div", { id: "attn-diff", class: "plot third", style: "height:340px" }))) : null,
      p.attention ? section("Attention entropy change per head (after − before, nats)", "entropy", 280) : null,
      p.weights ? section("Relative weight change per parameter between consecutive snapshots", "weights", 300) : null,
      p.cka ? section("Linear CKA, " + (p.cka.estimator || "") + " estimator, between snapshots (activations of " + p.cka.layer + ")", "cka", 400) : null);
  }
  function drawAttention(p) {
    const maps = p.attention.maps[momentState.layer];
    const h = momentState.head;
    document.getElementById("attn-title").textContent = "Attention of " + momentState.layer + ", head " + h + " (mean over probe samples)";
    const b = maps.before[h], a = maps.after[h];
    const d = a.map((row, i) => row.map((v, j) => v - b[i][j]));
    const hm = (z, title, scale, extra) => [{ type: "heatmap", z: z, colorscale: scale, ...extra,
      hovertemplate: "query %{y}, key %{x}<br>%{z:.4f}<extra></extra>" }];
    const lay = (t) => ({ title: { text: pe(t) }, xaxis: axis("key"), yaxis: axis("query", { autorange: "reversed" }), margin: { l: 50, r: 10, t: 40, b: 40 } });
    const m = Math.max(1e-12, ...d.flat().map(Math.abs));
    return Promise.all([
      plot("attn-before", hm(b, "", "Blues", { zmin: 0, reversescale: true }), lay("before (step " + p.before + ")"), SMALL),
      plot("attn-after", hm(a, "", "Blues", { zmin: 0, reversescale: true }), lay("after (step " + p.after + ")"), SMALL),
      plot("attn-diff", hm(d, "", "RdBu", { zmin: -m, zmax: m }), lay("after − before"), SMALL),
    ]);
  }
  function drawMoments(p) {
    const done = [];
    if (p.attention) {
      done.push(drawAttention(p));
      const e = p.attention.entropy[momentState.layer];
      done.push(plot("entropy", [{ type: "bar", x: e.change.map((_, i) => "head " + i), y: e.change,
        customdata: e.before.map((v, i) => [v, e.after[i]]),
        marker: { color: e.change.map((v) => (v < 0 ? "#1f77b4" : "#d62728")) },
        hovertemplate: "%{x}: %{customdata[0]:.4f} → %{customdata[1]:.4f} (change %{y:.4f})<extra></extra>" }],
        { xaxis: axis("head"), yaxis: axis("entropy change"), showlegend: false }));
    }
    if (p.weights) {
      // outline the intervals between the chosen before and after snapshots
      const starts = p.weights.intervals.map((s) => parseInt(s.split("→")[0], 10));
      const ends = p.weights.intervals.map((s) => parseInt(s.split("→")[1], 10));
      const i0 = starts.indexOf(p.before), i1 = ends.indexOf(p.after);
      const shapes = i0 >= 0 && i1 >= i0 ? [{ type: "rect", xref: "x", yref: "paper", x0: i0 - 0.5, x1: i1 + 0.5,
        y0: 0, y1: 1, line: { color: "#ff4136", width: 3 }, fillcolor: "rgba(0,0,0,0)" }] : [];
      done.push(plot("weights", [{ type: "heatmap", z: p.weights.relative_change, x: p.weights.intervals,
        y: p.weights.parameters.map(pe), colorscale: "Viridis", colorbar: { title: { text: "‖Δw‖/‖w‖" } },
        hovertemplate: "%{y}<br>%{x}<br>%{z:.4g}<extra></extra>" }],
        { xaxis: axis("snapshot interval (steps); outlined: the chosen pair", { type: "category" }),
          yaxis: axis("parameter", { automargin: true }), margin: { l: 140, r: 30, t: 20, b: 60 }, shapes: shapes }));
    }
    if (p.cka) {
      done.push(plot("cka", [{ type: "heatmap", z: p.cka.matrix, x: p.cka.steps.map(String), y: p.cka.steps.map(String),
        colorscale: "Viridis", zmin: 0, zmax: 1, colorbar: { title: { text: "CKA" } },
        hovertemplate: "step %{y} vs %{x}: %{z:.4f}<extra></extra>" }],
        { xaxis: axis("snapshot step", { type: "category", constrain: "domain" }),
          yaxis: axis("snapshot step", { type: "category", autorange: "reversed", scaleanchor: "x", constrain: "domain" }) }));
    }
    return Promise.all(done);
  }

  // ----------------------------------------------------------------- compare
  function buildCompare(p) {
    const app = document.getElementById("app");
    const list = el("select", { id: "experiments", multiple: true, size: 10 },
      p.all_experiments.map((e) => { const o = el("option", { value: e }, e); o.selected = p.experiments.includes(e); return o; }));
    const state = { metric: p.metric, layer: p.layer, align: p.align };
    const apply = () => go("/compare", { exp: [...list.selectedOptions].map((o) => o.value), metric: state.metric, layer: state.layer, align: state.align });
    app.replaceChildren(
      el("h1", {}, "Compare runs"),
      el("div", { class: "controls" },
        el("div", { class: "picker" },
          el("input", { id: "exp-filter", type: "search", placeholder: "filter runs", oninput: (e) => {
            for (const o of list.options) o.hidden = !o.value.toLowerCase().includes(e.target.value.toLowerCase());
          } }), list),
        el("div", { class: "stack" },
          select("metric", p.metrics, p.metric, (v) => { state.metric = v; }, "metric"),
          select("layer", p.layers, p.layer, (v) => { state.layer = v; }, "layer"),
          select("align", [["step", "training step"], ["phase", "phase (step / num_steps)"]], p.align, (v) => { state.align = v; }, "align by"),
          el("button", { id: "apply", onclick: apply }, "Show"))),
      section("Overlay", "overlay", 460));
  }
  function drawCompare(p) {
    const traces = p.series.map((s) => ({ type: "scatter", mode: "lines", name: pe(s.experiment), x: s.x, y: s.y,
      hovertemplate: "%{y:.4g} at %{x}<extra>" + pe(s.experiment) + "</extra>" }));
    return plot("overlay", traces, {
      xaxis: axis(p.align === "phase" ? "phase (step / num_steps)" : "training step"),
      yaxis: axis(p.metric + (p.layer === "mean" ? " (mean over layers)" : " (" + p.layer + ")")),
      annotations: traces.length ? [] : [{ text: "Select runs and press Show", showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5 }],
    });
  }

  // ------------------------------------------------------------------ report
  function buildReport(p) {
    const app = document.getElementById("app");
    const runDiv = el("div", { id: "run-section" });
    const momDiv = el("div", { id: "moments" });
    const fields = Object.keys(p.metadata);
    app.replaceChildren(el("p", { class: "note" }, "Interactive report: zoom by dragging, double-click to reset, hover for values."),
      fields.length ? table(fields, [p.metadata]) : null, runDiv, momDiv,
      p.tables.map((t) => el("section", {}, el("h2", {}, t.title), table(t.columns, t.rows))));
    let pairIndex = 0;
    const pickPair = (i) => {
      pairIndex = i;
      const mp = p.moments[i];
      const pairSel = p.moments.length ? select("pair", p.moments.map((m, k) => [k, "steps " + m.before + " → " + m.after]), i, (v) => pickPair(parseInt(v, 10)), "snapshots") : null;
      buildMoments(mp, momDiv, pairSel);
      return drawMoments(mp);
    };
    const onPick = (j) => {
      const i = p.moments.findIndex((m) => m.before === j.before && m.after === j.after);
      if (i >= 0) pickPair(i);
      momDiv.scrollIntoView();
    };
    const drawMetric = (m) => {
      const rp = p.runs[m];
      buildRun(rp, runDiv, onPick, (v) => drawMetric(v));
      return drawRun(rp, onPick);
    };
    const done = [drawMetric(p.metric)];
    if (p.moments.length) done.push(pickPair(pairIndex));
    else momDiv.append(el("p", { class: "note" }, "No snapshot pairs stored for this run."));
    return Promise.all(done);
  }

  // -------------------------------------------------------------------- main
  const VIEWS = {
    runs: {
      title: "runs", build: buildRuns, draw: drawRuns, pollFactor: 3, // listing every run costs more
      redraw: (p, old) => (JSON.stringify(p.columns) === JSON.stringify(old.columns) ? drawRunsBody(p) : drawRuns(p)),
    },
    run: { title: "run", build: (p) => buildRun(p, document.getElementById("app")), draw: (p) => drawRun(p) },
    moments: { title: "moments", build: (p) => buildMoments(p, document.getElementById("app")), draw: drawMoments },
    compare: { title: "compare runs", build: buildCompare, draw: drawCompare },
    report: { title: "report", build: () => null, draw: buildReport },
  };
  function start() {
    const p = DATA.payload;
    const view = VIEWS[p.view];
    header(p.view === "report" ? "report of " + p.experiment : view.title);
    view.build(p);
    Promise.resolve(view.draw(p)).then(() => { ndt.readyMs = performance.now(); ndt.ready = true; ndt.renders += 1; },
      (err) => { ndt.errors.push(String(err)); ndt.ready = true; });
    if (SERVER && CFG.poll_ms > 0) {
      let last = JSON.stringify(p);
      setInterval(async () => {
        try {
          const r = await fetch(CFG.api + location.search, { cache: "no-store" });
          ndt.polls += 1;
          if (!r.ok) return;
          const next = await r.json();
          const text = JSON.stringify(next);
          if (text === last) return;
          last = text;
          const old = ndt.payload;
          ndt.payload = next;
          await (view.redraw ? view.redraw(next, old) : view.draw(next));
          ndt.renders += 1;
        } catch (err) {
          ndt.errors.push("poll: " + err);
        }
      }, CFG.poll_ms * (view.pollFactor || 1));
    }
  }
  start();
})();
