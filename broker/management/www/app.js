// Leveret's management UI: one page, no build step, no library. Every view is drawn from
// the HTTP API (/api/*) with the credentials given at login (kept in sessionStorage, so
// they last as long as the tab). Elements are built with h() and text nodes, never from
// HTML strings: names of queues, users and vhosts come from clients.
"use strict";

const SAMPLE_MS = 5000;          // the node samples rates every 5 s; polling faster shows nothing new
// The charts' ranges, as RabbitMQ's UI offers them: the node keeps 10 minutes of 5 s samples
// and an hour of 60 s ones, and answers them as `samples` (?msg_rates_age=&msg_rates_incr=).
const RANGES = [
  { key: "60", label: "Last minute", age: 60, incr: 5 },
  { key: "600", label: "Last ten minutes", age: 600, incr: 5 },
  { key: "3600", label: "Last hour", age: 3600, incr: 60 },
];

let credentials = sessionStorage.getItem("leveret-credentials");
let refreshTimer = null;
let shownRoute = 0;               // which route() call may still draw: only the latest
let chartRange = RANGES.find(r => r.key === sessionStorage.getItem("leveret-range")) || RANGES[1];

// ---------------------------------------------------------------------------- helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (value === true) el.setAttribute(key, "");
    else if (value !== false && value !== null && value !== undefined) el.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function enc(name) { return encodeURIComponent(name); }

