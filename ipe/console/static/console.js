// The ipe console's pages. Plain JavaScript, no libraries: everything it loads ships with ipe.
// Text from the server is only ever put in the page with textContent (never as HTML).
"use strict";

(function () {
  const body = document.body;
  const base = body.dataset.base;
  const csrf = body.dataset.csrf;
  const appId = body.dataset.app;
  const MAX_ROWS = 1000; // log rows the page keeps

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") node.textContent = v;
      else if (k === "class") node.className = v;
      else node.setAttribute(k, v);
    }
    for (const child of children || []) node.appendChild(child);
    return node;
  }

  async function getJSON(path) {
    const response = await fetch(base + path, { credentials: "same-origin" });
    if (response.status === 401) {
      window.location.href = base + "/login";
      throw new Error("logged out");
    }
    if (!response.ok) throw new Error("HTTP " + response.status);
    return response.json();
  }

  function duration(seconds) {
    seconds = Math.floor(seconds);
    const d = Math.floor(seconds / 86400), h = Math.floor(seconds % 86400 / 3600);
    const m = Math.floor(seconds % 3600 / 60), s = seconds % 60;
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + m + "m";
    if (m) return m + "m " + s + "s";
    return s + "s";
  }

  function clock(t) {
    const date = new Date(t * 1000);
    return date.toLocaleTimeString([], { hour12: false }) + "." +
      String(date.getMilliseconds()).padStart(3, "0");
  }

  // --- overview -------------------------------------------------------------------------------

  function drawChart(svg, history) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const W = 600, H = 160, P = 4;
    if (history.length < 2) {
      svg.appendChild(svgEl("text", { x: 10, y: 20, class: "muted" }, "collecting…"));
      return;
    }
    const max = Math.max(1, ...history.map((p) => Math.max(p[1], p[2])));
    const maxConns = Math.max(1, ...history.map((p) => p[3]));
    const t0 = history[0][0], t1 = history[history.length - 1][0];
    const x = (t) => P + (W - 2 * P) * (t - t0) / Math.max(1, t1 - t0);
    const line = (index, scale, cls) => {
      const points = history.map((p) => x(p[0]).toFixed(1) + "," +
        (H - P - (H - 2 * P) * p[index] / scale).toFixed(1)).join(" ");
      svg.appendChild(svgEl("polyline", { points: points, class: cls }));
    };
    line(3, maxConns, "conns");
    line(1, max, "in");
    line(2, max, "out");
    svg.appendChild(svgEl("text", { x: 8, y: 14, class: "axis" }, max.toFixed(0) + " msg/s"));
    svg.appendChild(svgEl("text", { x: W - 8, y: 14, class: "axis end" }, maxConns + " conns"));
  }

  function svgEl(tag, attrs, text) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text) node.textContent = text;
    return node;
  }

  async function refreshOverview() {
    let data;
    try {
      data = await getJSON("/api/overview");
    } catch (e) {
      return;
    }
    document.getElementById("total-connections").textContent = data.connections;
    document.getElementById("in-rate").textContent = data.in_rate;
    document.getElementById("out-rate").textContent = data.out_rate;
    const w = data.webhooks;
    document.getElementById("webhooks").textContent =
      w.sent + " / " + w.failed + " / " + (w.waiting === null ? "?" : w.waiting);
    document.getElementById("redis").textContent = data.redis === null
      ? "not used (one process)" : (data.redis.up ? "up · " : "DOWN · ") + data.redis.where;
    const tbody = document.querySelector("#nodes tbody");
    tbody.replaceChildren(...data.nodes.map((n) => n.waiting
      ? el("tr", { class: "muted" }, [el("td", { text: n.node }),
        el("td", { text: "alive (heartbeat); no numbers yet", colspan: "5" })])
      : el("tr", {}, [el("td", { text: n.node }), el("td", { text: n.connections }),
        el("td", { text: duration(n.uptime) }), el("td", { text: n.in_rate }),
        el("td", { text: n.out_rate }),
        el("td", { text: n.webhooks.sent + " / " + n.webhooks.failed })])));
    for (const app of data.apps) {
      const row = document.querySelector('#apps tr[data-app="' + CSS.escape(app.app_id) + '"] .conns');
      if (row) row.textContent = app.connections;
    }
    drawChart(document.getElementById("chart"), data.history);
  }

  // --- live log -------------------------------------------------------------------------------

  const GROUPS = {
    connected: "connection", disconnected: "connection",
    subscribed: "subscription", unsubscribed: "subscription", subscription_refused: "subscription",
    member_added: "member", member_removed: "member",
    webhook_sent: "webhook", webhook_failed: "webhook",
  };

  function details(r) {
    switch (r.k) {
      case "connected": return r.socket_id + (r.origin ? " from " + r.origin : "");
      case "disconnected": return r.socket_id + " closed" + (r.code ? " with " + r.code : "");
      case "subscribed": return r.socket_id + (r.user_id ? " as " + r.user_id : "");
      case "unsubscribed": return r.socket_id;
      case "subscription_refused": return r.socket_id + " · " + r.reason;
      case "member_added": case "member_removed": return "user " + r.user_id;
      case "api_message":
        return r.event + " · " + r.size + " B · " + r.preview + (r.size > r.preview.length ? "…" : "");
      case "client_event":
        return r.event + " from " + r.socket_id + " · " + r.size + " B · " + r.preview;
      case "webhook_sent": case "webhook_failed":
        return r.url + " · " + r.events + " event(s) · " + r.status + " · attempt " + r.attempt +
          " · " + r.latency_ms + " ms";
      case "rate_limited": return r.limit + " · " + (r.socket_id || "");
      case "dropped": return r.count + " record(s) lost: this page was too slow";
      default: return JSON.stringify(r);
    }
  }

  function startLog() {
    const tbody = document.querySelector("#log tbody");
    const prefix = document.getElementById("filter-prefix");
    const kind = document.getElementById("filter-kind");
    const pause = document.getElementById("pause");
    const state = document.getElementById("stream-state");
    const count = document.getElementById("log-count");
    let paused = false;
    let held = []; // records that arrived while paused (bounded like the table)

    function visible(row) {
      const p = prefix.value, k = kind.value;
      if (p && !(row.dataset.channel || "").startsWith(p)) return false;
      if (k && row.dataset.kind !== k && row.dataset.group !== k) return false;
      return true;
    }
    function applyFilters() {
      let shown = 0;
      for (const row of tbody.rows) {
        row.hidden = !visible(row);
        if (!row.hidden) shown++;
      }
      count.textContent = shown + " shown of " + tbody.rows.length;
    }
    function add(r) {
      const row = el("tr", { class: "k-" + r.k }, [
        el("td", { text: r.t ? clock(r.t) : "" }), el("td", { text: r.n || "" }),
        el("td", { text: r.k }), el("td", { text: r.channel || "" }),
        el("td", { text: details(r) })]);
      row.dataset.kind = r.k;
      row.dataset.group = GROUPS[r.k] || r.k;
      if (r.channel) row.dataset.channel = r.channel;
      row.hidden = !visible(row);
      tbody.insertBefore(row, tbody.firstChild);
      while (tbody.rows.length > MAX_ROWS) tbody.deleteRow(tbody.rows.length - 1);
    }
    prefix.addEventListener("input", applyFilters);
    kind.addEventListener("change", applyFilters);
    document.getElementById("clear").addEventListener("click", () => {
      tbody.replaceChildren();
      applyFilters();
    });
    pause.addEventListener("click", () => {
      paused = !paused;
      pause.textContent = paused ? "Resume" : "Pause";
      if (!paused) {
        held.forEach(add);
        held = [];
        applyFilters();
      }
    });

    const source = new EventSource(base + "/api/apps/" + encodeURIComponent(appId) + "/events");
    source.onopen = () => { state.textContent = "live"; state.className = "state live"; };
    source.onerror = () => { state.textContent = "reconnecting…"; state.className = "state"; };
    const lastSeq = {}; // node -> last record number: a reconnected stream replays recent ones
    source.onmessage = (message) => {
      const record = JSON.parse(message.data);
      if (record.n !== undefined && record.s !== undefined) {
        if (lastSeq[record.n] >= record.s) return;
        lastSeq[record.n] = record.s;
      }
      if (paused) {
        held.push(record);
        if (held.length > MAX_ROWS) held.shift();
        state.textContent = "paused (" + held.length + " waiting)";
        return;
      }
      add(record);
      count.textContent = tbody.rows.length + " entries";
    };
    window.addEventListener("pagehide", () => source.close());

    const form = document.getElementById("send-form");
    const result = document.getElementById("send-result");
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      result.textContent = "sending…";
      const response = await fetch(base + "/api/apps/" + encodeURIComponent(appId) + "/events", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify({
          channel: form.channel.value, event: form.event.value, data: form.data.value,
        }),
      });
      const answer = await response.json().catch(() => ({}));
      result.textContent = response.ok ? "sent" : "refused: " + (answer.error || response.status);
      result.className = "result " + (response.ok ? "ok" : "bad");
    });
  }

  // --- channels -------------------------------------------------------------------------------

  let selected = null;

  async function refreshChannels() {
    let data;
    try {
      data = await getJSON("/api/apps/" + encodeURIComponent(appId) + "/channels");
    } catch (e) {
      return;
    }
    document.getElementById("channel-total").textContent = "(" + data.total + ")";
    const tbody = document.querySelector("#channels tbody");
    tbody.replaceChildren(...data.channels.map((c) => {
      const link = el("a", { href: "#", text: c.name });
      link.addEventListener("click", (e) => { e.preventDefault(); selected = c.name; showChannel(); });
      const row = el("tr", {}, [el("td", {}, [link]), el("td", { text: c.subscriptions })]);
      row.dataset.channel = c.name;
      return row;
    }));
    if (selected) showChannel();
  }

  async function showChannel() {
    const data = await getJSON("/api/apps/" + encodeURIComponent(appId) + "/channel?name=" +
      encodeURIComponent(selected));
    document.getElementById("detail-name").textContent = data.name;
    const parts = [el("p", { text: data.subscriptions + " subscription(s) in the cluster" })];
    if (data.members) {
      parts.push(el("h3", { text: "Presence members (" + data.members.length + ")" }));
      parts.push(el("table", { id: "members" }, [
        el("thead", {}, [el("tr", {}, [el("th", { text: "user_id" }), el("th", { text: "user_info" })])]),
        el("tbody", {}, data.members.map((m) => el("tr", {}, [
          el("td", { text: m.id }), el("td", {}, [el("code", { text: JSON.stringify(m.info) })])]))),
      ]));
    }
    if ("cache" in data) {
      parts.push(el("h3", { text: "Cache" }));
      parts.push(data.cache === null ? el("p", { class: "muted", text: "empty" })
        : el("pre", { id: "cache", text: data.cache.event + " (ttl " + data.cache.ttl + " s)\n" + data.cache.data }));
    }
    document.getElementById("detail-body").replaceChildren(...parts);
  }

  // --- webhooks -------------------------------------------------------------------------------

  async function refreshWebhooks() {
    let data;
    try {
      data = await getJSON("/api/apps/" + encodeURIComponent(appId) + "/webhooks");
    } catch (e) {
      return;
    }
    const box = document.getElementById("targets");
    if (!data.targets.length) {
      box.replaceChildren(el("p", { class: "muted", text: "This app has no webhook targets." }));
      return;
    }
    box.replaceChildren(...data.targets.map((target) => el("section", {}, [
      el("h2", { text: target.url }),
      el("p", { class: "muted", text: target.event_types.join(", ") }),
      target.deliveries.length === 0 ? el("p", { class: "muted", text: "No deliveries yet." })
        : el("table", {}, [
          el("thead", {}, [el("tr", {}, ["Time", "Node", "Events", "Status", "Attempts", "Latency"]
            .map((h) => el("th", { text: h })))]),
          el("tbody", {}, target.deliveries.map((d) => el("tr", { class: d.ok ? "" : "bad" }, [
            el("td", { text: clock(d.t) }), el("td", { text: d.node }),
            el("td", { text: d.events }), el("td", { text: d.status }),
            el("td", { text: d.attempts }), el("td", { text: d.latency_ms + " ms" })]))),
        ]),
    ])));
  }

  function every(seconds, fn) {
    fn();
    setInterval(fn, seconds * 1000);
  }

  document.addEventListener("DOMContentLoaded", () => {
    switch (body.dataset.page) {
      case "overview": every(1, refreshOverview); break;
      case "log": startLog(); break;
      case "channels": every(2, refreshChannels); break;
      case "webhooks": every(3, refreshWebhooks); break;
    }
  });
})();
