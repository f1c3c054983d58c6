// meshpilot operator dashboard.
//
// Reads /readyz, /routes, /decisions and /dashboard/api/history every few seconds and calls
// the controls (override, pause, resume, shadow) with the operator's bearer token. Every
// piece of data is put on the page with textContent or as an attribute value built here:
// nothing the API returns is ever parsed as HTML or run. URLs are relative to the page, so
// the dashboard also works behind a proxy that serves the API under a path prefix.
(function () {
  "use strict";

  const REFRESH_MS = 5000;
  const DECISIONS_SHOWN = 8;
  const HISTORY_WINDOW_S = 3600;
  const TOKEN_KEY = "meshpilot.token";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const COLOURS = 8; // classes .s0 .. .s7 in dashboard.css

  const cards = new Map(); // route key -> card state
  const api = { ttlMin: 1, ttlMax: 86400, reason: false, othersZero: false };
  let timer = null;
  let refreshing = false;
  let uid = 0;

  // -- DOM helpers ---------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child); // strings become text
    }
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.setAttribute("class", String(value));
      else if (name === "text") node.textContent = String(value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
  }

  function nextId(prefix) {
    uid += 1;
    return `${prefix}-${uid}`;
  }

  function show(node, text, kind) {
    node.textContent = text;
    node.className = kind === "error" ? "result error" : "result ok";
  }

  function message(text, kind) {
    const box = document.getElementById("messages");
    box.replaceChildren(el("p", { class: kind === "error" ? "error" : "ok", text }));
  }

  // -- formatting ----------------------------------------------------------------------------

  function fmtNumber(value, digits) {
    if (value === null || value === undefined || !Number.isFinite(value)) return "–";
    return value.toFixed(digits);
  }

  function fmtAge(seconds) {
    if (!Number.isFinite(seconds)) return "–";
    const s = Math.max(0, seconds);
    if (s < 90) return `${s.toFixed(0)} s ago`;
    if (s < 5400) return `${(s / 60).toFixed(0)} min ago`;
    return `${(s / 3600).toFixed(1)} h ago`;
  }

  function fmtWeights(weights) {
    if (!weights) return "–";
    return Object.entries(weights).map(([name, points]) => `${name} ${points}`).join(" / ");
  }

  // -- talking to the API --------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, text) {
      super(text);
      this.status = status;
    }
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  function problemText(detail) {
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) {
      return detail
        .map((p) => {
          const where = Array.isArray(p && p.loc) ? p.loc.join(".") : "";
          const what = p && typeof p.msg === "string" ? p.msg : JSON.stringify(p);
          return where ? `${where}: ${what}` : what;
        })
        .join("; ");
    }
    return JSON.stringify(detail);
  }

  // fetch `path` (relative to the page); the JSON answer, or ApiError with the API's words.
  async function call(method, path, body, { accept } = {}) {
    const headers = { Accept: "application/json" };
    const bearer = token();
    if (bearer) headers.Authorization = `Bearer ${bearer}`;
    const init = { method, headers, cache: "no-store", credentials: "omit" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      throw new ApiError(0, `cannot reach the API (${err.message})`);
    }
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = null;
    }
    if (!response.ok && !(accept || []).includes(response.status)) {
      const detail = data && data.detail !== undefined ? problemText(data.detail) : "";
      const label = `${response.status} ${response.statusText}`.trim();
      throw new ApiError(response.status, detail ? `${label}: ${detail}` : label);
    }
    return data;
  }

  function routePath(route, action) {
    const parts = [route.namespace, route.virtual_service, String(route.route)];
    return `routes/${parts.map(encodeURIComponent).join("/")}/${action}`;
  }

  // What the running API accepts for an override (TTL bounds, optional fields): from its schema.
  async function learnSchema() {
    try {
      const schema = await call("GET", "openapi.json");
      const model = ((schema.components || {}).schemas || {}).OverrideRequest || {};
      const props = model.properties || {};
      const ttl = props.ttl_s || {};
      if (Number.isFinite(ttl.minimum)) api.ttlMin = ttl.minimum;
      else if (Number.isFinite(ttl.exclusiveMinimum)) api.ttlMin = ttl.exclusiveMinimum;
      if (Number.isFinite(ttl.maximum)) api.ttlMax = ttl.maximum;
      api.reason = Object.prototype.hasOwnProperty.call(props, "reason");
      api.othersZero = Object.prototype.hasOwnProperty.call(props, "others_zero");
    } catch (err) {
      // the defaults stay; the API still validates every control
    }
  }

  // -- the token -----------------------------------------------------------------------------

  function showTokenState() {
    document.getElementById("token-state").textContent = token()
      ? "token set for this tab"
      : "no token: read only";
  }

  function setupToken() {
    const form = document.getElementById("token-form");
    const input = document.getElementById("token");
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const value = input.value.trim();
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      else sessionStorage.removeItem(TOKEN_KEY);
      input.value = "";
      showTokenState();
    });
    document.getElementById("forget-token").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      input.value = "";
      showTokenState();
    });
    showTokenState();
  }

  // -- one card per route --------------------------------------------------------------------

  function buildCard(route) {
    const key = route.key;
    const headingId = nextId("route");
    const card = {
      key,
      route,
      nowS: null,
      subsets: [],
      section: el("section", { class: "route", "aria-labelledby": headingId }),
      phase: el("span", { class: "phase" }),
      weights: el("tbody"),
      facts: el("dl", { class: "facts" }),
      chart: el("figure", { class: "chart" }),
      decisions: el("tbody"),
      pinFields: el("div", { class: "fields" }),
      pinInputs: new Map(),
      sum: el("output", { "aria-live": "polite" }),
      result: el("p", { class: "result", role: "status", "aria-live": "polite" }),
      buttons: {},
    };
    const title = el("h2", { id: headingId, text: key });
    const head = el("div", { class: "route-head" }, title, card.phase);
    const weightsTable = el(
      "table",
      { class: "weights" },
      el("caption", { text: "Current weights" }),
      el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "version" }),
        el("th", { scope: "col", text: "points" }), el("th", { scope: "col", text: "share" }))),
      card.weights,
    );
    const summary = el("div", { class: "summary" }, weightsTable, card.facts);
    const decisionsTable = el(
      "table",
      { class: "decisions" },
      el("caption", { text: "Last decisions" }),
      el("thead", {}, el("tr", {}, ...["when", "phase", "outcome", "weights written", "reason"]
        .map((h) => el("th", { scope: "col", text: h })))),
      card.decisions,
    );
    card.section.append(head, summary, card.chart, decisionsTable, buildControls(card));
    return card;
  }

  function buildControls(card) {
    const ttlId = nextId("ttl");
    const reasonId = nextId("reason");
    const reasonHelpId = nextId("reason-help");
    const ttl = el("input", {
      id: ttlId, type: "number", min: api.ttlMin, max: api.ttlMax, step: "any", value: 600,
      required: true,
    });
    const reason = el("input", {
      id: reasonId, type: "text", maxlength: 200, autocomplete: "off",
      disabled: !api.reason, "aria-describedby": reasonHelpId,
      placeholder: api.reason ? "why (recorded with every control)" : "",
    });
    const reasonHelp = el("span", {
      id: reasonHelpId, class: "help",
      text: api.reason ? "" : "this API version does not record a reason",
    });
    card.ttl = ttl;
    card.reason = reason;
    const submit = el("button", { type: "submit", class: "primary", text: "Pin weights" });
    const form = el(
      "form",
      { class: "pin", "aria-label": `pin weights of ${card.key}` },
      el("fieldset", {},
        el("legend", { text: "Pin weights" }),
        card.pinFields,
        el("p", { class: "help" }, "sum: ", card.sum, " / 100"),
        el("div", { class: "fields" },
          el("div", { class: "field" }, el("label", { for: ttlId, text: "TTL (s)" }), ttl),
          el("div", { class: "field wide" },
            el("label", { for: reasonId, text: "Reason" }), reason, reasonHelp),
          submit)),
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      pin(card);
    });
    const actions = [
      ["release", "Release pin", "DELETE", "override", undefined, "pin released"],
      ["pause", "Pause", "POST", "pause", undefined, "paused"],
      ["resume", "Resume", "POST", "resume", undefined, "resumed"],
      ["shadowOn", "Shadow on", "POST", "shadow", { enabled: true }, "shadow on"],
      ["shadowOff", "Shadow off", "POST", "shadow", { enabled: false }, "shadow off"],
    ];
    const buttons = el("div", {
      class: "buttons", role: "group", "aria-label": `controls of ${card.key}`,
    });
    for (const [name, label, method, action, body, done] of actions) {
      const button = el("button", {
        type: "button", text: label, "aria-label": `${label} ${card.key}`,
      });
      button.addEventListener("click", () => control(card, method, action, body, done));
      card.buttons[name] = button;
      buttons.append(button);
    }
    return el("div", { class: "controls" }, form,
      el("div", {}, el("h3", { text: "Controls" }), buttons, card.result));
  }

  function setPinInputs(card, route) {
    const names = route.weights ? Object.keys(route.weights) : card.subsets;
    if (names.join("\u0000") === [...card.pinInputs.keys()].join("\u0000")) return;
    card.pinInputs.clear();
    card.pinFields.replaceChildren();
    for (const name of names) {
      const id = nextId("w");
      const input = el("input", {
        id, type: "number", min: 0, max: 100, step: 1, required: true,
        value: route.weights ? route.weights[name] : "",
      });
      input.addEventListener("input", () => showSum(card));
      card.pinInputs.set(name, input);
      card.pinFields.append(
        el("div", { class: "field" }, el("label", { for: id, text: `${name} (points)` }), input));
    }
    showSum(card);
  }

  function pinWeights(card) {
    const weights = {};
    for (const [name, input] of card.pinInputs) {
      const value = input.value.trim();
      if (!/^\d+$/.test(value)) return null;
      weights[name] = Number(value);
    }
    return weights;
  }

  function showSum(card) {
    const weights = pinWeights(card);
    const total = weights ? Object.values(weights).reduce((a, b) => a + b, 0) : NaN;
    card.sum.textContent = Number.isFinite(total) ? String(total) : "?";
    card.sum.className = total === 100 ? "" : "sum-bad";
  }

  async function pin(card) {
    if (!token()) {
      show(card.result, "Enter the operator token above first: controls need it.", "error");
      return;
    }
    const weights = pinWeights(card);
    if (weights === null || card.pinInputs.size === 0) {
      show(card.result, "Every version needs a whole number of points (0..100).", "error");
      return;
    }
    const total = Object.values(weights).reduce((a, b) => a + b, 0);
    if (total !== 100) {
      show(card.result, `The points must sum to 100, not ${total}.`, "error");
      return;
    }
    const ttl = Number(card.ttl.value);
    if (!Number.isFinite(ttl) || ttl <= 0) {
      show(card.result, "The TTL must be a number of seconds above 0.", "error");
      return;
    }
    const body = { weights, ttl_s: ttl };
    const reason = card.reason.value.trim();
    if (api.reason && reason) body.reason = reason;
    await control(card, "POST", "override", body, `pinned ${fmtWeights(weights)} for ${ttl} s`);
  }

  async function control(card, method, action, body, done) {
    if (!token()) {
      show(card.result, "Enter the operator token above first: controls need it.", "error");
      return;
    }
    const reason = card.reason.value.trim();
    if (api.reason && reason && !(body && "reason" in body)) body = { ...(body || {}), reason };
    try {
      const answer = await call(method, routePath(card.route, action), body);
      const plan = answer && answer.pin_plan && typeof answer.pin_plan.detail === "string"
        ? ` (${answer.pin_plan.detail})` : "";
      const phase = answer ? answer.phase : "?";
      show(card.result, `${card.key}: ${done}${plan}; phase now ${phase}`, "ok");
      if (answer) updateRoute(card, answer);
    } catch (err) {
      show(card.result, `${card.key}: ${action} refused: ${err.message}`, "error");
    }
    refresh();
  }

  // -- updating a card -----------------------------------------------------------------------

  function updateRoute(card, route) {
    card.route = route;
    card.phase.textContent = route.phase;
    card.phase.className = `phase phase-${/^[a-z-]+$/.test(route.phase) ? route.phase : "other"}`;
    if (route.weights) card.subsets = Object.keys(route.weights);
    card.weights.replaceChildren(
      ...Object.entries(route.weights || {}).map(([name, points], i) =>
        el("tr", {},
          el("th", { scope: "row" }, el("span", { class: `swatch s${i % COLOURS}` }), name),
          el("td", { class: "num", text: points }),
          el("td", {}, el("meter", {
            min: 0, max: 100, value: points, "aria-label": `${name} share`,
          })))),
    );
    if (!route.weights) {
      card.weights.append(el("tr", {}, el("td", { colspan: 3, text: "not known yet" })));
    }
    const c = route.controls || {};
    const left = c.pin && Number.isFinite(c.pin_until_s) && card.nowS !== null
      ? Math.max(0, c.pin_until_s - card.nowS) : null;
    const pinUntil = left === null ? "" : ` for ${left.toFixed(0)} s more`;
    const verify = !route.verify ? "–"
      : route.verify.ok === false ? `NOT followed: ${route.verify.detail}` : route.verify.detail;
    const facts = [
      ["host", route.host],
      ["pin", c.pin ? `${fmtWeights(c.pin)}${pinUntil}` : "none"],
      ["paused", c.paused ? "yes" : "no"],
      ["shadow", c.shadow ? "yes" : "no"],
      ["verify", verify],
    ];
    if (route.failed) facts.push(["failed", route.failed]);
    card.facts.replaceChildren(
      ...facts.flatMap(([dt, dd]) => [el("dt", { text: dt }), el("dd", { text: dd })]));
    card.buttons.release.disabled = !c.pin;
    card.buttons.pause.disabled = !!c.paused;
    card.buttons.resume.disabled = !c.paused;
    card.buttons.shadowOn.disabled = !!c.shadow;
    card.buttons.shadowOff.disabled = !c.shadow;
    setPinInputs(card, route);
  }

  function updateDecisions(card, decisions) {
    const rows = decisions.map((d) =>
      el("tr", {},
        el("td", { text: card.nowS !== null ? fmtAge(card.nowS - d.ts_s) : fmtNumber(d.ts_s, 1) }),
        el("td", { text: d.phase }),
        el("td", { text: d.caller ? `${d.outcome} by ${d.caller}` : d.outcome }),
        el("td", { text: d.wrote ? fmtWeights(d.written) : "–" }),
        el("td", { class: "reason", text: d.reason })));
    if (rows.length === 0) {
      rows.push(el("tr", {}, el("td", { colspan: 5, text: "no decision yet" })));
    }
    card.decisions.replaceChildren(...rows);
  }

  // -- the chart -----------------------------------------------------------------------------

  const PANELS = [
    { key: "weights", title: "weight (points)", factor: 1, digits: 0, fixedMax: 100 },
    { key: "p99_ms", title: "p99 latency (ms)", factor: 1, digits: 0 },
    { key: "error_ratio", title: "5xx (% of requests)", factor: 100, digits: 2, minMax: 1 },
    { key: "rps", title: "requests per second", factor: 1, digits: 0 },
  ];
  const W = 1100, LEFT = 56, RIGHT = 14, TITLE = 22, PANEL_H = 80, BOTTOM = 24;

  function niceMax(value, floor) {
    const v = Math.max(value, floor || 0);
    if (!(v > 0)) return 1;
    const e = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * e >= v) return m * e;
    return 10 * e;
  }

  function drawChart(card, h) {
    const titleId = nextId("chart-title");
    const height = PANELS.length * (TITLE + PANEL_H) + BOTTOM;
    const plotW = W - LEFT - RIGHT;
    const start = h.now_s - h.window_s;
    const x = (t) => LEFT + ((t - start) / h.window_s) * plotW;
    const minutes = Math.round(h.window_s / 60);
    const root = svg("svg", {
      viewBox: `0 0 ${W} ${height}`, role: "img", "aria-labelledby": titleId,
    }, svg("title", {
      id: titleId,
      text: `${card.key}: weights, p99, 5xx and requests per second per version `
        + `over the last ${minutes} min`,
    }));
    PANELS.forEach((panel, p) => {
      const top = p * (TITLE + PANEL_H) + TITLE;
      const values = h.subsets.flatMap((s) => (h[panel.key][s] || [])
        .filter((v) => v !== null).map((v) => v * panel.factor));
      const max = panel.fixedMax || niceMax(values.length ? Math.max(...values) : 0, panel.minMax);
      const y = (v) => top + PANEL_H - (v / max) * PANEL_H;
      root.append(svg("text", { x: LEFT, y: top - 6, class: "title", text: panel.title }));
      root.append(svg("rect", { x: LEFT, y: top, width: plotW, height: PANEL_H, class: "frame" }));
      for (const f of [0, 0.5, 1]) {
        const gy = y(max * f);
        root.append(svg("line", { x1: LEFT, x2: LEFT + plotW, y1: gy, y2: gy, class: "grid" }));
        root.append(svg("text", {
          x: LEFT - 6, y: gy + 4, "text-anchor": "end", class: "axis",
          text: fmtNumber(max * f, panel.digits === 2 && max * f < 10 ? 1 : 0),
        }));
      }
      h.subsets.forEach((name, i) => {
        const series = h[panel.key][name] || [];
        let d = "";
        let pen = false;
        series.forEach((v, k) => {
          if (v === null || !Number.isFinite(v)) {
            pen = false;
            return;
          }
          const px = x(h.ts_s[k]).toFixed(1);
          const py = y(Math.min(v * panel.factor, max)).toFixed(1);
          d += pen ? `L${px} ${py} ` : `M${px} ${py} L${px} ${py} `; // a lone point: a dot
          pen = true;
        });
        if (d) root.append(svg("path", { d, class: `series s${i % COLOURS}` }));
      });
      if (h.ts_s.length === 0) {
        root.append(svg("text", {
          x: LEFT + plotW / 2, y: top + PANEL_H / 2, "text-anchor": "middle", class: "empty",
          text: "no decisions in this window yet",
        }));
      }
    });
    const axisY = PANELS.length * (TITLE + PANEL_H) + 16;
    for (const f of [0, 0.25, 0.5, 0.75, 1]) {
      const label = f === 1 ? "now" : `−${Math.round(minutes * (1 - f))} min`;
      root.append(svg("text", {
        x: LEFT + f * plotW,
        y: axisY,
        "text-anchor": f === 0 ? "start" : f === 1 ? "end" : "middle",
        class: "axis", text: label,
      }));
    }
    const legend = el("ul", { class: "legend" }, ...h.subsets.map((name, i) => {
      const last = (key, factor, digits) => {
        const s = h[key][name] || [];
        for (let k = s.length - 1; k >= 0; k -= 1) {
          if (s[k] !== null) return fmtNumber(s[k] * factor, digits);
        }
        return "–";
      };
      return el("li", {}, el("span", { class: `swatch s${i % COLOURS}` }),
        `${name}: ${last("weights", 1, 0)} pts, p99 ${last("p99_ms", 1, 0)} ms, `
        + `5xx ${last("error_ratio", 100, 2)} %, ${last("rps", 1, 1)} rps`);
    }));
    const note = h.truncated
      ? el("p", { class: "help", text: "only the newest decisions of the window are shown" })
      : null;
    card.chart.replaceChildren(root, el("figcaption", {}, legend, note));
  }

  // -- the refresh cycle ---------------------------------------------------------------------

  async function refreshRoute(card) {
    const key = encodeURIComponent(card.key);
    const [h, decisions] = await Promise.all([
      call("GET", `dashboard/api/history?route=${key}&window_s=${HISTORY_WINDOW_S}`),
      call("GET", `decisions?route=${key}&limit=${DECISIONS_SHOWN}`),
    ]);
    card.nowS = h.now_s;
    drawChart(card, h);
    updateDecisions(card, decisions);
  }

  async function refresh() {
    if (refreshing) return;
    refreshing = true;
    clearTimeout(timer);
    const problems = [];
    try {
      const [ready, routes] = await Promise.all([
        call("GET", "readyz", undefined, { accept: [503] }),
        call("GET", "routes"),
      ]);
      document.getElementById("status").textContent = ready
        ? `${ready.ready ? "ready" : "starting"} · ${ready.leader ? "leader" : "follower"} · `
          + `mode ${ready.mode} · `
          + `${ready.ticks} ticks${ready.observing ? "" : " · NOT observing"}`
        : "";
      const container = document.getElementById("routes");
      const seen = new Set();
      for (const route of routes) {
        seen.add(route.key);
        let card = cards.get(route.key);
        if (!card) {
          card = buildCard(route);
          cards.set(route.key, card);
          container.append(card.section);
        }
        updateRoute(card, route);
      }
      for (const [key, card] of cards) {
        if (!seen.has(key)) {
          card.section.remove();
          cards.delete(key);
        }
      }
      const results = await Promise.allSettled([...cards.values()].map(refreshRoute));
      for (const r of results) if (r.status === "rejected") problems.push(r.reason.message);
      for (const card of cards.values()) updateRoute(card, card.route); // ages need now_s
    } catch (err) {
      problems.push(err.message);
    } finally {
      refreshing = false;
      document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
      if (problems.length) message(problems.join("; "), "error");
      else document.getElementById("messages").replaceChildren();
      if (document.getElementById("auto-refresh").checked) timer = setTimeout(refresh, REFRESH_MS);
    }
  }

  async function main() {
    setupToken();
    document.getElementById("refresh-now").addEventListener("click", refresh);
    document.getElementById("auto-refresh").addEventListener("change", (event) => {
      clearTimeout(timer);
      if (event.target.checked) refresh();
    });
    await learnSchema();
    await refresh();
  }

  main();
})();
