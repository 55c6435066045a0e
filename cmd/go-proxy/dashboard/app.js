// go-proxy dashboard: polls the admin JSON API once a second and renders
// routes, sessions and backends. Plain browser JavaScript, no build step.
// Every value from the API is inserted as text, never as markup.
(function () {
  "use strict";

  var POLL_MS = 1000;
  var HISTORY = 120;

  var params = new URLSearchParams(window.location.search);
  var token = params.get("token");
  var headers = token ? { Authorization: "Bearer " + token } : {};

  var prev = null; // the previous /api/stats reading
  var history = []; // total requests/s, oldest first
  var routeRates = {}; // route_id -> {rate, latencyMs}
  var lastTotals = { rate: null, latencyMs: null, errorRate: null };

  function $(id) { return document.getElementById(id); }

  function el(tag, attrs) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        var v = attrs[k];
        if (v === undefined || v === null) return;
        if (k === "text") node.textContent = String(v);
        else if (k === "className") node.className = v;
        else if (k === "title") node.title = String(v);
        else if (k.indexOf("data-") === 0) node.setAttribute(k, String(v));
        else node.setAttribute(k, v);
      });
    }
    for (var i = 2; i < arguments.length; i++) {
      var c = arguments[i];
      if (c === null || c === undefined) continue;
      node.appendChild(typeof c === "object" ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function badge(text, cls, title) {
    return el("span", { className: "badge " + cls, text: text, title: title });
  }

  function fmtRate(r) {
    if (r === null || r === undefined || !isFinite(r)) return "–";
    if (r >= 100) return r.toFixed(0);
    if (r >= 10) return r.toFixed(1);
    return r.toFixed(2);
  }

  function fmtMS(ms) {
    if (ms === null || ms === undefined || !isFinite(ms)) return "–";
    if (ms >= 1000) return (ms / 1000).toFixed(2) + " s";
    if (ms >= 10) return ms.toFixed(1) + " ms";
    return ms.toFixed(2) + " ms";
  }

  function fmtAgo(iso) {
    if (!iso) return "–";
    var s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
    if (s < 60) return s + "s ago";
    if (s < 3600) return Math.floor(s / 60) + "m ago";
    return Math.floor(s / 3600) + "h ago";
  }

  function fmtIn(iso) {
    var s = Math.max(0, Math.round((Date.parse(iso) - Date.now()) / 1000));
    return s < 120 ? s + "s" : Math.round(s / 60) + "m";
  }

  function fmtBytes(n) {
    if (n >= 1 << 30) return (n / (1 << 30)).toFixed(1) + " GiB";
    if (n >= 1 << 20) return (n / (1 << 20)).toFixed(1) + " MiB";
    if (n >= 1 << 10) return (n / (1 << 10)).toFixed(1) + " KiB";
    return n + " B";
  }

  function getJSON(path) {
    return fetch(path, { headers: headers, cache: "no-store" }).then(function (resp) {
      if (resp.status === 401) throw new Error("unauthorized: open the dashboard with ?token=<admin token>");
      if (!resp.ok) throw new Error(path + ": HTTP " + resp.status);
      return resp.json();
    });
  }

  function setStatus(state, text) {
    var s = $("status");
    s.setAttribute("data-state", state);
    s.textContent = text;
  }

  // rates derives requests/s, errors/s and the mean latency of the last
  // interval from two cumulative readings.
  function rates(stats) {
    var next = {};
    if (prev) {
      var dt = (stats.time_ms - prev.time_ms) / 1000;
      if (dt > 0) {
        var dc = stats.latency.count - prev.latency.count;
        lastTotals = {
          rate: Math.max(0, stats.requests - prev.requests) / dt,
          errorRate: Math.max(0, stats.errors - prev.errors) / dt,
          latencyMs: dc > 0 ? ((stats.latency.sum_seconds - prev.latency.sum_seconds) / dc) * 1000 : null,
        };
        history.push(lastTotals.rate);
        if (history.length > HISTORY) history.shift();
        var before = {};
        prev.routes.forEach(function (r) { before[r.route_id] = r; });
        stats.routes.forEach(function (r) {
          var p = before[r.route_id];
          if (!p) return;
          var c = r.latency.count - p.latency.count;
          next[r.route_id] = {
            rate: Math.max(0, r.requests - p.requests) / dt,
            latencyMs: c > 0 ? ((r.latency.sum_seconds - p.latency.sum_seconds) / c) * 1000 : null,
          };
        });
      }
    }
    routeRates = next;
    prev = stats;
  }

  function renderSpark() {
    var line = $("spark-line");
    if (history.length < 2) { line.setAttribute("points", ""); return; }
    var max = Math.max.apply(null, history.concat([1]));
    var step = 600 / (HISTORY - 1);
    var offset = HISTORY - history.length;
    var pts = history.map(function (v, i) {
      return ((offset + i) * step).toFixed(1) + "," + (78 - (v / max) * 74).toFixed(1);
    });
    line.setAttribute("points", pts.join(" "));
    $("spark").setAttribute("data-max", max.toFixed(2));
  }

  function healthCell(b) {
    if (!b.healthy) return badge("unhealthy", "bad");
    return b.health_check ? badge("healthy", "ok", "active check " + b.health_check) : badge("healthy", "dim", "no active check");
  }

  function breakerCell(br) {
    if (!br.enabled) return badge("off", "dim");
    var cls = br.state === "closed" ? "ok" : br.state === "open" ? "bad" : "warn";
    var title = "failures " + br.failures + " of " + br.threshold;
    if (br.next_attempt) title += ", next attempt " + br.next_attempt;
    var cell = el("span", null, badge(br.state, cls, title));
    if (br.failures > 0) cell.appendChild(el("span", { className: "dim", text: " " + br.failures + " fail" }));
    return cell;
  }

  function fill(tableId, rows, empty, columns) {
    var body = $(tableId).tBodies[0];
    if (rows.length === 0) {
      body.replaceChildren(el("tr", { className: "empty" }, el("td", { colspan: String(columns), text: empty })));
      return;
    }
    body.replaceChildren.apply(body, rows);
  }

  function renderRoutes(routes) {
    fill("routes", routes.map(function (r) {
      var rr = routeRates[r.route_id] || {};
      return el("tr", { "data-route-id": r.route_id, "data-service": r.service },
        el("td", { "data-field": "route_id" }, el("code", { text: r.route_id })),
        el("td", { "data-field": "service", text: r.service }),
        el("td", { className: "wrap", "data-field": "target", text: r.domains.join(", ") + " " + r.path + (r.priority ? "  (priority " + r.priority + ")" : "") }),
        el("td", { className: "wrap", "data-field": "backend", text: r.backend }),
        el("td", { "data-field": "health" }, healthCell(r)),
        el("td", { "data-field": "breaker" }, breakerCell(r.breaker)),
        el("td", { className: "num", "data-field": "rate", text: fmtRate(rr.rate) }),
        el("td", { className: "num", "data-field": "latency", text: fmtMS(rr.latencyMs) }),
        el("td", { className: "num", "data-field": "p95", text: fmtMS(r.stats.latency.p95_ms) }),
        el("td", { className: "num", "data-field": "requests", "data-value": r.stats.requests, text: r.stats.requests }),
        el("td", { className: "num", "data-field": "errors", text: r.stats.errors }),
        el("td", { className: "num", "data-field": "in_flight", text: r.in_flight }));
    }), "no routes registered", 12);
  }

  function renderSessions(data) {
    fill("sessions", data.sessions.map(function (s) {
      var state = s.connected ? badge("connected", "ok", s.remote_addr || "")
        : badge("grace" + (s.grace_ends_at ? " · ends in " + fmtIn(s.grace_ends_at) : ""), "warn");
      var drain = "–";
      if (s.drain) drain = s.drain.completed ? badge("drained", "bad") : badge("draining " + s.drain.traffic_percent + "%", "warn");
      return el("tr", { "data-session-id": s.id, "data-service": s.service },
        el("td", { "data-field": "service", text: s.service }),
        el("td", { "data-field": "instance", text: s.instance }),
        el("td", { "data-field": "id" }, el("code", { text: s.id })),
        el("td", { "data-field": "state" }, state),
        el("td", { className: "wrap", "data-field": "routes", text: s.routes.length ? s.routes.join(" ") : "–" }),
        el("td", { "data-field": "drain" }, drain),
        el("td", { "data-field": "maintenance", text: s.maintenance.length ? s.maintenance.join(" ") : "–" }),
        el("td", { className: "num", "data-field": "in_flight", text: s.in_flight }),
        el("td", { "data-field": "last_activity", text: fmtAgo(s.last_activity) }));
    }), "no sessions", 9);
    $("session-count").textContent = data.connected + (data.grace ? " · " + data.grace + " grace" : "");
  }

  function renderBackends(data) {
    fill("backends", data.backends.map(function (b) {
      var maint = b.maintenance ? badge("maintenance", "warn", (b.maintenance.page_url || "built-in page") + " since " + b.maintenance.entered_at) : "–";
      var drain = "–";
      if (b.drain) drain = badge(b.drain.completed ? "drained" : "draining " + b.drain.traffic_percent.toFixed(0) + "%", b.drain.completed ? "bad" : "warn");
      var limit = b.rate_limit ? b.rate_limit.requests + " / " + b.rate_limit.window_seconds + "s" : "–";
      return el("tr", { "data-route-id": b.route_id },
        el("td", { "data-field": "route_id" }, el("code", { text: b.route_id })),
        el("td", { className: "wrap", "data-field": "backend", text: b.backend }),
        el("td", { "data-field": "member" }, b.connected ? badge("active", "ok") : badge("standby", "warn")),
        el("td", { "data-field": "health" }, healthCell(b)),
        el("td", { "data-field": "breaker" }, breakerCell(b.breaker)),
        el("td", { "data-field": "maintenance" }, maint),
        el("td", { "data-field": "drain" }, drain),
        el("td", { "data-field": "rate_limit", text: limit }),
        el("td", { className: "num", "data-field": "in_flight", text: b.in_flight }));
    }), "no backends", 9);
  }

  function renderSummary(stats, routes) {
    $("rate").textContent = fmtRate(lastTotals.rate);
    $("latency").textContent = fmtMS(lastTotals.latencyMs);
    $("error-rate").textContent = fmtRate(lastTotals.errorRate);
    $("inflight").textContent = stats.in_flight;
    $("total-requests").textContent = stats.requests;
    $("total-requests").setAttribute("data-value", stats.requests);
    $("route-count").textContent = routes.length;
    $("unmatched").textContent = stats.unmatched;
    $("updated").textContent = "updated " + new Date(stats.time_ms).toLocaleTimeString();
    $("runtime").textContent = stats.go.goroutines + " goroutines, heap " + fmtBytes(stats.go.heap_bytes) +
      ", up " + Math.floor(stats.uptime_seconds) + "s";
    $("accesslog").textContent = stats.access_log
      ? "access log: " + stats.access_log.lines + " lines, " + stats.access_log.dropped + " dropped"
      : "access log off";
  }

  function tick() {
    Promise.all([getJSON("api/stats"), getJSON("api/routes"), getJSON("api/sessions"), getJSON("api/backends")])
      .then(function (res) {
        var stats = res[0], routes = res[1].routes;
        rates(stats);
        renderSummary(stats, routes);
        renderSpark();
        renderRoutes(routes);
        renderSessions(res[2]);
        renderBackends(res[3]);
        setStatus(stats.ready ? "ok" : "error", stats.ready ? "live" : "shutting down");
        document.body.setAttribute("data-loaded", "true");
      })
      .catch(function (err) {
        setStatus("error", String(err.message || err));
      })
      .then(function () {
        window.setTimeout(tick, POLL_MS);
      });
  }

  tick();
})();
