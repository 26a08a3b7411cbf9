// kubetasks dashboard: plain JavaScript over the JSON API, no build step.
// Every value from the API reaches the page through textContent or attributes set by el(): never as HTML.
"use strict";

const API = document.body.dataset.api;
const REFRESH_MS = 3000;
let timer = null;
const expanded = new Set();

// -- helpers -----------------------------------------------------------------------------------------------
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "checked" || key === "value" || key === "selected") node[key] = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function token() { return sessionStorage.getItem("kubetasks-token"); }

async function api(method, path, body) {
  const headers = {"Accept": "application/json"};
  const t = token();
  if (t) headers["Authorization"] = "Bearer " + t;
  if (method !== "GET") { headers["X-Requested-By"] = "kubetasks"; headers["Content-Type"] = "application/json"; }
  const response = await fetch(API + path, {method, headers, body: body === undefined ? undefined : JSON.stringify(body)});
  const data = await response.json().catch(() => ({}));
  if (response.status === 401) { showLogin(data.error); throw new Error("unauthenticated"); }
  if (!response.ok) {
    const e = data.error || {field: "", problem: response.statusText, fix: ""};
    throw new Error(`${e.field}: ${e.problem}${e.fix ? " (" + e.fix + ")" : ""}`);
  }
  return data;
}

function when(iso) { return iso ? new Date(iso).toLocaleString() : "–"; }
function secs(value) { return value === null || value === undefined ? "–" : value.toFixed(1) + " s"; }
function stateBadge(state) { return el("span", {class: "state state-" + state}, state); }
function flash(message, isError) {
  const box = document.getElementById("flash");
  if (box) { box.textContent = message; box.className = isError ? "notice error" : "notice"; }
}
async function act(label, fn) {
  try { const out = await fn(); flash(label + ": done"); await refresh(); return out; }
  catch (exc) { flash(label + ": " + exc.message, true); return null; }
}
function query(params) {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (Array.isArray(value)) value.forEach((v) => q.append(key, v));
    else if (value !== "" && value !== null && value !== undefined && value !== false) q.append(key, value);
  }
  const text = q.toString();
  return text ? "?" + text : "";
}

// -- login -------------------------------------------------------------------------------------------------
function showLogin(error) {
  stop();
  const input = el("input", {type: "password", id: "token-input", size: 50, placeholder: "bearer token"});
  main(el("h2", {}, "Sign in"),
       error ? el("p", {class: "error"}, error.problem) : null,
       el("p", {}, document.body.dataset.mode === "kubernetes"
         ? "Paste a Kubernetes token (e.g. from `kubectl create token`)." : "Paste the token printed at start."),
       el("form", {onsubmit: (ev) => { ev.preventDefault(); sessionStorage.setItem("kubetasks-token", input.value);
                                      route(); }}, input, " ", el("button", {type: "submit"}, "Sign in")));
}

function main(...children) {
  const m = document.getElementById("main");
  m.replaceChildren(el("div", {id: "flash"}), ...children);
}
function stop() { if (timer) { clearInterval(timer); timer = null; } }
let refresh = async () => {};

// -- System Tasks ------------------------------------------------------------------------------------------
const filters = {standalone: true, exclude_successful: true, state: "", actor: "", queue: "", search: "",
                 namespace: "", object: ""};

function toolbar() {
  const toggle = (id, key, label) => el("label", {}, el("input", {type: "checkbox", id, checked: filters[key],
    onchange: (ev) => { filters[key] = ev.target.checked; refresh(); }}), " " + label);
  const text = (key, placeholder) => el("input", {type: "text", id: "filter-" + key, placeholder, value: filters[key],
    onchange: (ev) => { filters[key] = ev.target.value.trim(); refresh(); }});
  const states = el("select", {id: "filter-state", onchange: (ev) => { filters.state = ev.target.value; refresh(); }},
    el("option", {value: ""}, "any state"),
    ...["queued", "running", "successful", "warning", "error", "cancelled"].map(
      (s) => el("option", {value: s, selected: filters.state === s}, s)));
  return el("div", {class: "toolbar"},
    toggle("toggle-standalone", "standalone", "Show only standalone tasks"),
    toggle("toggle-exclude-successful", "exclude_successful", "Exclude successful tasks"),
    states, text("actor", "actor"), text("queue", "queue"), text("namespace", "namespace"), text("search", "search"),
    el("span", {class: "muted", id: "live"}, "live"));
}

