// The live view of a chatbooth cluster: one EventSource (/events) brings the supervisor's
// events the moment they happen and every node's fields every 100 ms; the buttons POST the
// REPL's own commands to /api/command. No library: this file is the whole client.
"use strict";

const state = {
  nodes: [],         // node ids, in file order
  actions: false,    // whether this supervisor takes commands from the page
  lastNodes: null,   // the last `nodes` message
  receivedAt: 0,     // when it arrived (Date.now())
  lastSeq: 0,        // the last event shown: one already shown (hello and push) is dropped
  groups: {},        // the partition form's choice per node, kept when the nodes change
};
// What tests and curious people can read: how long each update took to reach the screen.
window.chatbooth = { latencies: [], events: [], commands: [], state };

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, text = null) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== null) node.textContent = text;
  return node;
}

// ---- time from an event's timestamp to the screen -------------------------------------------

function recordLag(kind, atMs) {
  requestAnimationFrame(() => {
    const lag = Date.now() - atMs;
    const list = window.chatbooth.latencies;
    list.push({ kind, lag });
    if (list.length > 2000) list.splice(0, list.length - 2000);
  });
}

function showLag() {
  const recent = window.chatbooth.latencies.slice(-200).map((x) => x.lag).sort((a, b) => a - b);
  if (!recent.length) return;
  const p50 = recent[Math.floor(recent.length / 2)];
  const max = recent[recent.length - 1];
  $("screen-lag").textContent =
    `updates reach this screen in ${p50.toFixed(0)} ms (median), ${max.toFixed(0)} ms at most`;
}

// ---- nodes ----------------------------------------------------------------------------------

const FIELDS = [
  ["role", "role"], ["term", "term"], ["leader", "leader"], ["commit", "commit"],
  ["applied", "applied"], ["last", "last index"], ["snapshot", "snapshot"], ["lag", "lag"],
  ["contact", "last contact"], ["changes", "leader changes"], ["member", "member"],
  ["network", "network"], ["pid", "pid"], ["exit", "last exit"],
];

function buildNodes(ids) {
  const box = $("nodes");
  box.replaceChildren();
  for (const id of ids) {
    const card = el("div", { class: "node", "data-node": id, id: `node-${id}` });
    const title = el("div", { class: "title" });
    title.append(el("span", { class: "id" }, id), el("span", { class: "process" }, "?"));
    const dl = el("dl");
    for (const [field, label] of FIELDS) {
      dl.append(el("dt", {}, label), el("dd", { "data-field": field }, "–"));
    }
    const stale = el("div", { class: "stale" });
    const actions = el("div", { class: "actions" });
    for (const verb of ["kill", "stop", "start", "pause", "resume", "isolate"]) {
      const button = el("button", { "data-command": verb, "data-node": id }, verb);
      button.addEventListener("click", () => run(`${verb} ${id}`));
      actions.append(button);
    }
    const ms = el("input", { class: "ms", type: "number", min: "0", value: "200",
                             "aria-label": `latency for ${id}` });
    const slow = el("button", { "data-command": "slow", "data-node": id }, "slow");
    slow.addEventListener("click", () => run(`slow ${id} ${Number(ms.value) || 0}`));
    actions.append(slow, ms, el("span", {}, "ms"));
    card.append(title, dl, stale, actions);
    box.append(card);
  }
  const pickers = $("group-pickers");
  pickers.replaceChildren();
  ids.forEach((id, i) => {
    const label = el("label", {}, `${id} `);
    const select = el("select", { "data-group-of": id });
    for (const g of [1, 2, 3]) select.append(el("option", { value: String(g) }, String(g)));
    select.value = state.groups[id] || (i < Math.ceil(ids.length / 2) ? "1" : "2");
    select.addEventListener("change", () => { state.groups[id] = select.value; });
    label.append(select);
    pickers.append(label);
  });
}

function show(value, unit = "") {
  return value === null || value === undefined || value === "" ? "–" : `${value}${unit}`;
}

