// Draws a Grafana dashboard's panels from Prometheus data embedded in the page (#dashboard-data):
// the dashboard's grid layout (gridPos), titles, units and legends; time series with uPlot, stat
// and gauge panels as big numbers. Each panel element says what it drew, for the test to read:
// data-series (series with at least one point), data-points, data-ink (canvas pixels in the
// series' colours), data-value (a stat's number). document.body.dataset.ready is "1" when done.
"use strict";

(() => {
  const data = JSON.parse(document.getElementById("dashboard-data").textContent);
  const PALETTE = ["#73BF69", "#F2CC0C", "#8AB8FF", "#FF780A", "#F2495C", "#5794F2", "#B877D9",
    "#FADE2A", "#37872D", "#C4162A"];
  const CELL = 30, GAP = 8, COLS = 24;  // Grafana's grid: 24 columns, 30 px rows, 8 px gaps
  const AXIS = "#9a9aaa", GRID = "rgba(204, 204, 220, 0.09)";

  // ---- units, as Grafana shows them ------------------------------------------------------------
  const num = (v) => {
    const a = Math.abs(v);
    if (a === 0) return "0";
    if (a >= 100) return v.toFixed(0);
    if (a >= 10) return v.toFixed(1);
    if (a >= 1) return v.toFixed(2).replace(/\.?0+$/, "");
    return String(Number(v.toPrecision(2)));
  };
  const scaled = (v, base, units) => {
    let i = 0;
    while (Math.abs(v) >= base && i < units.length - 1) { v /= base; i += 1; }
    return num(v) + units[i];
  };
  const duration = (v) => {
    const a = Math.abs(v);
    if (a === 0) return "0 s";
    if (a < 1e-3) return num(v * 1e6) + " µs";
    if (a < 1) return num(v * 1e3) + " ms";
    if (a < 60) return num(v) + " s";
    if (a < 3600) return num(v / 60) + " min";
    return num(v / 3600) + " h";
  };
  function format(v, unit) {
    if (v == null || !Number.isFinite(v)) return "–";
    switch (unit) {
      case "s": return duration(v);
      case "ms": return duration(v / 1e3);
      case "bytes": return scaled(v, 1024, [" B", " KiB", " MiB", " GiB", " TiB"]);
      case "percentunit": return num(v * 100) + "%";
      case "percent": return num(v) + "%";
      case "currencyUSD": return (v < 0 ? "-$" : "$") + (Math.abs(v) >= 1 ? Math.abs(v).toFixed(2) : num(Math.abs(v)));
      default: return scaled(v, 1000, ["", "k", "M", "B", "T"]);
    }
  }
  const UNIT_NAMES = { s: "seconds", ms: "milliseconds", bytes: "bytes", percentunit: "percent",
    percent: "percent", currencyUSD: "USD", short: "" };

  // ---- layout ----------------------------------------------------------------------------------
  const grid = document.getElementById("grid");
  const colWidth = (grid.clientWidth + GAP) / COLS;
  let gridRows = 0;
  function place(el, g) {
    el.style.left = `${g.x * colWidth}px`;
    el.style.top = `${g.y * (CELL + GAP)}px`;
    el.style.width = `${g.w * colWidth - GAP}px`;
    el.style.height = `${g.h * CELL + (g.h - 1) * GAP}px`;
    gridRows = Math.max(gridRows, g.y + g.h);
    grid.style.height = `${gridRows * (CELL + GAP)}px`;
  }
  function panelElement(panel) {
    const el = document.createElement("section");
    el.className = `panel ${panel.type}`;
    el.dataset.title = panel.title;
    el.dataset.type = panel.type;
    const h2 = document.createElement("h2");
    h2.textContent = panel.title;
    h2.title = panel.description || "";
    const unitName = UNIT_NAMES[panel.unit] ?? panel.unit ?? "";
    if (unitName) {
      const u = document.createElement("span");
      u.className = "unit";
      u.textContent = unitName;
      h2.append(u);
    }
    const body = document.createElement("div");
    body.className = "body";
    el.append(h2, body);
    place(el, panel.gridPos);
    grid.append(el);
    return [el, body];
  }
  const finite = (values) => values.filter((v) => v != null && Number.isFinite(v));
  const noData = (body) => {
    const p = document.createElement("div");
    p.className = "nodata";
    p.textContent = "No data";
    body.append(p);
  };

  // ---- stat and gauge: the last value of each series, big ---------------------------------------
  function drawStat(panel, el, body) {
    const shown = panel.series.map((s) => [s, finite(s.values)]).filter(([, vs]) => vs.length);
    el.dataset.series = String(shown.length);
    el.dataset.points = String(shown.reduce((n, [, vs]) => n + vs.length, 0));
    if (!shown.length) { noData(body); return; }
    for (const [s, vs] of shown) {
      const last = vs[vs.length - 1];
      const div = document.createElement("div");
      div.className = "value";
      div.textContent = format(last, panel.unit);
      if (shown.length > 1) {
        const label = document.createElement("small");
        label.textContent = s.name;
        div.append(label);
      }
      body.append(div);
    }
    el.dataset.value = String(shown[0][1][shown[0][1].length - 1]);
  }

  // ---- time series: uPlot ----------------------------------------------------------------------
  const rgb = (hex) => [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
  function ink(u, colours) {
    // Pixels of the plotting area close to a series' colour: the lines and points really drawn.
    const { left, top, width, height } = u.bbox;
    if (width < 1 || height < 1) return 0;
    const px = u.ctx.getImageData(Math.round(left), Math.round(top), Math.round(width), Math.round(height)).data;
    const targets = colours.map(rgb);
    let count = 0;
    for (let i = 0; i < px.length; i += 4) {
      if (px[i + 3] < 200) continue;
      for (const [r, g, b] of targets) {
        if (Math.abs(px[i] - r) + Math.abs(px[i + 1] - g) + Math.abs(px[i + 2] - b) < 60) { count += 1; break; }
      }
    }
    return count;
  }
  function drawTimeseries(panel, el, body) {
    const withPoints = panel.series.filter((s) => finite(s.values).length);
    el.dataset.series = String(withPoints.length);
    el.dataset.points = String(withPoints.reduce((n, s) => n + finite(s.values).length, 0));
    el.dataset.ink = "0";
    if (!withPoints.length) { noData(body); return; }
    const colours = panel.series.map((_, i) => PALETTE[i % PALETTE.length]);
    const drawnColours = colours.filter((_, i) => finite(panel.series[i].values).length);
    const range = (u, lo, hi) => {
      lo = panel.min ?? lo ?? 0;
      hi = panel.max ?? hi ?? lo + 1;
      if (hi <= lo) return [lo, lo + (Math.abs(lo) || 1)];
      return [lo, panel.max ?? hi + (hi - lo) * 0.08];
    };
    const axis = {
      stroke: AXIS, grid: { stroke: GRID, width: 1 }, ticks: { stroke: GRID, width: 1 },
      font: "11px DejaVu Sans, sans-serif",
    };
    // The legend first (Grafana's list under the chart), then the chart in the height left.
    const legend = document.createElement("ul");
    legend.className = "legend";
    panel.series.forEach((s, i) => {
      const item = document.createElement("li");
      const marker = document.createElement("i");
      marker.style.background = colours[i];
      item.append(marker, s.name);
      legend.append(item);
    });
    const chart = document.createElement("div");
    chart.className = "chart";
    body.append(chart, legend);
    const opts = {
      width: Math.floor(chart.clientWidth),
      height: Math.max(Math.floor(chart.clientHeight), 80),
      legend: { show: false },
      cursor: { show: false },
      scales: { x: { time: true }, y: { range } },
      axes: [axis, { ...axis, size: 62, values: (u, splits) => splits.map((v) => format(v, panel.unit)) }],
      series: [{}, ...panel.series.map((s, i) => ({
        label: s.name, stroke: colours[i], width: 2, points: { size: 5 },
      }))],
      hooks: { draw: [(u) => { el.dataset.ink = String(ink(u, drawnColours)); }] },
    };
    new uPlot(opts, [data.times, ...panel.series.map((s) => s.values)], chart);
  }

  // ---- the page --------------------------------------------------------------------------------
  document.getElementById("title").textContent = data.title;
  document.getElementById("range").textContent = `${new Date(data.from * 1000).toISOString()} to ` +
    `${new Date(data.to * 1000).toISOString()}, step ${data.step} s. ${data.source}`;
  for (const panel of data.panels) {
    if (panel.type === "row") {
      const row = document.createElement("div");
      row.className = "row";
      const h2 = document.createElement("h2");
      h2.textContent = panel.title;
      row.append(h2);
      place(row, panel.gridPos);
      grid.append(row);
      continue;
    }
    const [el, body] = panelElement(panel);
    try {
      if (["stat", "gauge", "bargauge"].includes(panel.type)) drawStat(panel, el, body);
      else drawTimeseries(panel, el, body);
    } catch (err) {
      el.dataset.error = String(err);
      console.error(`panel ${panel.title}: ${err}`);
    }
  }
  requestAnimationFrame(() => requestAnimationFrame(() => { document.body.dataset.ready = "1"; }));
})();