function scheduleRow(s) {
  const key = encodeURI(s.name);
  const buttons = [
    el("button", {class: "trigger", title: "Run now", onclick: () => act("trigger " + s.name,
      () => api("POST", `/schedules/${key}/trigger`))}, "▶ Run"),
    s.paused
      ? el("button", {class: "resume", title: "Resume", onclick: () => act("resume " + s.name,
          () => api("POST", `/schedules/${key}/resume`))}, "▶ Resume")
      : el("button", {class: "pause", title: "Pause", onclick: () => act("pause " + s.name,
          () => api("POST", `/schedules/${key}/pause`))}, "❙❙ Pause"),
    el("button", {class: "edit", title: "Edit cron", onclick: () => editSchedule(s)}, "✎ Edit"),
  ];
  return el("tr", {class: "schedule", "data-name": s.name},
    el("td", {}, s.name, s.owned_by_resource ? el("span", {class: "muted"}, " (Schedule resource)") : null),
    el("td", {}, s.actor), el("td", {class: "cron"}, s.cron + " " + s.time_zone),
    el("td", {}, s.paused ? "paused" : when(s.next_run)), el("td", {}, when(s.last_run)),
    el("td", {}, when(s.last_success)), el("td", {}, buttons));
}

function queueLimits(q) {
  const parts = [];
  if (q.concurrency_limit) parts.push(`${q.concurrency_limit} running`);
  if (q.concurrency_key) parts.push(`${q.key_concurrency_limit} per ${q.concurrency_key}`);
  if (q.rate_limit) parts.push(`${q.rate_limit} per ${q.rate_period} s`);
  return parts.join(", ") || "–";
}

function queueRow(q) {
  const name = encodeURIComponent(q.queue);
  const button = q.paused
    ? el("button", {class: "resume", title: "Resume", onclick: () => act("resume queue " + q.queue,
        () => api("POST", `/queues/${name}/resume`))}, "▶ Resume")
    : el("button", {class: "pause", title: "Pause", onclick: () => act("pause queue " + q.queue,
        () => api("POST", `/queues/${name}/pause`))}, "❙❙ Pause");
  return el("tr", {class: "queue", "data-name": q.queue}, el("td", {}, q.queue), el("td", {}, String(q.runnable)),
    el("td", {}, String(q.delayed)), el("td", {}, String(q.executing)), el("td", {}, q.paused ? "paused" : "active"),
    el("td", {}, queueLimits(q)), el("td", {}, String(q.held)), el("td", {}, button));
}

function editSchedule(s) {
  if (s.owned_by_resource) {
    flash(`${s.name} is owned by a Schedule resource: edit it with kubectl -n ${s.namespace} edit schedules.kubetasks.dev ` +
          s.name.split("/")[1], true);
    return;
  }
  const cron = prompt(`Cron for ${s.name}`, s.cron);
  if (cron === null) return;
  const tz = prompt(`Time zone for ${s.name}`, s.time_zone);
  if (tz === null) return;
  act("edit " + s.name, () => api("PATCH", `/schedules/${encodeURI(s.name)}`, {cron, time_zone: tz}));
}

function taskRow(t, columns) {
  const row = el("tr", {class: "task", "data-id": t.id, onclick: (ev) => {
    if (ev.target.closest("button, a")) return;
    if (expanded.has(t.id)) expanded.delete(t.id); else expanded.add(t.id);
    refresh();
  }},
    el("td", {}, "#" + t.id), el("td", {class: "actor"}, t.actor), el("td", {}, stateBadge(t.state), " ", t.reason),
    el("td", {}, t.object_ref ? el("a", {href: "#/object/" + encodeURIComponent(t.object_ref)}, t.object_ref)
                              : t.schedule_name || el("span", {class: "muted"}, "standalone")),
    el("td", {}, when(t.created_at)), el("td", {}, secs(t.duration)), el("td", {}, String(t.attempts)),
    el("td", {},
      ["queued", "running"].includes(t.state) ? null : el("button", {class: "retry", title: "Retry",
        onclick: () => act("retry #" + t.id, () => api("POST", `/tasks/${t.id}/retry`))}, "↻ Retry"),
      ["queued", "running"].includes(t.state) ? el("button", {class: "cancel", title: "Cancel",
        onclick: () => act("cancel #" + t.id, () => api("POST", `/tasks/${t.id}/cancel`))}, "✕ Cancel") : null));
  const rows = [row];
  if (expanded.has(t.id)) {
    const cell = el("td", {colspan: columns}, "Loading…");
    rows.push(el("tr", {class: "detail", "data-detail": t.id}, cell));
    api("GET", `/tasks/${t.id}`).then((d) => cell.replaceChildren(taskDetail(d))).catch((e) => {
      cell.textContent = e.message; });
  }
  return rows;
}