class ApiError extends Error {
  constructor(status, body) {
    super(body && body.reason ? `${status}: ${body.reason}` : `HTTP ${status}`);
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: "Basic " + credentials };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  // credentials "omit": the Authorization header is ours; with the browser's own credentials
  // included, a 401 (which carries WWW-Authenticate, as RabbitMQ's does) would open the
  // browser's login dialog instead of coming back here.
  const resp = await fetch("/api" + path, {
    method, headers, credentials: "omit", body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await resp.text();
  const data = text ? JSON.parse(text) : null;
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

function flash(text, kind) {
  const box = document.getElementById("flash");
  box.replaceChildren(h("div", { class: kind || "ok" }, text));
  if (kind !== "error") setTimeout(() => box.replaceChildren(), 4000);
}

function fmt(value) {
  if (value === null || value === undefined || value === "") return "";
  if (typeof value === "number") return Number.isInteger(value) ? value.toLocaleString("en") : value.toFixed(1);
  if (Array.isArray(value)) return value.join(", ");
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function rate(obj, key) {
  const details = obj && obj[key + "_details"];
  return details ? details.rate : 0;
}

// A table: columns are [heading, item => cell content, {num: true}?].
function table(items, columns, empty) {
  if (!items.length) return h("p", { class: "empty" }, empty || "Nothing here.");
  return h("table", {},
    h("thead", {}, h("tr", {}, columns.map(([title]) => h("th", {}, title)))),
    h("tbody", {}, items.map(item => h("tr", {}, columns.map(([, cell, opts]) => {
      const value = cell(item);
      return h("td", { class: opts && opts.num ? "num" : null }, value instanceof Node ? value : fmt(value));
    })))));
}

// A form whose fields are [name, label, {type, options, value, placeholder}]; submit(values) runs on submit.
function form(fields, buttonText, submit, id) {
  const el = h("form", { class: "inline", id },
    fields.map(([name, label, opts]) => {
      opts = opts || {};
      let input;
      if (opts.options) input = h("select", { name }, opts.options.map(o => h("option", { value: o, selected: o === opts.value }, o)));
      else if (opts.type === "textarea") input = h("textarea", { name, placeholder: opts.placeholder }, opts.value || "");
      else input = h("input", { name, type: opts.type || "text", value: opts.value, placeholder: opts.placeholder });
      return h("label", {}, label, input);
    }),
    h("button", { type: "submit" }, buttonText));
  el.addEventListener("submit", async event => {
    event.preventDefault();
    const values = Object.fromEntries(new FormData(el).entries());
    try {
      await submit(values);
    } catch (err) {
      flash(err.message, "error");
    }
  });
  return el;
}

function jsonField(text, what) {
  if (!text || !text.trim()) return {};
  try { return JSON.parse(text); } catch (err) { throw new Error(`${what} is not JSON: ${err.message}`); }
}

async function confirmThen(question, action, done) {
  if (!window.confirm(question)) return;
  try {
    await action();
    flash(done);
    route();
  } catch (err) {
    flash(err.message, "error");
  }
}

async function vhostNames() {
  return (await api("GET", "/vhosts")).map(v => v.name);
}

// ---------------------------------------------------------------------------- login

function showLogin(message) {
  document.getElementById("nav").hidden = true;
  document.getElementById("logout").hidden = true;
  document.getElementById("who").textContent = "";
  const loginForm = h("form", { class: "login", id: "login" },
    h("h1", {}, "Log in"),
    h("label", {}, "Username ", h("input", { name: "username", id: "username", autocomplete: "username" })),
    h("label", {}, "Password ", h("input", { name: "password", id: "password", type: "password",
                                             autocomplete: "current-password" })),
    h("button", { type: "submit", id: "login-button" }, "Log in"),
    message ? h("p", { class: "alarm" }, message) : null);
  loginForm.addEventListener("submit", async event => {
    event.preventDefault();
    const values = new FormData(loginForm);
    credentials = btoa(unescape(encodeURIComponent(`${values.get("username")}:${values.get("password")}`)));
    try {
      await api("GET", "/whoami");
      sessionStorage.setItem("leveret-credentials", credentials);
      route();
    } catch (err) {
      credentials = null;
      showLogin(err.status === 401 ? "Login failed" : err.message);
    }
  });
  document.getElementById("main").replaceChildren(loginForm);
}

function logout() {
  credentials = null;
  sessionStorage.removeItem("leveret-credentials");
  showLogin();
}

// ---------------------------------------------------------------------------- pages

const pages = {};

// Overview: totals, listeners, and the message rates and queued messages charted from the
// node's history of the cluster's queues (the chosen range, up to the last hour).
pages.overview = async () => {
  const o = await api("GET", "/overview" + rangeQuery());
  const stats = o.message_stats || {};
  const totals = o.queue_totals || {};
  const ot = o.object_totals || {};
  return [
    h("h1", {}, "Overview"),
    h("p", {}, `Cluster ${o.cluster_name} · node ${o.node} · ${o.product_name} ${o.product_version} ` +
               `(RabbitMQ ${o.rabbitmq_version} API)`),
    charts(stats, totals),
    h("h2", {}, "Totals"),
    table([ot], [["Connections", x => x.connections, { num: true }], ["Channels", x => x.channels, { num: true }],
                 ["Exchanges", x => x.exchanges, { num: true }], ["Queues", x => x.queues, { num: true }],
                 ["Consumers", x => x.consumers, { num: true }],
                 ["Ready", () => totals.messages_ready, { num: true }],
                 ["Unacked", () => totals.messages_unacknowledged, { num: true }],
                 ["Total", () => totals.messages, { num: true }]]),
    h("h2", {}, "Listeners"),
    table(o.listeners, [["Protocol", l => l.protocol], ["Address", l => l.ip_address], ["Port", l => String(l.port)]]),
  ];
};

function rangeQuery() {
  const { age, incr } = chartRange;
  return `?msg_rates_age=${age}&msg_rates_incr=${incr}&lengths_age=${age}&lengths_incr=${incr}`;
}

// The values of a *_details object's samples, oldest first (none when it has no samples).
function sampleValues(obj, key) {
  const details = obj && obj[key + "_details"];
  return details && details.samples ? details.samples.map(s => s.sample).reverse() : [];
}

// Per-second rates between consecutive counter samples, oldest first. A counter that went
// down (its queue deleted, or led by a new leader that counts afresh) draws 0, not a dip.
function sampleRates(values) {
  const out = [];
  for (let i = 1; i < values.length; i++) out.push(Math.max(0, values[i] - values[i - 1]) / chartRange.incr);
  return out;
}

// Points {name: value} oldest first from named series of equal length.
function points(series) {
  const length = Math.max(0, ...Object.values(series).map(v => v.length));
  return Array.from({ length }, (_, i) => Object.fromEntries(
    Object.entries(series).map(([name, values]) => [name, values[i] || 0])));
}

// The queued messages and message rates charts of an object's lengths (`totals`: messages_*)
// and counters (`stats`: message_stats), with the range selector.
function charts(stats, totals) {
  const select = h("select", { id: "chart-range", onchange: e => {
    chartRange = RANGES.find(r => r.key === e.target.value) || RANGES[1];
    sessionStorage.setItem("leveret-range", chartRange.key);
    route();
  } }, RANGES.map(r => h("option", { value: r.key, selected: r === chartRange }, r.label)));
  return h("div", {},
    h("label", {}, "Charts: ", select),
    h("div", { class: "charts" },
      chart("Queued messages", points({ ready: sampleValues(totals, "messages_ready"),
                                        unacked: sampleValues(totals, "messages_unacknowledged") }),
            { ready: "#f0a030", unacked: "#3070c0" }, "msgs", "chart-queued"),
      chart("Message rates", points({ publish: sampleRates(sampleValues(stats, "publish")),
                                      deliver: sampleRates(sampleValues(stats, "deliver_get")),
                                      ack: sampleRates(sampleValues(stats, "ack")) }),
            { publish: "#30a050", deliver: "#3070c0", ack: "#a03070" }, "/s", "chart-rates")));
}

// A line chart of the samples' series (name -> colour) on a canvas, newest on the right; the
// canvas carries how many points it drew above 0 (data-nonzero), for tests and scripts.
function chart(title, samples, series, unit, id) {
  const width = 480, height = 180, pad = 30;
  const nonzero = samples.filter(s => Object.keys(series).some(k => (s[k] || 0) > 0)).length;
  const canvas = h("canvas", { width, height, id, "data-points": samples.length, "data-nonzero": nonzero });
  const ctx = canvas.getContext("2d");
  const max = Math.max(1, ...samples.flatMap(s => Object.keys(series).map(k => s[k] || 0)));
  ctx.strokeStyle = "#ccc";
  ctx.fillStyle = "#666";
  ctx.font = "11px sans-serif";
  for (let i = 0; i <= 4; i++) {
    const y = pad / 2 + (height - pad) * i / 4;
    ctx.beginPath(); ctx.moveTo(pad, y); ctx.lineTo(width - 5, y); ctx.stroke();
    ctx.fillText(fmt(max * (4 - i) / 4), 2, y + 4);
  }
  const step = (width - pad - 5) / Math.max(1, samples.length - 1);
  const first = 0;
  for (const [name, colour] of Object.entries(series)) {
    ctx.strokeStyle = colour;
    ctx.lineWidth = 2;
    ctx.beginPath();
    samples.forEach((s, i) => {
      const x = pad + (first + i) * step;
      const y = pad / 2 + (height - pad) * (1 - (s[name] || 0) / max);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
  const last = samples[samples.length - 1] || {};
  return h("div", {},
    h("h2", {}, `${title} (${chartRange.label.toLowerCase()})`),
    canvas,
    h("div", { class: "legend" }, Object.entries(series).map(([name, colour]) =>
      h("span", {}, h("i", { style: `background:${colour}` }), `${name} ${fmt(last[name] || 0)} ${unit}`))));
}

pages.nodes = async () => {
  const nodes = await api("GET", "/nodes");
  // Each member's figures are asked of it; one that does not answer has none (it is down).
  const known = (n, text) => n.mem_used === undefined ? "" : text();
  return [
    h("h1", {}, "Nodes"),
    table(nodes, [
      ["Name", n => n.name],
      ["Running", n => n.running ? "running" : h("span", { class: "alarm" }, "down")],
      ["Memory", n => known(n, () => h("span", { class: n.mem_alarm ? "alarm" : null },
                       `${fmt(Math.round(n.mem_used / 1048576))} MiB / ${fmt(Math.round(n.mem_limit / 1048576))} MiB`))],
      ["Disk free", n => known(n, () => h("span", { class: n.disk_free_alarm ? "alarm" : null },
                          `${fmt(Math.round(n.disk_free / 1e6))} MB (limit ${fmt(Math.round(n.disk_free_limit / 1e6))} MB)`))],
      ["Alarms", n => known(n, () => [n.mem_alarm ? "memory" : null, n.disk_free_alarm ? "disk" : null]
                                       .filter(Boolean).join(", ") || "none")],
      ["Partitions", n => n.partitions.length ? n.partitions.join(", ") : "none"],
      ["File descriptors", n => known(n, () => `${fmt(n.fd_used)} / ${fmt(n.fd_total)}`)],
      ["Uptime", n => known(n, () => `${fmt(Math.round(n.uptime / 1000))} s`)],
    ]),
  ];
};

pages.connections = async () => {
  const connections = await api("GET", "/connections");
  return [
    h("h1", {}, "Connections"),
    table(connections, [
      ["Name", c => c.name], ["User", c => c.user], ["Vhost", c => c.vhost], ["State", c => c.state],
      ["Channels", c => c.channels, { num: true }], ["Client", c => (c.client_properties || {}).product],
      ["", c => h("button", { class: "danger", onclick: () => confirmThen(`Close connection ${c.name}?`,
        () => api("DELETE", `/connections/${enc(c.name)}`), "Connection closed") }, "Close")],
    ], "No connections."),
  ];
};

pages.channels = async () => {
  const channels = await api("GET", "/channels");
  return [
    h("h1", {}, "Channels"),
    table(channels, [
      ["Channel", c => c.name], ["User", c => c.user], ["Vhost", c => c.vhost],
      ["Mode", c => [c.confirm ? "confirm" : null, c.transactional ? "transactional" : null].filter(Boolean).join(", ")],
      ["Prefetch", c => c.prefetch_count, { num: true }], ["Consumers", c => c.consumer_count, { num: true }],
      ["Unacked", c => c.messages_unacknowledged, { num: true }],
    ], "No channels."),
  ];
};

pages.exchanges = async () => {
  const [exchanges, vhosts] = await Promise.all([api("GET", "/exchanges"), vhostNames()]);
  return [
    h("h1", {}, "Exchanges"),
    table(exchanges, [
      ["Vhost", x => x.vhost], ["Name", x => x.name || "(AMQP default)"], ["Type", x => x.type],
      ["Features", x => [x.durable ? "durable" : null, x.auto_delete ? "auto-delete" : null,
                         x.internal ? "internal" : null].filter(Boolean).join(", ")],
      ["Policy", x => x.policy],
      ["", x => x.name && !x.name.startsWith("amq.") ? h("button", { class: "danger", onclick: () => confirmThen(
        `Delete exchange ${x.name}?`, () => api("DELETE", `/exchanges/${enc(x.vhost)}/${enc(x.name)}`),
        "Exchange deleted") }, "Delete") : ""],
    ]),
    h("h2", {}, "Add an exchange"),
    form([["vhost", "Vhost", { options: vhosts }], ["name", "Name"],
          ["type", "Type", { options: ["direct", "fanout", "topic", "headers"] }],
          ["durable", "Durable", { options: ["true", "false"] }], ["arguments", "Arguments (JSON)", { placeholder: "{}" }]],
         "Add exchange", async v => {
           await api("PUT", `/exchanges/${enc(v.vhost)}/${enc(v.name)}`,
                     { type: v.type, durable: v.durable === "true", arguments: jsonField(v.arguments, "Arguments") });
           flash(`Exchange ${v.name} declared`);
           route();
         }, "add-exchange"),
  ];
};

// Where a queue lives and its copies: the leader and members of a replicated queue (those
// not running marked), the mirrors (and which are synchronised, and those on nodes that are
// down) of a mirrored one.
function placement(q) {
  if (q.members) {
    const online = new Set(q.online || []);
    const members = q.members.map(n => online.has(n) ? n : `${n} (down)`);
    return `leader ${q.leader}; members ${members.join(", ")}`;
  }
  if (q.slave_nodes) {
    const synced = new Set(q.synchronised_slave_nodes || []);
    const running = new Set(q.slave_nodes);
    const mirrors = q.slave_nodes.map(n => synced.has(n) ? `${n} (synchronised)` : `${n} (unsynchronised)`)
      .concat((q.recoverable_slaves || []).filter(n => !running.has(n)).map(n => `${n} (down)`));
    return `${q.node}; mirrors: ${mirrors.length ? mirrors.join(", ") : "none"}`;
  }
  return q.node;
}

pages.queues = async () => {
  const [queues, vhosts] = await Promise.all([api("GET", "/queues"), vhostNames()]);
  return [
    h("h1", {}, "Queues"),
    table(queues, [
      ["Vhost", q => q.vhost],
      ["Name", q => h("a", { href: `#/queue/${enc(q.vhost)}/${enc(q.name)}`, class: "queue-link" }, q.name)],
      ["Type", q => q.type], ["State", q => q.state], ["Node / leader / mirrors", placement],
      ["Policy", q => q.policy],
      ["Ready", q => q.messages_ready, { num: true }], ["Unacked", q => q.messages_unacknowledged, { num: true }],
      ["Total", q => q.messages, { num: true }], ["Consumers", q => q.consumers, { num: true }],
      ["In /s", q => rate(q.message_stats, "publish"), { num: true }],
      ["Out /s", q => rate(q.message_stats, "deliver_get"), { num: true }],
    ], "No queues."),
    h("h2", {}, "Add a queue"),
    form([["vhost", "Vhost", { options: vhosts }], ["name", "Name"],
          ["type", "Type", { options: ["classic", "quorum"] }],
          ["durable", "Durable", { options: ["true", "false"] }],
          ["arguments", "Arguments (JSON)", { placeholder: '{"x-max-length": 1000}' }]],
         "Add queue", async v => {
           const args = jsonField(v.arguments, "Arguments");
           if (v.type === "quorum") args["x-queue-type"] = "quorum";
           await api("PUT", `/queues/${enc(v.vhost)}/${enc(v.name)}`, { durable: v.durable === "true", arguments: args });
           flash(`Queue ${v.name} declared`);
           route();
         }, "add-queue"),
  ];
};

// One queue: its numbers, publish, get, purge, delete, bindings.
pages.queue = async (vhost, name) => {
  const base = `/queues/${enc(vhost)}/${enc(name)}`;
  const [q, bindings] = await Promise.all([api("GET", base + rangeQuery()), api("GET", base + "/bindings")]);
  const got = h("div", { id: "got-messages" });
  return [
    h("h1", {}, `Queue ${q.name}`, h("small", {}, ` in vhost ${q.vhost}`)),
    table([q], [["Type", x => x.type], ["State", x => x.state], ["Node / leader / mirrors", placement],
                ["Policy", x => x.policy], ["Ready", x => x.messages_ready, { num: true }],
                ["Unacked", x => x.messages_unacknowledged, { num: true }],
                ["Total", x => h("span", { id: "queue-total" }, String(x.messages)), { num: true }],
                ["Consumers", x => x.consumers, { num: true }], ["Arguments", x => x.arguments]]),
    charts(q.message_stats || {}, q),
    h("h2", {}, "Consumers"),
    table(q.consumer_details || [], [["Tag", c => c.consumer_tag], ["Channel", c => c.channel_details.name],
                                    ["Ack required", c => c.ack_required ? "yes" : "no"],
                                    ["Prefetch", c => c.prefetch_count, { num: true }]], "No consumers."),
    h("h2", {}, "Bindings"),
    table(bindings, [["From", b => b.source || "(AMQP default)"], ["Routing key", b => b.routing_key],
                     ["Arguments", b => b.arguments]]),
    h("h2", {}, "Publish a message"),
    form([["payload", "Payload", { type: "textarea" }], ["delivery_mode", "Delivery mode",
          { options: ["1 - non-persistent", "2 - persistent"] }],
          ["headers", "Headers (JSON)", { placeholder: "{}" }]],
         "Publish message", async v => {
           const properties = { delivery_mode: Number(v.delivery_mode[0]) };
           const headers = jsonField(v.headers, "Headers");
           if (Object.keys(headers).length) properties.headers = headers;
           const result = await api("POST", `/exchanges/${enc(q.vhost)}/amq.default/publish`, {
             routing_key: q.name, payload: v.payload, payload_encoding: "string", properties });
           flash(result.routed ? "Message published" : "Message published but not routed");
           route();
         }, "publish"),
    h("h2", {}, "Get messages"),
    form([["count", "Messages", { value: "1" }],
          ["ackmode", "Ack mode", { options: ["ack_requeue_true", "ack_requeue_false", "reject_requeue_true",
                                              "reject_requeue_false"] }],
          ["encoding", "Encoding", { options: ["auto", "base64"] }]],
         "Get messages", async v => {
           const messages = await api("POST", base + "/get", { count: Number(v.count), ackmode: v.ackmode,
                                                              encoding: v.encoding, truncate: 50000 });
           got.replaceChildren(...(messages.length ? messages.map((m, i) => h("div", {},
             h("h3", {}, `Message ${i + 1}`),
             table([m], [["Exchange", x => x.exchange || "(AMQP default)"], ["Routing key", x => x.routing_key],
                         ["Redelivered", x => x.redelivered ? "yes" : "no"], ["Properties", x => x.properties],
                         ["Remaining", x => x.message_count, { num: true }]]),
             h("pre", { class: "message" }, m.payload))) : [h("p", {}, "Queue is empty")]));
         }, "get"),
    got,
    ...(q.slave_nodes ? [
      h("h2", {}, "Mirrors"),
      h("p", {}, `${(q.synchronised_slave_nodes || []).length} of ${q.slave_nodes.length} running mirrors synchronised.`),
      h("button", { id: "sync", onclick: () => confirmThen(`Synchronise the mirrors of ${q.name}?`,
        () => api("POST", base + "/actions", { action: "sync" }), "Synchronisation requested") }, "Synchronise"),
      " ",
      h("button", { id: "cancel-sync", onclick: () => confirmThen(`Stop synchronising ${q.name}?`,
        () => api("POST", base + "/actions", { action: "cancel_sync" }), "Synchronisation cancelled") },
        "Cancel synchronisation"),
    ] : []),
    h("h2", {}, "Purge and delete"),
    h("button", { id: "purge", onclick: () => confirmThen(`Purge queue ${q.name}?`,
      () => api("DELETE", base + "/contents"), "Queue purged") }, "Purge messages"),
    " ",
    h("button", { id: "delete-queue", class: "danger", onclick: async () => {
      if (!window.confirm(`Delete queue ${q.name}?`)) return;
      try {
        await api("DELETE", base);
        flash("Queue deleted");
        location.hash = "#/queues";
      } catch (err) {
        flash(err.message, "error");
      }
    } }, "Delete queue"),
  ];
};

pages.users = async () => {
  const [users, permissions, vhosts] = await Promise.all([api("GET", "/users"), api("GET", "/permissions"),
                                                        vhostNames()]);
  return [
    h("h1", {}, "Users"),
    table(users, [["Name", u => u.name], ["Tags", u => u.tags],
                  ["Can access vhosts", u => permissions.filter(p => p.user === u.name).map(p => p.vhost).join(", ")],
                  ["", u => h("button", { class: "danger", onclick: () => confirmThen(`Delete user ${u.name}?`,
                    () => api("DELETE", `/users/${enc(u.name)}`), "User deleted") }, "Delete")]]),
    h("h2", {}, "Add a user"),
    form([["name", "Username"], ["password", "Password", { type: "password" }],
          ["tags", "Tags", { placeholder: "administrator, monitoring" }]],
         "Add user", async v => {
           await api("PUT", `/users/${enc(v.name)}`, { password: v.password, tags: v.tags });
           flash(`User ${v.name} saved`);
           route();
         }, "add-user"),
    h("h2", {}, "Permissions"),
    table(permissions, [["User", p => p.user], ["Vhost", p => p.vhost], ["Configure", p => p.configure],
                        ["Write", p => p.write], ["Read", p => p.read],
                        ["", p => h("button", { class: "danger", onclick: () => confirmThen(
                          `Clear ${p.user}'s permissions in ${p.vhost}?`,
                          () => api("DELETE", `/permissions/${enc(p.vhost)}/${enc(p.user)}`), "Permissions cleared") },
                          "Clear")]]),
    form([["user", "User", { options: users.map(u => u.name) }], ["vhost", "Vhost", { options: vhosts }],
          ["configure", "Configure", { value: ".*" }], ["write", "Write", { value: ".*" }],
          ["read", "Read", { value: ".*" }]],
         "Set permission", async v => {
           await api("PUT", `/permissions/${enc(v.vhost)}/${enc(v.user)}`,
                     { configure: v.configure, write: v.write, read: v.read });
           flash("Permission set");
           route();
         }, "set-permission"),
  ];
};

pages.vhosts = async () => {
  const vhosts = await api("GET", "/vhosts");
  return [
    h("h1", {}, "Virtual hosts"),
    table(vhosts, [["Name", v => v.name], ["Description", v => v.description], ["Tags", v => v.tags],
                   ["State", v => Object.entries(v.cluster_state).map(([n, s]) => `${n}: ${s}`).join(", ")],
                   ["", v => h("button", { class: "danger", onclick: () => confirmThen(
                     `Delete virtual host ${v.name} and everything in it?`,
                     () => api("DELETE", `/vhosts/${enc(v.name)}`), "Virtual host deleted") }, "Delete")]]),
    h("h2", {}, "Add a virtual host"),
    form([["name", "Name"], ["description", "Description"], ["tags", "Tags"]], "Add virtual host", async v => {
      await api("PUT", `/vhosts/${enc(v.name)}`, { description: v.description, tags: v.tags });
      flash(`Virtual host ${v.name} added`);
      route();
    }, "add-vhost"),
  ];
};

pages.policies = async () => {
  const [policies, vhosts] = await Promise.all([api("GET", "/policies"), vhostNames()]);
  return [
    h("h1", {}, "Policies"),
    table(policies, [["Vhost", p => p.vhost], ["Name", p => p.name], ["Pattern", p => p.pattern],
                     ["Apply to", p => p["apply-to"]], ["Definition", p => p.definition],
                     ["Priority", p => p.priority, { num: true }],
                     ["", p => h("button", { class: "danger", onclick: () => confirmThen(`Clear policy ${p.name}?`,
                       () => api("DELETE", `/policies/${enc(p.vhost)}/${enc(p.name)}`), "Policy cleared") },
                       "Clear")]], "No policies."),
    h("h2", {}, "Set a policy"),
    form([["vhost", "Vhost", { options: vhosts }], ["name", "Name"], ["pattern", "Pattern", { placeholder: "^orders\\." }],
          ["apply-to", "Apply to", { options: ["all", "queues", "exchanges", "classic_queues", "quorum_queues"] }],
          ["priority", "Priority", { value: "0" }],
          ["definition", "Definition (JSON)", { placeholder: '{"max-length": 1000}' }]],
         "Set policy", async v => {
           await api("PUT", `/policies/${enc(v.vhost)}/${enc(v.name)}`, {
             pattern: v.pattern, "apply-to": v["apply-to"], priority: Number(v.priority || 0),
             definition: jsonField(v.definition, "Definition") });
           flash(`Policy ${v.name} set`);
           route();
         }, "set-policy"),
  ];
};

pages.definitions = async () => {
  const download = h("a", { id: "export-link", hidden: true }, "definitions.json");
  return [
    h("h1", {}, "Definitions"),
    h("h2", {}, "Export"),
    h("button", { id: "export", onclick: async () => {
      try {
        const defs = await api("GET", "/definitions");
        const blob = new Blob([JSON.stringify(defs, null, 2)], { type: "application/json" });
        download.href = URL.createObjectURL(blob);
        download.download = `leveret-definitions-${new Date().toISOString().slice(0, 10)}.json`;
        download.hidden = false;
        download.click();
      } catch (err) {
        flash(err.message, "error");
      }
    } }, "Download definitions"), " ", download,
    h("h2", {}, "Import"),
    form([["file", "Definitions file", { type: "file" }], ["text", "…or paste them", { type: "textarea" }]],
         "Upload definitions", async v => {
           const text = v.file && v.file.size ? await v.file.text() : v.text;
           await api("POST", "/definitions", jsonField(text, "Definitions"));
           flash("Definitions imported");
         }, "import"),
  ];
};

// ---------------------------------------------------------------------------- routing

async function route() {
  clearTimeout(refreshTimer);
  // A page still loading when another is asked for (a click, a refresh timer) must not
  // draw over it once its requests come back.
  const mine = ++shownRoute;
  if (!credentials) return showLogin();
  const parts = (location.hash.replace(/^#\/?/, "") || "overview").split("/").map(decodeURIComponent);
  const page = pages[parts[0]] ? parts[0] : "overview";
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("current", link.getAttribute("href") === `#/${page === "queue" ? "queues" : page}`);
  }
  try {
    const who = await api("GET", "/whoami");
    if (mine !== shownRoute) return;
    document.getElementById("who").textContent = `${who.name} (${who.tags.join(", ") || "no tags"})`;
    document.getElementById("nav").hidden = false;
    document.getElementById("logout").hidden = false;
    const content = await pages[page](...parts.slice(1));
    if (mine !== shownRoute) return;
    document.getElementById("main").replaceChildren(...content);
    document.body.dataset.page = page;
  } catch (err) {
    if (mine !== shownRoute) return;
    if (err.status === 401) return showLogin(err.message);
    document.getElementById("main").replaceChildren(h("p", { class: "alarm" }, err.message));
  }
  // The overview and the lists follow the node; forms and the queue page are left alone.
  if (["overview", "nodes", "connections", "channels"].includes(page)) {
    refreshTimer = setTimeout(route, SAMPLE_MS);
  }
}

document.getElementById("logout").addEventListener("click", logout);
window.addEventListener("hashchange", route);
route();