function contactText(node) {
  const ms = node.leader_contact_ms;
  if (ms === null || ms === undefined) return "–";
  if (ms < 0) return "never";
  if (ms === 0 && node.role === "leader") return "(leads)";
  return ms < 1000 ? `${ms} ms ago` : `${(ms / 1000).toFixed(1)} s ago`;
}

function updateNode(node) {
  const card = $(`node-${node.id}`);
  if (!card) return false;
  const processState = node.process;
  card.className = `node ${processState === "up" ? (node.role || "unknown") : processState}`;
  card.dataset.role = node.role || "";
  card.dataset.process = processState;
  card.dataset.term = node.term === null ? "" : String(node.term);
  card.querySelector(".process").textContent = processState;
  const network = [];
  if (node.group !== null) network.push(`group ${node.group}`);
  if (node.slow_ms) network.push(`+${node.slow_ms} ms`);
  const values = {
    role: show(node.role), term: show(node.term), leader: show(node.leader),
    commit: show(node.commit), applied: show(node.applied), last: show(node.last),
    snapshot: show(node.snapshot), lag: show(node.lag), contact: contactText(node),
    changes: show(node.leader_changes), member: show(node.member),
    network: network.length ? network.join(", ") : "whole", pid: show(node.pid),
    exit: show(node.last_exit),
  };
  for (const [field, text] of Object.entries(values)) {
    const dd = card.querySelector(`[data-field="${field}"]`);
    if (dd.textContent !== text) dd.textContent = text;
  }
  let note = "";
  if (node.stale) note = `no answer for ${show(node.age_s, " s")}: fields as last seen`;
  else if (!node.answered && processState === "up") note = node.error || "no answer";
  card.querySelector(".stale").textContent = note;
  for (const button of card.querySelectorAll("button")) button.disabled = !state.actions;
  return true;
}

function enableForm() {
  for (const id of ["partition-button", "heal-button"]) $(id).disabled = !state.actions;
}

function buildLinks(ids) {
  const header = el("tr");
  header.append(el("th", {}, "from \\ to"), ...ids.map((id) => el("th", {}, id)));
  const rows = [header];
  for (const source of ids) {
    const row = el("tr");
    row.append(el("th", {}, source));
    for (const target of ids) {
      const cell = el("td", { class: "self", "data-link": `${source}>${target}` }, "·");
      row.append(cell);
    }
    rows.push(row);
  }
  $("links").replaceChildren(...rows);
}

function updateLinks(links, ids) {
  const byPair = new Map(links.map((l) => [`${l.source}>${l.target}`, l]));
  for (const source of ids) {
    for (const target of ids) {
      if (source === target) continue;
      const cell = document.querySelector(`td[data-link="${source}>${target}"]`);
      if (!cell) continue;
      const link = byPair.get(`${source}>${target}`);
      let cls = "self", text = "direct";  // no proxy: nodes dial each other
      if (link && link.blocked) { cls = "cut"; text = "cut"; }
      else if (link && link.delay_ms > 0) { cls = "slowed"; text = `+${link.delay_ms} ms`; }
      else if (link) { cls = "ok"; text = "ok"; }
      if (cell.textContent !== text) cell.textContent = text;
      if (cell.className !== cls) cell.className = cls;
    }
  }
}

function updateChart(rate) {
  const svg = $("rate-chart");
  const max = Math.max(10, ...rate);
  const width = 600 / rate.length;
  const bars = rate.map((value, i) => {
    const h = (value / max) * 130;
    const rect = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    rect.setAttribute("x", String(i * width + 0.5));
    rect.setAttribute("y", String(140 - h));
    rect.setAttribute("width", String(Math.max(1, width - 1)));
    rect.setAttribute("height", String(h));
    const tip = document.createElementNS("http://www.w3.org/2000/svg", "title");
    tip.textContent = `${value} entries/s, ${rate.length - i} s ago`;
    rect.append(tip);
    return rect;
  });
  svg.replaceChildren(...bars);
  $("rate-max").textContent = `top: ${max}/s`;
  $("rate-now").textContent = rate.length ? `(last second: ${rate[rate.length - 1]})` : "";
}