function taskDetail(d) {
  const current = d.attempt_log.filter((a) => a.current);
  const previous = d.attempt_log.filter((a) => !a.current);
  const attempt = (a) => el("div", {class: "attempt"},
    el("div", {}, `Attempt ${a.attempt}: `, stateBadge(a.state), ` ${a.reason} · ${when(a.started_at)} · ${secs(a.duration)}`,
       a.worker ? ` · ${a.worker}` : ""),
    a.error ? el("pre", {class: "log error"}, a.error) : null,
    el("pre", {class: "log"}, a.log || "(no log)"));
  return el("div", {},
    el("div", {}, `queue ${d.queue} · priority ${d.priority} · eta ${when(d.eta)} · started ${when(d.started_at)} · ` +
       `finished ${when(d.finished_at)} · duration ${secs(d.duration)}`, d.description ? ` · ${d.description}` : ""),
    el("div", {}, "args: ", el("code", {}, JSON.stringify(d.args))),
    d.result !== null ? el("div", {}, "result: ", el("code", {}, JSON.stringify(d.result))) : null,
    d.error ? el("div", {class: "error"}, "error: " + d.error) : null,
    el("h3", {}, "Current execution"),
    current.length ? current.map(attempt) : el("p", {class: "muted"}, d.in_flight ? "running now" : "no log yet"),
    el("h3", {}, "Previous executions"),
    previous.length ? previous.map(attempt) : el("p", {class: "muted"}, "none"));
}

function taskTable(items) {
  const head = ["ID", "Actor", "State", "Object / schedule", "Created", "Duration", "Attempts", ""];
  return el("table", {id: "tasks"}, el("thead", {}, el("tr", {}, head.map((h) => el("th", {}, h)))),
    el("tbody", {}, items.length ? items.map((t) => taskRow(t, head.length))
                                 : el("tr", {}, el("td", {colspan: head.length, class: "muted"}, "no tasks"))));
}

async function tasksPage(objectRef) {
  const bar = objectRef ? el("p", {}, "Object ", el("code", {}, objectRef), " · ", el("a", {href: "#/tasks"}, "all tasks"))
                        : toolbar();
  const scheduleBox = el("div", {id: "schedules-box"});
  const taskBox = el("div", {id: "tasks-box"});
  let cursor = null;
  main(el("h2", {}, objectRef ? "Object" : "System Tasks"), bar, objectRef ? null : el("h2", {}, "Schedules"),
       scheduleBox, el("h2", {}, "Tasks"), taskBox);
  refresh = async () => {
    const params = objectRef ? {object: objectRef, limit: 100} : {
      standalone: filters.standalone, exclude_successful: filters.exclude_successful, state: filters.state,
      actor: filters.actor, queue: filters.queue, namespace: filters.namespace, search: filters.search, before: cursor, limit: 50};
    try {
      const [tasks, scheds] = await Promise.all([api("GET", "/tasks" + query(params)),
        objectRef ? Promise.resolve({items: []}) : api("GET", "/schedules" + query({namespace: filters.namespace}))]);
      if (!objectRef) {
        scheduleBox.replaceChildren(el("table", {id: "schedules"}, el("thead", {}, el("tr", {},
          ["Schedule", "Actor", "Cron", "Next run", "Last run", "Last success", ""].map((h) => el("th", {}, h)))),
          el("tbody", {}, scheds.items.length ? scheds.items.map(scheduleRow)
                                              : el("tr", {}, el("td", {colspan: 7, class: "muted"}, "no schedules")))));
      }
      taskBox.replaceChildren(taskTable(tasks.items),
        el("p", {}, cursor ? el("button", {id: "newest", onclick: () => { cursor = null; refresh(); }}, "newest") : null,
          tasks.next ? el("button", {id: "older", onclick: () => { cursor = tasks.next; refresh(); }}, "older…") : null));
      const live = document.getElementById("live");
      if (live) live.textContent = "live · " + new Date().toLocaleTimeString();
    } catch (exc) { if (exc.message !== "unauthenticated") flash(exc.message, true); }
  };
  await refresh();
  timer = setInterval(() => refresh(), REFRESH_MS);
}

