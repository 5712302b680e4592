"use strict";
// The status page: renders each status document the controller sends (server-sent
// events from api/events, one a second). Text from the controller always goes in with
// textContent, never as markup.
(function () {
  const token = new URLSearchParams(location.search).get("token") || "";
  const query = "?token=" + encodeURIComponent(token);
  const SVG = "http://www.w3.org/2000/svg";
  const STATES = ["idle", "tasks", "busy"];
  const STATE_TEXT = { idle: "idle", tasks: "running tasks", busy: "running a command" };
  const $ = (id) => document.getElementById(id);

  let status = null;
  let engines = new Map();
  let selected = null;
  let hovered = null;
  let failuresKey = null;

  function make(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setText(id, text) {
    const node = $(id);
    const value = String(text);
    if (node.textContent !== value) node.textContent = value;
  }

  function bytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds < 60) return seconds.toFixed(seconds < 10 ? 1 : 0) + " s";
    const m = Math.floor(seconds / 60);
    if (m < 60) return m + " min " + Math.floor(seconds % 60) + " s";
    return Math.floor(m / 60) + " h " + (m % 60) + " min";
  }

  function clock(epoch) {
    return epoch ? new Date(epoch * 1000).toLocaleTimeString() : "–";
  }

  function since(engine) {
    return engine.since === null ? null : Math.max(0, status.time - engine.since);
  }

  // -- header and cards -----------------------------------------------------------------

  function renderSummary() {
    const c = status.controller;
    setText("controller", "pid " + c.pid + " · up " + duration(status.time - c.started)
      + " · updated " + clock(status.time));
    setText("engine-count", status.engines.length);
    const states = $("engine-states");
    states.textContent = "";
    for (const state of Object.keys(status.engine_states)) {
      const item = make("span");
      item.appendChild(make("i", "s-" + state));
      item.appendChild(document.createTextNode(status.engine_states[state] + " " + state + "  "));
      states.appendChild(item);
    }
    for (const state of ["scheduled", "pending", "succeeded", "failed"]) {
      setText("tasks-" + state, status.tasks[state]);
    }
    const counts = status.throughput.counts;
    const recent = counts.slice(-11, -1);  // the last 10 whole seconds
    const sum = recent.reduce((a, b) => a + b, 0);
    setText("rate-now", recent.length ? (sum / recent.length).toFixed(1) : "0");
    setText("rate-peak", "peak " + Math.max(0, ...counts) + "/s over "
      + Math.round(counts.length / 60) + " min");
    const t = status.transfers;
    setText("transfer-count", t.incoming + t.outgoing);
    setText("transfer-summary", t.incoming + " in (" + bytes(t.rate_in) + "/s), "
      + t.outgoing + " out (" + bytes(t.rate_out) + "/s); " + bytes(t.held) + " held");
  }

  // -- the engine grid ------------------------------------------------------------------

  function renderLegend() {
    const legend = $("legend");
    for (const state of STATES) {
      const item = make("span");
      item.appendChild(make("i", "s-" + state));
      item.appendChild(document.createTextNode(STATE_TEXT[state]));
      legend.appendChild(item);
    }
  }

  function renderEngines() {
    const grid = $("engines");
    const list = status.engines;
    engines = new Map(list.map((e) => [e.id, e]));
    const large = list.length <= 64;
    grid.className = large ? "grid large" : "grid";
    while (grid.children.length > list.length) grid.lastChild.remove();
    while (grid.children.length < list.length) grid.appendChild(make("div", "cell"));
    list.forEach((engine, i) => {
      const cell = grid.children[i];
      const cls = "cell s-" + engine.state + (engine.id === selected ? " selected" : "");
      if (cell.className !== cls) cell.className = cls;
      const id = String(engine.id);
      if (cell.dataset.id !== id) {
        cell.dataset.id = id;
        cell.textContent = large ? id : "";
      }
    });
    if (selected !== null && !engines.has(selected)) selected = null;
    renderDetail();
    if (hovered !== null) showTip(hovered.id, hovered.x, hovered.y);
  }

  function engineLines(engine) {
    const running = engine.running === null ? "nothing"
      : engine.running + (engine.running === "run_task" && engine.tasks.length
        ? " (tasks " + engine.tasks.join(", ") + (engine.task_count > engine.tasks.length ? ", …" : "") + ")"
        : "");
    return [
      ["engine", engine.id],
      ["host", engine.host === null ? "–" : engine.host],
      ["pid", engine.pid === null ? "–" : engine.pid],
      ["MPI rank", engine.rank === null ? "–" : engine.rank],
      ["state", STATE_TEXT[engine.state] || engine.state],
      ["running", running],
      ["for", duration(since(engine))],
      ["queued behind it", engine.queue],
      ["tasks in flight", engine.task_count],
      ["properties version", engine.properties_version],
    ];
  }

  function renderDetail() {
    const table = $("engine-detail");
    const engine = selected === null ? null : engines.get(selected);
    table.hidden = !engine;
    if (!engine) return;
    table.textContent = "";
    for (const [name, value] of engineLines(engine)) {
      const row = make("tr");
      row.appendChild(make("th", null, name));
      row.appendChild(make("td", null, String(value)));
      table.appendChild(row);
    }
  }

  function showTip(id, x, y) {
    const tip = $("engine-tip");
    const engine = engines.get(id);
    if (!engine) { tip.hidden = true; return; }
    const what = engine.running === null ? "idle" : engine.running + " for " + duration(since(engine));
    tip.textContent = "engine " + engine.id + " · " + (engine.host || "?") + " · pid "
      + (engine.pid === null ? "?" : engine.pid) + " · " + what
      + (engine.queue ? " · " + engine.queue + " queued" : "");
    tip.style.left = (x + 12) + "px";
    tip.style.top = (y + 12) + "px";
    tip.hidden = false;
  }

  function cellId(event) {
    const cell = event.target.closest(".cell");
    return cell ? Number(cell.dataset.id) : null;
  }

  function watchGrid() {
    const grid = $("engines");
    grid.addEventListener("mousemove", (event) => {
      const id = cellId(event);
      if (id === null) { hovered = null; $("engine-tip").hidden = true; return; }
      hovered = { id: id, x: event.clientX, y: event.clientY };
      showTip(id, event.clientX, event.clientY);
    });
    grid.addEventListener("mouseleave", () => { hovered = null; $("engine-tip").hidden = true; });
    grid.addEventListener("click", (event) => {
      const id = cellId(event);
      if (id === null) return;
      selected = selected === id ? null : id;
      if (status) renderEngines();
    });
  }

  // -- throughput chart -----------------------------------------------------------------

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function renderChart() {
    const chart = $("chart");
    const counts = status.throughput.counts;
    const n = counts.length;
    // Drawn in the chart's own pixels, so that its text is not stretched.
    const W = Math.max(100, chart.clientWidth), H = 130, top = 14, bottom = 112, left = 0;
    chart.setAttribute("viewBox", "0 0 " + W + " " + H);
    const max = Math.max(1, ...counts);
    const width = (W - left) / n;
    let path = "";
    counts.forEach((count, i) => {
      if (!count) return;
      const x = left + i * width;
      const y = bottom - (bottom - top) * count / max;
      path += "M" + x.toFixed(2) + " " + bottom + "V" + y.toFixed(2) + "H" + (x + width).toFixed(2)
        + "V" + bottom + "Z";
    });
    chart.textContent = "";
    chart.appendChild(svg("line", { x1: 0, x2: W, y1: top, y2: top, class: "grid-line" }));
    chart.appendChild(svg("line", { x1: 0, x2: W, y1: bottom, y2: bottom, class: "grid-line" }));
    if (path) chart.appendChild(svg("path", { d: path, class: "bar" }));
    chart.appendChild(svg("text", { x: 4, y: top - 2, class: "axis" }, max + "/s"));
    chart.appendChild(svg("text", { x: 4, y: H - 4, class: "axis" }, "−" + Math.round(n / 60) + " min"));
    chart.appendChild(svg("text", { x: W - 4, y: H - 4, class: "axis", "text-anchor": "end" }, "now"));
    setText("chart-span", "(last " + Math.round(n / 60) + " minutes, one bar a second)");
  }

  // -- transfers and failures -----------------------------------------------------------

  function renderTransfers() {
    const table = $("transfers");
    const streams = status.transfers.streams;
    table.textContent = "";
    if (!streams.length) {
      table.appendChild(make("tr")).appendChild(make("td", "empty", "no transfers in flight"));
      return;
    }
    const head = make("tr");
    for (const name of ["direction", "size", "done", "held here", "rate"]) head.appendChild(make("th", null, name));
    table.appendChild(head);
    for (const s of streams) {
      const row = make("tr");
      row.appendChild(make("td", null, s.direction === "in" ? "arriving" : "leaving"));
      row.appendChild(make("td", "num", bytes(s.total)));
      row.appendChild(make("td", "num", s.total ? Math.floor(100 * s.done / s.total) + " %" : "–"));
      row.appendChild(make("td", "num", bytes(s.held)));
      row.appendChild(make("td", "num", s.rate === null ? "–" : bytes(s.rate) + "/s"));
      table.appendChild(row);
    }
  }

  function failureText(f) {
    if (f.type !== null) return f.message === null ? "" : f.message;
    return "Raised by the task's code. The exception and its traceback travel pickled ("
      + bytes(f.bytes) + ") and the controller never unpickles them; read them with "
      + "tc.get_task_result(" + f.taskid + ").";
  }

  function renderFailures() {
    const box = $("failures");
    const list = status.failures;
    const key = list.map((f) => f.taskid + "@" + f.completed).join(",");
    if (key === failuresKey) return;  // unchanged: keep what the user has opened
    failuresKey = key;
    const open = new Set([...box.querySelectorAll("details[open]")].map((d) => d.dataset.task));
    box.textContent = "";
    if (!list.length) {
      box.appendChild(make("div", "empty", "no failed tasks"));
      return;
    }
    for (const f of list) {
      const item = make("details", "failure");
      item.dataset.task = String(f.taskid);
      item.open = open.has(item.dataset.task);
      const what = f.type !== null ? f.type + ": " + (f.message || "").split("\n")[0] : "raised an exception";
      item.appendChild(make("summary", null, "task " + f.taskid + " · engine "
        + (f.engine === null ? "–" : f.engine) + " · " + clock(f.completed) + " · attempts "
        + f.attempts + " · " + what));
      item.appendChild(make("pre", null, failureText(f)));
      box.appendChild(item);
    }
  }

  // -- the feed -------------------------------------------------------------------------

  function render(next) {
    status = next;
    renderSummary();
    renderEngines();
    renderChart();
    renderTransfers();
    renderFailures();
  }

  function connected(up) {
    const node = $("connection");
    node.className = up ? "up" : "down";
    node.textContent = up ? "live" : "reconnecting…";
  }

  function listen() {
    const source = new EventSource("api/events" + query);
    source.onmessage = (event) => {
      connected(true);
      render(JSON.parse(event.data));
    };
    source.onerror = () => connected(false);
  }

  renderLegend();
  watchGrid();
  listen();
})();
