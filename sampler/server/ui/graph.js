// The live service graph: polls /graph.json and draws it as inline SVG, updating the drawing in place.
// Service names come from untrusted spans: they only ever reach the DOM as text (textContent) or
// attribute values (setAttribute), never as markup.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const page = document.getElementById("graph-page");
  const svg = document.getElementById("graph");
  const edgeLayer = document.getElementById("edges");
  const nodeLayer = document.getElementById("nodes");
  const statusLine = document.getElementById("status");
  const query = new URLSearchParams(window.location.search);
  const refreshMs = Math.max(200, Number(query.get("refresh")) || Number(page.dataset.refreshMs) || 3000);
  const WINDOW = 10; // rates are over the last WINDOW refreshes

  const NODE_H = 46, COL_GAP = 210, ROW_GAP = 44, MARGIN = 50, MAX_CHARS = 28, LABEL_H = 28;
  const nodes = new Map(); // id -> {el, rect, name, sub, title, w, x, y, layer}
  const edges = new Map(); // key -> {el, path, label, title}
  const history = []; // [{t, counts: Map key -> [requests, failed]}]
  let gaps = [];
  let shape = "";
  let updates = 0;

  function el(name, attrs) {
    const e = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return e;
  }

  function edgeKey(e) {
    return JSON.stringify([e.client, e.server, e.connection_type]);
  }

  function shortName(id) {
    return id.length > MAX_CHARS ? id.slice(0, MAX_CHARS - 1) + "…" : id;
  }

  // Error rate 0 is green, 5% and beyond red, in between along the hue.
  function colour(errorRate) {
    const hue = 120 * (1 - Math.min(1, errorRate / 0.05));
    return `hsl(${hue.toFixed(0)}, 60%, ${(34 + 8 * (1 - hue / 120)).toFixed(0)}%)`;
  }

  function fmtRate(perSecond) {
    if (perSecond === null) return null;
    return perSecond >= 10 ? `${perSecond.toFixed(0)} req/s` : `${perSecond.toFixed(2)} req/s`;
  }

  function fmtPct(fraction) {
    const pct = 100 * fraction;
    return pct === 0 ? "0%" : pct < 0.1 ? "<0.1%" : `${pct.toFixed(pct < 10 ? 1 : 0)}%`;
  }

  function fmtMs(ms) {
    if (ms === null || ms === undefined) return "–";
    return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms >= 10 ? ms.toFixed(0) : ms.toFixed(1)} ms`;
  }

  // Layers left to right: a node's layer is the longest path to it from a node nothing calls, over
  // the graph with the edges that close cycles reversed. Within a layer, nodes are ordered by the
  // mean position of their neighbours (a few sweeps), which keeps crossings few.
  function layout(doc) {
    const ids = doc.nodes.map((n) => n.id);
    const out = new Map(ids.map((id) => [id, []]));
    for (const e of doc.edges) if (e.client !== e.server) out.get(e.client).push(e.server);
    const state = new Map(), dag = new Map(ids.map((id) => [id, []]));
    const visit = (root) => {
      const stack = [[root, 0]];
      state.set(root, 1);
      while (stack.length) {
        const top = stack[stack.length - 1];
        const next = out.get(top[0])[top[1]++];
        if (next === undefined) { state.set(top[0], 2); stack.pop(); continue; }
        if (state.get(next) === 1) { dag.get(next).push(top[0]); continue; } // closes a cycle: reversed
        dag.get(top[0]).push(next);
        if (!state.has(next)) { state.set(next, 1); stack.push([next, 0]); }
      }
    };
    const called = new Set(doc.edges.filter((e) => e.client !== e.server).map((e) => e.server));
    for (const id of ids) if (!called.has(id) && !state.has(id)) visit(id);
    for (const id of ids) if (!state.has(id)) visit(id);
    const indeg = new Map(ids.map((id) => [id, 0]));
    for (const targets of dag.values()) for (const t of targets) indeg.set(t, indeg.get(t) + 1);
    const layer = new Map(ids.map((id) => [id, 0]));
    const ready = ids.filter((id) => indeg.get(id) === 0);
    while (ready.length) {
      const id = ready.shift();
      for (const t of dag.get(id)) {
        layer.set(t, Math.max(layer.get(t), layer.get(id) + 1));
        indeg.set(t, indeg.get(t) - 1);
        if (indeg.get(t) === 0) ready.push(t);
      }
    }
    const columns = [];
    for (const id of ids) (columns[layer.get(id)] ||= []).push(id);
    const neighbours = new Map(ids.map((id) => [id, []]));
    for (const e of doc.edges) { neighbours.get(e.client).push(e.server); neighbours.get(e.server).push(e.client); }
    const position = new Map();
    const place = () => columns.forEach((col) => col.forEach((id, i) => position.set(id, i)));
    place();
    for (let sweep = 0; sweep < 6; sweep++) {
      for (const col of columns) {
        const score = new Map(col.map((id) => {
          const ns = neighbours.get(id).filter((n) => layer.get(n) !== layer.get(id));
          return [id, ns.length ? ns.reduce((s, n) => s + position.get(n), 0) / ns.length : position.get(id)];
        }));
        col.sort((a, b) => score.get(a) - score.get(b) || (a < b ? -1 : a > b ? 1 : 0));
        col.forEach((id, i) => position.set(id, i));
      }
    }
    const widths = new Map(doc.nodes.map((n) => [n.id, Math.max(140, 7.6 * shortName(n.id).length + 28)]));
    const colWidth = columns.map((col) => Math.max(...col.map((id) => widths.get(id))));
    const tallest = Math.max(1, ...columns.map((col) => col.length)); // 1: an empty graph is drawn too
    const result = new Map();
    const gaps = []; // per column: the x in the middle of the gap to its right, where labels go
    let x = MARGIN;
    columns.forEach((col, c) => {
      gaps.push(x + colWidth[c] + COL_GAP / 2);
      const offset = ((tallest - col.length) * (NODE_H + ROW_GAP)) / 2;
      col.forEach((id, i) => {
        const w = widths.get(id);
        result.set(id, { x: x + (colWidth[c] - w) / 2, y: MARGIN + offset + i * (NODE_H + ROW_GAP), w, layer: c });
      });
      x += colWidth[c] + COL_GAP;
    });
    const width = x - COL_GAP + MARGIN;
    const height = MARGIN * 2 + tallest * (NODE_H + ROW_GAP) - ROW_GAP;
    return { positions: result, gaps, width: Math.max(width, 300), height: Math.max(height, 120) };
  }

  function syncNodes(doc, positions) {
    const wanted = new Set(doc.nodes.map((n) => n.id));
    for (const [id, n] of nodes) if (!wanted.has(id)) { n.el.remove(); nodes.delete(id); }
    for (const node of doc.nodes) {
      let n = nodes.get(node.id);
      if (!n) {
        const g = el("g", { class: "node" });
        g.setAttribute("data-id", node.id);
        const title = el("title");
        const rect = el("rect", { rx: 7, ry: 7, height: NODE_H });
        const name = el("text", { class: "name" });
        const sub = el("text", { class: "sub", y: 36 });
        name.textContent = shortName(node.id);
        g.append(title, rect, name, sub);
        nodeLayer.append(g);
        n = { el: g, rect, name, sub, title };
        nodes.set(node.id, n);
      }
      const p = positions.get(node.id);
      Object.assign(n, p);
      n.el.setAttribute("transform", `translate(${p.x.toFixed(1)},${p.y.toFixed(1)})`);
      n.rect.setAttribute("width", p.w.toFixed(1));
      n.name.setAttribute("x", (p.w / 2).toFixed(1));
      n.name.setAttribute("text-anchor", "middle");
      n.sub.setAttribute("x", (p.w / 2).toFixed(1));
      n.sub.setAttribute("text-anchor", "middle");
    }
  }

  // Where each edge leaves and enters its nodes: forward edges spread down the right and left sides
  // in the order of the nodes at their other end (so fans do not cross at the node), edges that go
  // back to an earlier column leave and enter at the bottom.
  function ports(doc) {
    const sides = new Map(); // side + node id -> [other end's y, its x, edge key]
    const add = (side, id, other, key) => {
      const k = side + "\u0000" + id;
      (sides.get(k) || sides.set(k, []).get(k)).push([other.y, other.x, key]);
    };
    for (const e of doc.edges) {
      const a = nodes.get(e.client), b = nodes.get(e.server), key = edgeKey(e);
      if (a === b) continue;
      const forward = b.layer > a.layer;
      add(forward ? "out" : "bottom-out", e.client, b, key);
      add(forward ? "in" : "bottom-in", e.server, a, key);
    }
    const offsets = new Map(); // side + edge key -> fraction along that side of its node
    for (const [k, list] of sides) {
      list.sort((p, q) => p[0] - q[0] || p[1] - q[1] || (p[2] < q[2] ? -1 : 1));
      const side = k.slice(0, k.indexOf("\u0000"));
      list.forEach(([, , key], i) => offsets.set(side + "\u0000" + key, (i + 1) / (list.length + 1)));
    }
    return (side, key) => offsets.get(side + "\u0000" + key) ?? 0.5;
  }

  function edgeGeometry(e, port) {
    const a = nodes.get(e.client), b = nodes.get(e.server), key = edgeKey(e);
    if (a === b) { // a self-loop, above the node
      const x0 = a.x + a.w * 0.35, x1 = a.x + a.w * 0.65, y = a.y;
      return { d: `M${x0},${y} C${x0 - 30},${y - 60} ${x1 + 30},${y - 60} ${x1},${y}`, lx: a.x + a.w / 2, ly: y - 58 };
    }
    const forward = b.layer > a.layer;
    const p0 = forward ? [a.x + a.w, a.y + NODE_H * port("out", key)] : [a.x + a.w * port("bottom-out", key), a.y + NODE_H];
    const p3 = forward ? [b.x, b.y + NODE_H * port("in", key)] : [b.x + b.w * port("bottom-in", key), b.y + NODE_H];
    const bend = forward ? Math.max(40, (p3[0] - p0[0]) / 2) : 70 + Math.abs(p3[0] - p0[0]) / 6;
    const p1 = forward ? [p0[0] + bend, p0[1]] : [p0[0], p0[1] + bend];
    const p2 = forward ? [p3[0] - bend, p3[1]] : [p3[0], p3[1] + bend];
    const pts = [p0, p1, p2, p3].map((p) => p.map((v) => v.toFixed(1)).join(","));
    const at = (t, i) => (1 - t) ** 3 * p0[i] + 3 * (1 - t) ** 2 * t * p1[i] + 3 * (1 - t) * t ** 2 * p2[i] + t ** 3 * p3[i];
    let t = 0.5;
    if (forward) { // the label sits in the gap right after the client's column, where x(t) reaches it
      let lo = 0, hi = 1;
      for (let i = 0; i < 30; i++) { t = (lo + hi) / 2; if (at(t, 0) < gaps[a.layer]) lo = t; else hi = t; }
    }
    return { d: `M${pts[0]} C${pts[1]} ${pts[2]} ${pts[3]}`, lx: at(t, 0), ly: at(t, 1) - 16, gap: forward ? a.layer : -1 };
  }

  // Labels in one gap are pushed apart vertically, nearest to where their edges pass.
  function spreadLabels(placed) {
    const byGap = new Map();
    for (const p of placed) (byGap.get(p.gap) || byGap.set(p.gap, []).get(p.gap)).push(p);
    for (const list of byGap.values()) {
      list.sort((p, q) => p.ly - q.ly);
      for (let i = 1; i < list.length; i++) list[i].ly = Math.max(list[i].ly, list[i - 1].ly + LABEL_H);
      const overshoot = list.length ? (list[list.length - 1].ly - list[list.length - 1].want) / 2 : 0;
      for (const p of list) p.ly -= Math.max(0, overshoot); // centred again on where they were wanted
    }
  }

  function syncEdges(doc) {
    const wanted = new Set(doc.edges.map(edgeKey));
    for (const [key, e] of edges) if (!wanted.has(key)) { e.el.remove(); edges.delete(key); }
    const port = ports(doc);
    const placed = [];
    for (const e of doc.edges) {
      const key = edgeKey(e);
      let g = edges.get(key);
      if (!g) {
        const group = el("g", { class: "edge" });
        group.setAttribute("data-client", e.client);
        group.setAttribute("data-server", e.server);
        group.setAttribute("data-connection-type", e.connection_type);
        const title = el("title");
        const path = el("path", { "marker-end": "url(#arrow)" });
        const label = el("text", { class: "edge-label", "text-anchor": "middle" });
        const rate = el("tspan", { class: "rate" });
        const detail = el("tspan", { class: "detail", dy: 13 });
        label.append(rate, detail);
        group.append(title, path, label);
        edgeLayer.append(group);
        g = { el: group, path, label, rate, detail, title };
        edges.set(key, g);
      }
      const geo = edgeGeometry(e, port);
      g.path.setAttribute("d", geo.d);
      placed.push({ g, lx: geo.lx, ly: geo.ly, want: geo.ly, gap: geo.gap });
    }
    spreadLabels(placed);
    for (const { g, lx, ly } of placed) {
      g.label.setAttribute("x", lx.toFixed(1));
      g.label.setAttribute("y", ly.toFixed(1));
      g.detail.setAttribute("x", lx.toFixed(1));
    }
  }

  // Rates over the window of recent refreshes; before there are two, the totals since start.
  function recent(doc, now) {
    const counts = new Map(doc.edges.map((e) => [edgeKey(e), [e.requests, e.failed]]));
    const restarted = history.some((h) => [...h.counts].some(([k, [r]]) => (counts.get(k) || [r])[0] < r));
    if (restarted) history.length = 0;
    history.push({ t: now, counts });
    if (history.length > WINDOW) history.shift();
    const first = history[0];
    const seconds = (now - first.t) / 1000;
    return (e) => {
      const [before, failedBefore] = first.counts.get(edgeKey(e)) || [0, 0];
      const requests = e.requests - before, failed = e.failed - failedBefore;
      if (history.length < 2 || seconds <= 0) return { rate: null, errorRate: e.requests ? e.failed / e.requests : 0 };
      return { rate: requests / seconds, errorRate: requests > 0 ? failed / requests : e.requests ? e.failed / e.requests : 0 };
    };
  }

  function draw(doc) {
    const now = performance.now();
    const newShape = JSON.stringify([doc.nodes.map((n) => n.id), doc.edges.map(edgeKey)]);
    if (newShape !== shape) {
      const drawn = layout(doc);
      const { positions, width, height } = drawn;
      gaps = drawn.gaps;
      svg.setAttribute("viewBox", `0 0 ${width.toFixed(0)} ${height.toFixed(0)}`);
      svg.setAttribute("width", width.toFixed(0));
      svg.setAttribute("height", height.toFixed(0));
      syncNodes(doc, positions);
      syncEdges(doc);
      shape = newShape;
    }
    const stats = recent(doc, now);
    for (const node of doc.nodes) {
      const n = nodes.get(node.id);
      n.el.classList.toggle("virtual", Boolean(node.virtual));
      n.el.classList.toggle("orphaned", node.orphan_spans > 0);
      n.sub.textContent = node.orphan_spans > 0
        ? `⚠ ${node.orphan_spans} orphan span${node.orphan_spans === 1 ? "" : "s"}`
        : node.virtual ? "no spans of its own" : "";
      n.name.setAttribute("y", n.sub.textContent ? "20" : "28");
      n.title.textContent = `${node.id}${node.orphan_spans > 0 ? `\n${node.orphan_spans} spans whose parent never arrived` : ""}`;
    }
    for (const e of doc.edges) {
      const g = edges.get(edgeKey(e));
      const { rate, errorRate } = stats(e);
      const stroke = colour(errorRate);
      g.path.setAttribute("stroke", stroke);
      g.label.setAttribute("fill", stroke);
      g.el.setAttribute("data-error-rate", errorRate.toFixed(4));
      const via = e.connection_type === "database" || e.connection_type === "messaging_system" ? ` · ${e.connection_type}` : "";
      g.rate.textContent = (fmtRate(rate) || `${e.requests} req`) + via;  // virtual nodes show as dashed boxes
      g.detail.textContent = `${fmtPct(errorRate)} err · p95 ${fmtMs(e.p95_ms)}`;
      g.title.textContent = `${e.client} → ${e.server}${e.connection_type ? ` (${e.connection_type})` : ""}\n` +
        `${e.requests} requests, ${e.failed} failed since start` +
        (e.exemplar_trace_id ? `\nlast kept trace: ${e.exemplar_trace_id}` : "");
    }
    statusLine.classList.remove("error");
    statusLine.textContent = `${doc.nodes.length} nodes, ${doc.edges.length} edges · ${doc.traces} traces, ` +
      `${doc.traces_without_root} without root, ${doc.orphan_spans} orphan spans · updated ` +
      new Date().toLocaleTimeString();
    page.setAttribute("data-updates", String(++updates));
  }

  async function refresh() {
    try {
      const response = await fetch("/graph.json", { cache: "no-store" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      draw(await response.json());
    } catch (err) {
      statusLine.classList.add("error");
      statusLine.textContent = `graph unavailable (${err.message}); retrying`;
    } finally {
      setTimeout(refresh, refreshMs);
    }
  }

  refresh();
})();