// -- Overview ----------------------------------------------------------------------------------------------
function chart(series) {
  const width = 720, height = 180, pad = 28;
  const now = Date.now();
  const buckets = [];
  for (let i = 59; i >= 0; i--) buckets.push({t: Math.floor((now - i * 60000) / 60000) * 60000, ok: 0, failed: 0});
  for (const point of series) {
    const t = Math.floor(new Date(point.minute).getTime() / 60000) * 60000;
    const b = buckets.find((x) => x.t === t);
    if (b) { b.ok = point.ok; b.failed = point.failed; }
  }
  const max = Math.max(1, ...buckets.map((b) => b.ok + b.failed));
  const x = (i) => pad + (i * (width - 2 * pad)) / 59;
  const y = (v) => height - pad - (v * (height - 2 * pad)) / max;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "chart"); svg.setAttribute("id", "throughput-chart");
  svg.setAttribute("width", width); svg.setAttribute("height", height);
  const line = (key, color) => {
    const path = document.createElementNS(ns, "polyline");
    path.setAttribute("points", buckets.map((b, i) => `${x(i)},${y(b[key])}`).join(" "));
    path.setAttribute("fill", "none"); path.setAttribute("stroke", color); path.setAttribute("stroke-width", "2");
    svg.append(path);
  };
  const text = (tx, ty, value) => {
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", tx); t.setAttribute("y", ty); t.setAttribute("font-size", "11"); t.textContent = value;
    svg.append(t);
  };
  line("ok", "#2e9e4f"); line("failed", "#d33");
  text(2, pad, String(max)); text(2, height - pad, "0"); text(pad, height - 6, "−60 min"); text(width - pad - 20, height - 6, "now");
  text(width - 170, 14, "finished ok (green) / failed (red) per minute");
  return svg;
}

async function overviewPage() {
  const box = el("div", {id: "overview"});
  main(el("h2", {}, "Overview"), box);
  refresh = async () => {
    try {
      const o = await api("GET", "/overview");
      const sum = (rows, states) => rows.filter((r) => states.includes(r.state)).reduce((a, r) => a + r.count, 0);
      const hourOk = sum(o.last_hour, ["successful", "warning"]), hourFailed = sum(o.last_hour, ["error", "cancelled"]);
      const card = (label, value, id) => el("div", {class: "card", id}, el("b", {}, String(value)), label);
      const byActor = {};
      for (const r of [...o.live, ...o.last_day]) {
        byActor[r.actor] = byActor[r.actor] || {};
        byActor[r.actor][r.state] = (byActor[r.actor][r.state] || 0) + r.count;
      }
      box.replaceChildren(
        el("div", {class: "cards"}, card("queued", sum(o.live, ["queued"]), "card-queued"),
           card("running", sum(o.live, ["running"]), "card-running"),
           card("finished, last hour", hourOk + hourFailed, "card-hour"),
           card("failure rate, last hour", hourOk + hourFailed ? Math.round((100 * hourFailed) / (hourOk + hourFailed)) + " %" : "–",
                "card-failure"),
           card("tasks stored (estimate)", o.table_estimate, "card-estimate")),
        el("h2", {}, "Throughput and failures, last hour"), chart(o.throughput),
        el("h2", {}, "By actor and state (live, and finished in the last day)"),
        el("table", {id: "by-actor"}, el("thead", {}, el("tr", {}, el("th", {}, "Actor"), o.states.map((s) => el("th", {}, s)))),
          el("tbody", {}, Object.keys(byActor).sort().map((a) => el("tr", {}, el("td", {}, a),
            o.states.map((s) => el("td", {}, String(byActor[a][s] || 0))))))),
        el("h2", {}, "Queue depth"),
        el("table", {id: "queues"}, el("thead", {}, el("tr", {}, ["Queue", "Runnable", "Delayed", "Executing", "State",
                                                                  "Limits", "Held", ""].map((h) => el("th", {}, h)))),
          el("tbody", {}, o.queues.map(queueRow))),
        el("p", {class: "muted"}, "as of " + when(o.at)));
    } catch (exc) { if (exc.message !== "unauthenticated") flash(exc.message, true); }
  };
  await refresh();
  timer = setInterval(() => refresh(), REFRESH_MS * 2);
}