function onNodes(message) {
  const ids = message.nodes.map((n) => n.id);
  if (ids.join() !== state.nodes.join()) {
    state.nodes = ids;
    buildNodes(ids);
    buildLinks(ids);
  }
  message.nodes.forEach(updateNode);
  updateLinks(message.links, ids);
  updateChart(message.rate);
  $("leader").textContent = message.leader || "none known to a majority";
  $("partition").textContent = message.partition ? `partition ${message.partition}` : "";
  state.lastNodes = message;
  state.receivedAt = Date.now();
  recordLag("nodes", message.at_ms);
}

// ---- events ---------------------------------------------------------------------------------

function addEvent(event, live) {
  if (event.seq <= state.lastSeq) return;
  state.lastSeq = event.seq;
  const item = el("li", { class: event.kind, "data-kind": event.kind });
  const time = new Date(event.at_ms);
  item.append(
    el("span", { class: "time" }, time.toLocaleTimeString([], { hour12: false }) +
      "." + String(time.getMilliseconds()).padStart(3, "0")),
    el("span", { class: "kind" }, event.kind),
    el("span", { class: "text" }, event.text),
  );
  const list = $("events");
  list.prepend(item);
  while (list.children.length > 300) list.lastChild.remove();
  const seen = window.chatbooth.events;
  seen.push(event);
  if (seen.length > 2000) seen.splice(0, seen.length - 2000);
  if (live) recordLag(`event:${event.kind}`, event.at_ms);
}

// ---- commands -------------------------------------------------------------------------------

async function run(command) {
  const box = $("last-command");
  box.className = "";
  box.textContent = `${command}\n…`;
  let text, ok = false;
  try {
    const response = await fetch("/api/command", {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Chatbooth": "1" },
      body: JSON.stringify({ command }),
      credentials: "same-origin",
    });
    const body = await response.json();
    ok = Boolean(body.ok);
    text = `${body.command || command}\n${body.output || body.error || ""}`;
  } catch (error) {
    text = `${command}\nfailed: ${error}`;
  }
  box.textContent = text;
  box.className = ok ? "" : "failed";
  window.chatbooth.commands.push({ command, ok, text });
}

function groupsCommand() {
  const groups = new Map();
  for (const select of document.querySelectorAll("[data-group-of]")) {
    const g = select.value;
    if (!groups.has(g)) groups.set(g, []);
    groups.get(g).push(select.dataset.groupOf);
  }
  const ordered = [...groups.keys()].sort().map((g) => groups.get(g).join(","));
  return `partition ${ordered.join(" | ")}`;
}

// ---- the stream -----------------------------------------------------------------------------

function connect() {
  const status = $("connection");
  const source = new EventSource("/events");
  source.onmessage = (message) => {
    const data = JSON.parse(message.data);
    if (data.type === "hello") {
      $("cluster-name").textContent = data.cluster;
      state.actions = data.actions;
      state.nodes = data.nodes;
      buildNodes(data.nodes);
      buildLinks(data.nodes);
      enableForm();
      $("events").replaceChildren();
      state.lastSeq = 0;
      data.events.forEach((e) => addEvent(e, false));
      status.textContent = "live";
      status.className = "live";
    } else if (data.type === "event") {
      addEvent(data, true);
    } else if (data.type === "nodes") {
      onNodes(data);
    } else if (data.type === "bye") {
      source.close();
      gone("supervisor gone: it stopped");
    }
  };
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) gone("supervisor gone");
    else { status.textContent = "supervisor gone (trying again…)"; status.className = "gone"; }
  };
}

function gone(text) {
  const status = $("connection");
  status.textContent = text;
  status.className = "gone";
  for (const button of document.querySelectorAll("button")) button.disabled = true;
}

setInterval(() => {
  showLag();
  if (state.receivedAt) {
    const age = (Date.now() - state.receivedAt) / 1000;
    $("freshness").textContent = age > 1 ? `node data is ${age.toFixed(1)} s old` : "";
  }
}, 500);

document.addEventListener("DOMContentLoaded", () => {
  $("partition-button").addEventListener("click", () => run(groupsCommand()));
  $("heal-button").addEventListener("click", () => run("heal"));
  connect();
});
