// agentrft dashboard curves: small SVG line charts, polled from the run's metrics endpoint.
// Written for this dashboard (no dependencies, no build step). Each <figure class="chart" data-keys="a,b">
// gets one line per (metric, split): train solid, validation dashed; monitor alerts are red marks at their step.
(function () {
  "use strict";
  var root = document.getElementById("charts");
  if (!root) return;
  var src = root.getAttribute("data-src");
  var W = 340, H = 150, L = 42, R = 8, T = 8, B = 22;
  var COLORS = ["#2f6fdf", "#e07b1a", "#2a9d55", "#9b4dca", "#c0392b", "#14877f", "#8a6d3b", "#d6478a"];
  var NS = "http://www.w3.org/2000/svg";
  var lastKey = null;

  function el(name, attrs, parent) {
    var e = document.createElementNS(NS, name);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function fmt(v) {
    var a = Math.abs(v);
    if (a !== 0 && (a < 0.01 || a >= 1e4)) return v.toExponential(1);
    return (Math.round(v * 1000) / 1000).toString();
  }
  function keysFor(fig, series) {
    var out = [];
    fig.getAttribute("data-keys").split(",").forEach(function (k) {
      if (k.slice(-1) === "*") {
        var prefix = k.slice(0, -1), seen = {};
        Object.keys(series).forEach(function (split) {
          series[split].forEach(function (p) {
            Object.keys(p).forEach(function (m) { if (m.indexOf(prefix) === 0) seen[m] = 1; });
          });
        });
        out = out.concat(Object.keys(seen).sort());
      } else out.push(k);
    });
    return out;
  }
  function draw(fig, data) {
    var series = data.series || {}, keys = keysFor(fig, series), lines = [];
    keys.forEach(function (k, i) {
      ["train", "valid"].forEach(function (split) {
        var pts = (series[split] || []).filter(function (p) { return typeof p[k] === "number"; })
          .map(function (p) { return [p.step, p[k]]; });
        if (pts.length) lines.push({ key: k, split: split, pts: pts, color: COLORS[i % COLORS.length] });
      });
    });
    var old = fig.querySelector("svg"); if (old) fig.removeChild(old);
    var oldLeg = fig.querySelector(".legend"); if (oldLeg) fig.removeChild(oldLeg);
    var svg = el("svg", { viewBox: "0 0 " + W + " " + H, "data-points": 0 }, fig);
    var n = 0, xs = [], ys = [];
    lines.forEach(function (l) { l.pts.forEach(function (p) { xs.push(p[0]); ys.push(p[1]); n++; }); });
    svg.setAttribute("data-points", n);
    if (!n) {
      var t = el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", fill: "#999", "font-size": 12 }, svg);
      t.textContent = "no data yet";
      return;
    }
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs);
    var y0 = Math.min.apply(null, ys), y1 = Math.max.apply(null, ys);
    if (x1 === x0) { x1 = x0 + 1; }
    if (y1 === y0) { var pad = Math.abs(y0) * 0.1 || 0.5; y0 -= pad; y1 += pad; }
    function X(v) { return L + (v - x0) / (x1 - x0) * (W - L - R); }
    function Y(v) { return T + (1 - (v - y0) / (y1 - y0)) * (H - T - B); }
    el("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#bbb" }, svg);
    el("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#bbb" }, svg);
    [[y0, H - B], [y1, T + 8]].forEach(function (a) {
      var t = el("text", { x: L - 4, y: a[1], "text-anchor": "end", "font-size": 10, fill: "#555" }, svg);
      t.textContent = fmt(a[0]);
    });
    [[x0, "start"], [x1, "end"]].forEach(function (a) {
      var t = el("text", { x: X(a[0]), y: H - 6, "text-anchor": a[1], "font-size": 10, fill: "#555" }, svg);
      t.textContent = "step " + a[0];
    });
    (data.alerts || []).forEach(function (a) {
      if (a.step < x0 || a.step > x1) return;
      var g = el("g", { "class": "alert" }, svg);
      el("line", { x1: X(a.step), y1: T, x2: X(a.step), y2: H - B, stroke: "#d33", "stroke-dasharray": "2,2" }, g);
      el("path", { d: "M" + (X(a.step) - 4) + "," + T + " l8,0 l-4,7 z", fill: "#d33" }, g);
      el("title", {}, g).textContent = "step " + a.step + " " + a.split + ": " + a.signal + " — " + a.message;
    });
    lines.forEach(function (l) {
      var d = l.pts.map(function (p, i) { return (i ? "L" : "M") + X(p[0]).toFixed(1) + "," + Y(p[1]).toFixed(1); }).join(" ");
      el("path", { d: d, fill: "none", stroke: l.color, "stroke-width": 1.6,
                   "stroke-dasharray": l.split === "valid" ? "5,3" : "" }, svg);
      l.pts.forEach(function (p) {
        var c = el("circle", { "class": "pt", cx: X(p[0]), cy: Y(p[1]), r: l.pts.length > 60 ? 1 : 2, fill: l.color }, svg);
        el("title", {}, c).textContent = l.key + " (" + l.split + ") step " + p[0] + ": " + fmt(p[1]);
      });
    });
    var leg = document.createElement("div");
    leg.className = "legend";
    lines.forEach(function (l) {
      var s = document.createElement("span"), i = document.createElement("i");
      i.style.background = l.color;
      if (l.split === "valid") i.style.opacity = 0.55;
      s.appendChild(i);
      s.appendChild(document.createTextNode(l.key + (l.split === "valid" ? " (valid)" : "")));
      leg.appendChild(s);
    });
    fig.appendChild(leg);
  }
  function poll() {
    fetch(src, { credentials: "same-origin" }).then(function (r) { return r.json(); }).then(function (data) {
      var key = JSON.stringify([data.updated_at, data.status, (data.alerts || []).length]);
      if (key !== lastKey) {
        lastKey = key;
        var figs = root.querySelectorAll("figure.chart");
        for (var i = 0; i < figs.length; i++) draw(figs[i], data);
        var st = document.getElementById("run-status");
        if (st) { st.textContent = data.status; st.className = "status " + data.status; }
        var up = document.getElementById("run-updated");
        if (up && data.updated_at) up.textContent = data.updated_at.slice(0, 19);
      }
      root.setAttribute("data-loaded", "1");
      var live = data.status === "running" || data.status === "queued" || data.status === "pausing";
      setTimeout(poll, live ? 2000 : 10000);
    }).catch(function () { setTimeout(poll, 5000); });
  }
  poll();
})();