// -- Task manager ------------------------------------------------------------------------------------------
function field(name, prop, required) {
  const type = prop.type || (prop.anyOf ? (prop.anyOf.find((p) => p.type && p.type !== "null") || {}).type : undefined);
  const id = "arg-" + name;
  let input;
  if (type === "boolean") input = el("input", {type: "checkbox", id, "data-arg": name, "data-type": type, checked: prop.default === true});
  else if (type === "integer" || type === "number") input = el("input", {type: "number", id, "data-arg": name, "data-type": type,
    step: type === "integer" ? "1" : "any", value: prop.default ?? "", required});
  else if (type === "string") input = el("input", {type: "text", id, "data-arg": name, "data-type": type, value: prop.default ?? "", required});
  else input = el("textarea", {id, "data-arg": name, "data-type": "json", rows: 2, placeholder: "JSON"},
    prop.default !== undefined ? JSON.stringify(prop.default) : "");
  return [el("label", {for: id}, name + (required ? " *" : ""), el("div", {class: "muted"}, type || "JSON")), input];
}

function readArgs(form) {
  const args = {};
  for (const input of form.querySelectorAll("[data-arg]")) {
    const name = input.dataset.arg, type = input.dataset.type;
    if (type === "boolean") args[name] = input.checked;
    else if (input.value === "") continue;
    else if (type === "integer" || type === "number") args[name] = Number(input.value);
    else if (type === "json") args[name] = JSON.parse(input.value);
    else args[name] = input.value;
  }
  return args;
}

async function managerPage() {
  const actors = (await api("GET", "/actors")).items;
  const formBox = el("div", {id: "form-box"});
  const result = el("div", {id: "result"});
  const select = el("select", {id: "actor-select", onchange: () => draw()},
    el("option", {value: ""}, "pick an actor…"), actors.map((a) => el("option", {value: a.name}, a.name)));
  main(el("h2", {}, "Task manager"), el("p", {}, "Actor: ", select), formBox, result);
  function draw() {
    const actor = actors.find((a) => a.name === select.value);
    if (!actor) { formBox.replaceChildren(); return; }
    const schema = actor.args_schema, required = schema.required || [];
    const props = schema.properties || {};
    const when_ = el("select", {id: "run-when", onchange: () => {
      atRow.hidden = when_.value !== "at"; cronRows.forEach((r) => { r.hidden = when_.value !== "cron"; }); }},
      el("option", {value: "now"}, "run now"), el("option", {value: "at"}, "at a time"), el("option", {value: "cron"}, "on a cron"));
    const atRow = el("div", {hidden: true}, el("input", {type: "datetime-local", id: "run-at"}));
    const cronRows = [el("div", {hidden: true}, el("input", {type: "text", id: "run-cron", placeholder: "*/5 * * * *"})),
                      el("div", {hidden: true}, el("input", {type: "text", id: "run-name", placeholder: "namespace/name"}))];
    const form = el("form", {class: "grid", id: "task-form", onsubmit: (ev) => { ev.preventDefault(); submit(actor, form); }},
      actor.doc ? [el("span", {}, "About"), el("span", {class: "muted"}, actor.doc)] : null,
      Object.entries(props).map(([name, prop]) => field(name, prop, required.includes(name))),
      schema.additionalProperties === true ? field("extra (JSON object)", {}, false) : null,
      el("label", {for: "description"}, "Description"), el("input", {type: "text", id: "description", maxlength: 1000}),
      el("label", {for: "run-when"}, "When"), el("div", {}, when_, atRow, ...cronRows),
      el("span", {}), el("button", {type: "submit", id: "submit-task"}, "Create"));
    formBox.replaceChildren(form);
  }
  async function submit(actor, form) {
    let args;
    try {
      args = readArgs(form);
      if (args["extra (JSON object)"] !== undefined) { Object.assign(args, args["extra (JSON object)"]); delete args["extra (JSON object)"]; }
    } catch (exc) { flash("args: " + exc.message, true); return; }
    const how = document.getElementById("run-when").value;
    try {
      if (how === "cron") {
        const s = await api("POST", "/schedules", {name: document.getElementById("run-name").value,
          actor: actor.name, args, cron: document.getElementById("run-cron").value});
        result.replaceChildren(el("p", {}, "Schedule ", el("b", {}, s.name), " created; next run " + when(s.next_run)));
        return;
      }
      const body = {actor: actor.name, args, description: document.getElementById("description").value || null};
      if (how === "at") body.eta = new Date(document.getElementById("run-at").value).toISOString();
      const t = await api("POST", "/tasks", body);
      watch(t.id);
    } catch (exc) { flash(exc.message, true); }
  }
  function watch(id) {
    stop();
    refresh = async () => {
      const d = await api("GET", `/tasks/${id}`);
      result.replaceChildren(el("p", {id: "created-task", "data-state": d.state}, `Task #${id}: `, stateBadge(d.state), " " + d.reason),
                             taskDetail(d));
      if (!["queued", "running"].includes(d.state)) stop();
    };
    refresh();
    timer = setInterval(() => refresh(), 1000);
  }
}

// -- Runbook -----------------------------------------------------------------------------------------------
function runbookPage() {
  const action = el("select", {id: "rb-action"}, el("option", {value: "delete"}, "delete finished tasks by state/actor"),
    el("option", {value: "retry"}, "retry all failed matching"), el("option", {value: "flush"}, "flush a queue (waiting tasks)"));
  const state = el("input", {type: "text", id: "rb-state", placeholder: "error,cancelled"});
  const actor = el("input", {type: "text", id: "rb-actor", placeholder: "actor (optional)"});
  const queueName = el("input", {type: "text", id: "rb-queue", placeholder: "queue"});
  const out = el("div", {id: "rb-result"});
  const body = (dry) => {
    const list = (v) => v.split(",").map((s) => s.trim()).filter(Boolean);
    const b = {action: action.value, dry_run: dry, filter: {state: list(state.value), actor: list(actor.value)}};
    if (action.value === "flush") b.queue = queueName.value.trim(); else if (queueName.value.trim()) b.filter.queue = [queueName.value.trim()];
    return b;
  };
  const run = async (dry) => {
    try {
      const r = await api("POST", "/tasks/bulk", body(dry));
      out.replaceChildren(el("p", {id: dry ? "rb-preview" : "rb-done"}, dry ? `${r.count} task(s) would be touched by ${r.action}`
        : `${r.action}: ${r.count} task(s)`), dry && r.count ? el("button", {id: "rb-execute", onclick: () => {
          if (confirm(`${r.action} ${r.count} task(s)?`)) run(false); }}, `Execute ${r.action}`) : null);
    } catch (exc) { flash(exc.message, true); }
  };
  main(el("h2", {}, "Runbook"), el("form", {class: "grid", onsubmit: (ev) => { ev.preventDefault(); run(true); }},
    el("label", {}, "Action"), action, el("label", {}, "States"), state, el("label", {}, "Actor"), actor,
    el("label", {}, "Queue"), queueName, el("span", {}), el("button", {type: "submit", id: "rb-preview-button"}, "Preview")), out);
  refresh = async () => {};
}

// -- routing -----------------------------------------------------------------------------------------------
async function route() {
  stop();
  const hash = location.hash || "#/tasks";
  if (hash.startsWith("#token=")) {
    sessionStorage.setItem("kubetasks-token", decodeURIComponent(hash.slice(7)));
    history.replaceState(null, "", location.pathname + "#/tasks");
    return route();
  }
  if (!token() && document.body.dataset.mode !== "proxy") {
    const who = await fetch(API + "/whoami").then((r) => r.ok ? r.json() : null).catch(() => null);
    if (!who) { showLogin(); return; }
  }
  for (const a of document.querySelectorAll("header nav a")) a.classList.toggle("active", hash.startsWith(a.getAttribute("href")));
  try {
    const who = await api("GET", "/whoami");
    document.getElementById("whoami").textContent = who.user;
    if (hash.startsWith("#/object/")) await tasksPage(decodeURIComponent(hash.slice(9)));
    else if (hash.startsWith("#/overview")) await overviewPage();
    else if (hash.startsWith("#/manager")) await managerPage();
    else if (hash.startsWith("#/runbook")) runbookPage();
    else await tasksPage(null);
  } catch (exc) { if (exc.message !== "unauthenticated") flash(exc.message, true); }
}

window.addEventListener("hashchange", route);
route();
