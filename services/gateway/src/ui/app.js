// Marina's web UI: plain JavaScript over the gateway's v2 API, no libraries.
//
// One document serves every page; `route()` reads location.pathname and draws
//   /, /ui            the apps (AppsPage), with a form for a new one;
//   /ui/apps/{id}     one app (AppPage): status, deployment, tasks, output, configuration, versions;
//   /ui/cluster       masters, gateways, agents (ClusterPage).
// Links inside the UI change the page without reloading (history.pushState).
//
// Sections, in order: DOM and formatting helpers; the API client and credentials; the event
// stream; banners and dialogs; what an app's status is and why; the pages; the router.

"use strict";

// ---------------------------------------------------------------------------------------
// DOM and formatting helpers

/** An element: `h("td", {class: "x", onclick: f}, "text", child, [more])`. */
function h(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key in node && typeof value !== "string") node[key] = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const $ = (selector, root = document) => root.querySelector(selector);

function badge(text, tone, title) {
  return h("span", { class: `badge ${tone || ""}`, title }, text);
}

function section(title, id, ...children) {
  return h("section", { class: "card", id }, h("h2", {}, title), ...children);
}

/** `12s ago`, `5m ago`, … for an RFC 3339 time (or a Unix time in seconds). */
function ago(time) {
  if (time === undefined || time === null || time === "") return "";
  const then = typeof time === "number" ? time * 1000 : Date.parse(time);
  if (Number.isNaN(then)) return String(time);
  return `${duration((Date.now() - then) / 1000)} ago`;
}

function duration(seconds) {
  seconds = Math.max(0, Math.round(seconds));
  if (seconds < 60) return `${seconds}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ${seconds % 60}s`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)}h ${Math.floor((seconds % 3600) / 60)}m`;
  return `${Math.floor(seconds / 86400)}d ${Math.floor((seconds % 86400) / 3600)}h`;
}

/** A local date and time for an RFC 3339 time, with the raw value as its tooltip. */
function when(time) {
  if (!time) return h("span", { class: "muted" }, "—");
  const date = new Date(time);
  if (Number.isNaN(date.getTime())) return h("time", {}, time);
  const two = (n) => String(n).padStart(2, "0");
  const text = `${date.getFullYear()}-${two(date.getMonth() + 1)}-${two(date.getDate())} `
    + `${two(date.getHours())}:${two(date.getMinutes())}:${two(date.getSeconds())}`;
  return h("time", { datetime: time, title: `${time} (UTC)` }, text);
}

function number(value, digits = 2) {
  if (value === undefined || value === null) return "—";
  return Number.isInteger(value) ? String(value) : Number(value).toFixed(digits).replace(/\.?0+$/, "");
}

/** Megabytes as MiB or GiB. */
function megabytes(mb) {
  if (mb === undefined || mb === null) return "—";
  return mb >= 1024 ? `${number(mb / 1024, 1)} GiB` : `${number(mb, 0)} MiB`;
}

/** The byte length of text as UTF-8 (what a file read's `data` stands for). */
function utf8Length(text) {
  return new TextEncoder().encode(text).length;
}

/** One segment of a path, percent-encoded. Refuses what a URL would not keep as one
 * segment: an empty one, `.` and `..` (which the URL parser resolves, encoded or not, so
 * that `/v2/apps/../deployments/x` would call `/v2/deployments/x`). */
function pathSegment(value) {
  const text = String(value);
  if (text === "" || text === "." || text === "..") throw new ApiError(0, `not a valid path segment: ${JSON.stringify(text)}`);
  return encodeURIComponent(text);
}

/** An app id's segments (`/prod/web` → `["prod", "web"]`), or null when it is not one:
 * not absolute, or with an empty, `.` or `..` segment. */
function appIdSegments(id) {
  if (typeof id !== "string" || !id.startsWith("/")) return null;
  const segments = id.slice(1).split("/");
  return segments.every((s) => s !== "" && s !== "." && s !== "..") ? segments : null;
}

/** The app id a page path names after `/ui/apps/` (each segment percent-decoded), or null
 * when it names none: a bad escape, an empty, `.` or `..` segment, or a decoded `/`. */
function appIdFromPath(rest) {
  const segments = [];
  for (const raw of rest.split("/")) {
    let segment;
    try {
      segment = decodeURIComponent(raw);
    } catch {
      return null;
    }
    if (segment.includes("/")) return null;
    segments.push(segment);
  }
  const id = "/" + segments.join("/");
  return appIdSegments(id) ? id : null;
}

function appPath(prefix, id) {
  const segments = appIdSegments(id);
  if (!segments) throw new ApiError(0, `not a valid app id: ${JSON.stringify(id)}`);
  return prefix + "/" + segments.map(pathSegment).join("/");
}

/** The page path of an app: `/prod/web` → `/ui/apps/prod/web`. */
function appPagePath(id) {
  return appPath("/ui/apps", id);
}

/** The API path of an app: `/prod/web` → `/v2/apps/prod/web`. */
function appApiPath(id) {
  return appPath("/v2/apps", id);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------------------
// The API client, and credentials
//
// With `auth.http_credentials` set, the gateway answers 401 with `WWW-Authenticate: Basic`
// to every request but /ping and /health — this page and its script included. So the
// browser asks for the user and password (its own prompt) before the UI loads, and from
// then on sends them itself with every same-origin request the page makes: fetch calls and
// the event stream alike. The UI never sees or stores a password. (A sign-in form of the
// UI's own could not do better here: a fetch answered 401 with `WWW-Authenticate: Basic`
// makes the browser prompt anyway, whatever the page does.) A 401 while the page is open
// means the credentials changed: the banner says to reload, which prompts again.
//
// Calls go to this origin only; writes send JSON, as the gateway's CSRF rules require
// (`Content-Type: application/json`; the browser adds `Origin`, which must be this one).

class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body || {};
    this.details = Array.isArray(this.body.details) ? this.body.details : [];
  }
}

const api = {
  /** Calls the API; resolves to the parsed JSON body, rejects with an ApiError. */
  async call(method, path, body) {
    const init = { method, headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store" };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      // Absolute, from the origin: a page opened as http://user:pass@host/ has credentials
      // in its own URL, which fetch refuses to resolve relative paths against.
      response = await fetch(location.origin + path, init);
    } catch (error) {
      throw new ApiError(0, `the gateway did not answer (${error.message})`);
    }
    const text = await response.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      json = null;
    }
    if (response.status === 401) {
      throw new ApiError(401, "the gateway refused this browser's credentials: reload the page to sign in again", json);
    }
    if (!response.ok) {
      const message = (json && json.message) || text.slice(0, 300) || response.statusText;
      throw new ApiError(response.status, `${message} (${response.status})`, json);
    }
    return json;
  },

  get: (path) => api.call("GET", path),
};

// ---------------------------------------------------------------------------------------
// The event stream (`/v2/events`, server-sent events)
//
// Read with fetch and a stream reader rather than EventSource: EventSource hides why a
// connection failed (a 401, a 503 from a gateway that knows no leader), which is shown
// here, and the same call could send an `Authorization` header should the UI ever hold
// credentials itself (EventSource cannot). Reconnects with
// a growing pause; after each (re)connection the page reloads its data, since events
// missed meanwhile (or after `event_stream_lagged`) are not replayed. A standby gateway
// forwards the stream from the leader.

const events = {
  controller: null,
  listeners: new Set(),

  start() {
    this.stop();
    this.controller = new AbortController();
    this.run(this.controller.signal);
  },

  stop() {
    if (this.controller) this.controller.abort();
    this.controller = null;
  },

  state(state, detail) {
    const indicator = $("#live");
    indicator.className = `live ${state}`;
    indicator.textContent = { live: "live", connecting: "connecting…", down: "reconnecting…", off: "not live" }[state];
    indicator.title = detail || "Live updates from /v2/events";
    indicator.dataset.state = state;
  },

  async run(signal) {
    for (let attempt = 0; !signal.aborted; attempt++) {
      try {
        this.state("connecting");
        const response = await fetch(location.origin + "/v2/events", {
          headers: { Accept: "text/event-stream" },
          credentials: "same-origin",
          cache: "no-store",
          signal,
        });
        if (response.status === 401) {
          this.state("off", "events: the credentials were refused; reload the page to sign in again");
          return;
        }
        if (!response.ok) {
          const text = await response.text();
          throw new Error(`${response.status}: ${text.slice(0, 200)}`);
        }
        attempt = 0;
        this.state("live");
        this.emit({ eventType: "stream_connected" });
        await this.read(response.body, signal);
        throw new Error("the gateway closed the stream");
      } catch (error) {
        if (signal.aborted) return;
        this.state("down", `events: ${error.message}`);
      }
      await sleep(Math.min(1000 * 2 ** attempt, 15000));
    }
  },

  async read(body, signal) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    while (!signal.aborted) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
        this.dispatch(block);
      }
    }
  },

  /** One SSE block: `event:` and `data:` lines (data lines joined with newlines). */
  dispatch(block) {
    const data = [];
    for (const line of block.split(/\r?\n/)) {
      if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
    if (!data.length) return;
    try {
      this.emit(JSON.parse(data.join("\n")));
    } catch {
      // Not JSON: not one of Marathon's events, nothing to show.
    }
  },

  emit(event) {
    for (const listener of this.listeners) listener(event);
  },
};

/** Whether an event is the stream's own news (connected, or events lost): every page
 * reloads all it shows, since what happened meanwhile is not replayed. */
function streamEvent(event) {
  return event.eventType === "stream_connected" || event.eventType === "event_stream_lagged";
}

/** The ids of the apps an event is about: `appId` (tasks, health, a deleted app's end),
 * `runSpecId` (instances), `appDefinition.id` (API changes), and for a deployment its
 * plan's `affectedApps` and the apps of its `original` and `target` groups. */
function eventApps(event) {
  const apps = new Set();
  const add = (id) => {
    if (typeof id === "string") apps.add(id);
  };
  add(event.appId);
  add(event.runSpecId);
  if (event.appDefinition) add(event.appDefinition.id);
  const plan = event.plan;
  if (plan) {
    for (const id of plan.affectedApps || []) add(id);
    const walk = (group) => {
      if (!group) return;
      for (const app of group.apps || []) add(app && app.id);
      for (const child of group.groups || []) walk(child);
    };
    walk(plan.original);
    walk(plan.target);
  }
  return apps;
}

// ---------------------------------------------------------------------------------------
// Banners (what an action did, or why it failed) and dialogs

function banner(text, tone = "ok", actions = []) {
  const close = h("button", { type: "button", class: "quiet close", title: "Dismiss" }, "×");
  const node = h("div", { class: `banner ${tone}`, role: tone === "error" ? "alert" : "status" },
    h("span", { class: "banner-text" }, text), ...actions, close);
  close.addEventListener("click", () => node.remove());
  const banners = $("#banners");
  while (banners.children.length >= 3) banners.firstElementChild.remove();
  banners.append(node);
  // Errors stay until dismissed; the rest fade after a while.
  if (tone !== "error") setTimeout(() => node.remove(), 8000);
  return node;
}

/** Runs an action, showing what it did or why it failed. A 409 (a deployment holds the
 * app) offers to force it. Resolves to the answer, or null when it failed. */
async function act(label, action, options = {}) {
  try {
    const answer = await action(false);
    const deployment = answer && answer.deploymentId ? ` (deployment ${answer.deploymentId})` : "";
    banner(`${label}${deployment}`, "ok");
    return answer || {};
  } catch (error) {
    const actions = [];
    if (error.status === 409 && options.forceable) {
      const force = h("button", { type: "button", class: "danger small" }, "Force it");
      force.addEventListener("click", async () => {
        force.closest(".banner").remove();
        try {
          await action(true);
          banner(`${label} (forced)`, "ok");
          if (options.after) options.after();
        } catch (again) {
          banner(`${label} failed: ${again.message}`, "error");
        }
      });
      actions.push(force);
    }
    banner(`${label} failed: ${error.message}`, "error", actions);
    return null;
  }
}

/** Asks to confirm; resolves to true if confirmed. */
function confirmAction(title, text, button) {
  const dialog = $("#confirm-dialog");
  $("#confirm-title").textContent = title;
  $("#confirm-text").textContent = text;
  $("#confirm-ok").textContent = button;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

/** An inline error in a page's section (what failed to load, and why). */
function errorBox(error) {
  return h("p", { class: "error" }, error.message || String(error));
}

// ---------------------------------------------------------------------------------------
// An app's status, and why

/** What each of Marathon's reasons for declining an offer means for the app. */
const DECLINE_REASONS = {
  UnfulfilledRole: "no agent offers resources for its role",
  UnfulfilledConstraint: "its constraints rule out the agents that offered",
  NoCapableRuntime: "no agent has a runtime that can run it (an image needs Docker or containerd)",
  NoCorrespondingReservationFound: "no reservation matches it",
  InsufficientCpus: "not enough free CPUs on any agent",
  InsufficientMemory: "not enough free memory on any agent",
  InsufficientDisk: "not enough free disk on any agent",
  InsufficientGpus: "not enough free GPUs on any agent",
  InsufficientPorts: "the host ports it needs are not free",
};

/** Why an app waits in the launch queue: a list of nodes. */
function queueReasons(entry) {
  const reasons = [];
  const left = entry.delay && entry.delay.timeLeftSeconds;
  if (left > 0) reasons.push(`backing off after failed launches: next attempt in ${duration(left)}`);
  const summary = entry.processedOffersSummary || {};
  const declined = (summary.rejectSummaryLaunchAttempt || []).filter((step) => step.declined > 0);
  for (const step of declined) {
    reasons.push([
      h("code", { class: "reason-code" }, step.reason), " ",
      DECLINE_REASONS[step.reason] || "offers declined",
      h("span", { class: "muted" }, ` (${step.declined} of ${step.processed} offers)`),
    ]);
  }
  if (!declined.length && !(left > 0)) {
    reasons.push(summary.processedOffersCount
      ? `${summary.processedOffersCount} offers considered so far`
      : "waiting for an offer from the agents");
  }
  reasons.push(h("span", { class: "muted" }, `${entry.count} instance${entry.count === 1 ? "" : "s"} to launch`
    + (entry.since ? `, waiting since ${ago(entry.since)}` : "")));
  return reasons;
}

/** Whether the app's last task failure is of the configuration it runs now (a failure of a
 * replaced configuration says nothing about the current one). */
function failsNow(app) {
  const failure = app.lastTaskFailure;
  if (!failure) return false;
  const since = app.versionInfo && app.versionInfo.lastConfigChangeAt;
  return !since || !failure.version || failure.version >= since;
}

/** The app's status: badges (state and counts) and the reasons behind them. */
function appStatus(app, queued, deployments) {
  const badges = [];
  const reasons = [];
  const target = app.instances || 0;
  const running = app.tasksRunning || 0;
  const healthy = app.tasksHealthy || 0;
  const ids = new Set((app.deployments || []).map((d) => d.id));
  const mine = deployments.filter((d) => ids.has(d.id) || (d.affectedApps || []).includes(app.id));
  for (const deployment of mine) {
    badges.push(badge(`deploying (step ${deployment.currentStep}/${deployment.totalSteps})`, "info"));
  }
  const failing = failsNow(app) && running < target;
  if (failing) {
    badges.push(badge("failing", "bad"));
    reasons.push([h("strong", {}, "last failure: "), app.lastTaskFailure.message || app.lastTaskFailure.state,
      h("span", { class: "muted" }, ` (${ago(app.lastTaskFailure.timestamp)})`)]);
  }
  if (queued) {
    badges.push(badge("waiting", "warn"));
    reasons.push(...queueReasons(queued));
  }
  if (target === 0) {
    badges.push(running ? badge(`suspending (${running} left)`, "info") : badge("suspended", "idle"));
  } else if ((app.healthChecks || []).length) {
    badges.push(badge(`healthy ${healthy}/${target}`, healthy >= target ? "ok" : "warn"));
  } else {
    badges.push(badge(`running ${running}/${target}`, running >= target ? "ok" : "warn"));
  }
  if (app.tasksStaged) reasons.push(h("span", { class: "muted" }, `${app.tasksStaged} staging`));
  if (app.tasksUnhealthy) reasons.push(`${app.tasksUnhealthy} unhealthy`);
  return { badges, reasons, deployments: mine };
}

function reasonList(reasons) {
  if (!reasons.length) return null;
  return h("ul", { class: "reasons" }, reasons.map((reason) => h("li", {}, reason)));
}

// ---------------------------------------------------------------------------------------
// Pages

/** What every page shares: reloading its data when events say something changed (at most
 * every 300 ms, never two loads at once), periodically as well, and stopping it all when
 * the page is left. */
class Page {
  constructor(root) {
    this.root = root;
    this.timers = [];
    this.disposed = false;
    this.pending = null;
    this.loading = false;
    this.again = false;
  }

  every(ms, fn) {
    this.timers.push(setInterval(() => {
      if (!document.hidden) fn();
    }, ms));
  }

  schedule(delay = 300) {
    if (this.pending || this.disposed) return;
    this.pending = setTimeout(() => {
      this.pending = null;
      this.reload();
    }, delay);
  }

  async reload() {
    if (this.disposed) return;
    if (this.loading) {
      this.again = true;
      return;
    }
    this.loading = true;
    try {
      await this.load();
    } finally {
      this.loading = false;
      if (this.again) {
        this.again = false;
        this.schedule();
      }
    }
  }

  /** An event: by default anything but the stream's own greeting reloads. */
  onEvent(event) {
    if (event.eventType !== "event_stream_attached") this.schedule();
  }

  dispose() {
    this.disposed = true;
    for (const timer of this.timers) clearInterval(timer);
    clearTimeout(this.pending);
  }
}

/** Fields of a form that 422 details can name, by the path they name. */
function fieldErrors(container, details, fields) {
  for (const node of container.querySelectorAll(".field-error")) node.remove();
  for (const node of container.querySelectorAll(".invalid")) node.classList.remove("invalid");
  const rest = [];
  for (const detail of details) {
    const path = detail.path || "/";
    const key = Object.keys(fields).find((prefix) => path === prefix || path.startsWith(prefix + "/") || path.startsWith(prefix + "("));
    const text = (detail.errors || []).join("; ");
    if (key) {
      const input = fields[key];
      input.classList.add("invalid");
      input.closest("label").append(h("span", { class: "field-error", dataset: { path } }, `${path}: ${text}`));
    } else {
      rest.push(detail);
    }
  }
  return rest;
}

/** A list of 422 details: each path highlighted, with its errors. */
function detailList(details, onPick) {
  return h("ul", { class: "detail-list" }, details.map((detail) => {
    const item = h("li", { dataset: { path: detail.path || "/" } },
      h("code", { class: "path" }, detail.path || "/"), " ", (detail.errors || []).join("; "));
    if (onPick) {
      item.classList.add("pickable");
      item.title = "Show it in the editor";
      item.addEventListener("click", () => onPick(detail.path || "/"));
    }
    return item;
  }));
}

class AppsPage extends Page {
  constructor(root) {
    super(root);
    this.form = this.newAppForm();
    this.table = h("table", { id: "apps-table", class: "data" },
      h("thead", {}, h("tr", {}, ["App", "Status", "Instances", "CPUs", "Memory", "Changed"].map((t) => h("th", {}, t)))),
      h("tbody", {}));
    this.error = h("div", { id: "apps-error" });
    this.toggle = h("button", { type: "button", id: "new-app-toggle", class: "primary" }, "New app");
    this.toggle.addEventListener("click", () => {
      this.form.hidden = !this.form.hidden;
      if (!this.form.hidden) this.form.elements.id.focus();
    });
    root.append(
      h("div", { class: "page-head" }, h("h1", {}, "Apps"), h("span", { class: "spacer" }), this.toggle),
      this.form,
      this.error,
      h("div", { class: "card flush" }, this.table),
    );
    this.every(5000, () => this.reload());
    this.reload();
  }

  newAppForm() {
    const field = (label, input, hint, wide) => h("label", { class: wide ? "wide" : "" }, h("span", { class: "label" }, label), input,
      hint ? h("span", { class: "hint" }, hint) : null);
    const form = h("form", { id: "new-app-form", class: "card form-grid", hidden: true, novalidate: true });
    const inputs = {
      id: h("input", { name: "id", placeholder: "/prod/web", required: true, autocomplete: "off" }),
      cmd: h("textarea", { name: "cmd", rows: 2, placeholder: "python3 -m http.server $PORT0", spellcheck: "false" }),
      image: h("input", { name: "image", placeholder: "nginx:1.27" }),
      instances: h("input", { name: "instances", type: "number", min: 0, value: "1" }),
      cpus: h("input", { name: "cpus", type: "number", min: 0, step: "0.05", value: "0.1" }),
      mem: h("input", { name: "mem", type: "number", min: 0, step: "1", value: "32" }),
      extra: h("textarea", { name: "extra", rows: 3, spellcheck: "false",
        placeholder: '{"env": {"MODE": "prod"}, "portDefinitions": [{"port": 0}]}' }),
    };
    this.inputs = inputs;
    this.formErrors = h("div", { id: "new-app-errors" });
    append(form, [
      h("h2", { class: "wide" }, "New app"),
      field("ID", inputs.id, "Slashes make groups: /prod/web"),
      field("Image", inputs.image, "Optional: runs on Docker or containerd"),
      field("Command", inputs.cmd, "Run by sh -c on the agent", true),
      h("div", { class: "row wide" }, field("Instances", inputs.instances), field("CPUs", inputs.cpus), field("Memory (MiB)", inputs.mem)),
      field("More of the definition (JSON, optional)", inputs.extra, "Merged into the app: any field of Marathon's app definition", true),
      h("div", { class: "wide" }, this.formErrors),
      h("div", { class: "buttons wide" },
        h("button", { type: "button", class: "quiet", onclick: () => { form.hidden = true; } }, "Cancel"),
        h("button", { type: "submit", class: "primary", id: "new-app-submit" }, "Create")),
    ]);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.create();
    });
    return form;
  }

  async create() {
    const { inputs } = this;
    const fields = { "/id": inputs.id, "/cmd": inputs.cmd, "/container": inputs.image, "/instances": inputs.instances,
      "/cpus": inputs.cpus, "/mem": inputs.mem };
    fieldErrors(this.form, [], fields);
    this.formErrors.replaceChildren();
    let app = {};
    if (inputs.extra.value.trim()) {
      try {
        app = JSON.parse(inputs.extra.value);
      } catch (error) {
        this.formErrors.append(h("p", { class: "error" }, `More of the definition: not JSON (${error.message})`));
        return;
      }
    }
    app.id = inputs.id.value.trim();
    if (inputs.cmd.value.trim()) app.cmd = inputs.cmd.value;
    if (inputs.image.value.trim()) {
      app.container = { type: "DOCKER", ...(app.container || {}), docker: { ...((app.container || {}).docker || {}), image: inputs.image.value.trim() } };
    }
    // Numbers as typed (the gateway says what is wrong with them, next to the field).
    for (const key of ["instances", "cpus", "mem"]) {
      const raw = inputs[key].value.trim();
      if (raw !== "") app[key] = Number.isNaN(Number(raw)) ? raw : Number(raw);
    }
    const button = $("#new-app-submit", this.form);
    button.disabled = true;
    try {
      const created = await api.call("POST", "/v2/apps", app);
      banner(`Created ${created.id}`, "ok");
      this.form.reset();
      this.form.hidden = true;
      navigate(appPagePath(created.id));
    } catch (error) {
      const rest = fieldErrors(this.form, error.details, fields);
      this.formErrors.append(h("p", { class: "error" }, error.message));
      if (rest.length) this.formErrors.append(detailList(rest));
    } finally {
      button.disabled = false;
    }
  }

  async load() {
    try {
      const [list, queue, deployments] = await Promise.all([
        api.get("/v2/apps?embed=apps.lastTaskFailure&embed=apps.counts&embed=apps.deployments"),
        api.get("/v2/queue"),
        api.get("/v2/deployments"),
      ]);
      if (this.disposed) return;
      this.error.replaceChildren();
      const queued = new Map((queue.queue || []).map((entry) => [entry.app.id, entry]));
      const apps = (list.apps || []).sort((a, b) => a.id.localeCompare(b.id));
      const rows = apps.map((app) => {
        const status = appStatus(app, queued.get(app.id), deployments);
        const link = appIdSegments(app.id) ? h("a", { href: appPagePath(app.id), "data-nav": true, class: "app-link" }, app.id) : app.id;
        const row = h("tr", { dataset: { appId: app.id } },
          h("td", { class: "id" }, link, h("div", { class: "muted small" }, app.cmd || (app.container && app.container.docker && app.container.docker.image) || "")),
          h("td", { class: "status" }, h("div", { class: "badges" }, status.badges), reasonList(status.reasons)),
          h("td", { class: "num" }, `${app.tasksRunning || 0} / ${app.instances}`),
          h("td", { class: "num" }, number(app.cpus)),
          h("td", { class: "num" }, megabytes(app.mem)),
          h("td", {}, ago(app.versionInfo ? app.versionInfo.lastConfigChangeAt : app.version)));
        return row;
      });
      if (!rows.length) {
        rows.push(h("tr", {}, h("td", { colspan: 6, class: "empty" }, "No apps yet. ",
          h("a", { href: "#", onclick: (e) => { e.preventDefault(); this.toggle.click(); } }, "Create one"), ".")));
      }
      $("tbody", this.table).replaceChildren(...rows);
    } catch (error) {
      this.error.replaceChildren(errorBox(error));
    }
  }
}

/** Follows a file of a task's sandbox (`/v2/tasks/{id}/files/read`), polling every second
 * while the page is visible: starts at the last TAIL bytes, then reads from where the
 * last read ended (`offset` + the bytes `data` stands for). Each `follow` starts a new
 * generation: what a read of an earlier one answers late is dropped, and a read that
 * hangs is given up after a while, so one slow agent never stalls the pane. */
class LogFollower {
  static TAIL = 16 * 1024;
  static CHUNK = 64 * 1024;
  static KEEP = 256 * 1024;
  static TIMEOUT = 10000;

  constructor(output, status) {
    this.output = output;
    this.status = status;
    this.timer = null;
    this.generation = 0;
    this.taskId = null;
  }

  follow(taskId, file) {
    this.stop();
    const generation = ++this.generation;
    this.taskId = taskId;
    this.file = file;
    this.offset = null;
    this.partialLine = false;
    this.busy = false;
    this.output.textContent = "";
    this.output.dataset.task = taskId;
    this.output.dataset.file = file;
    this.say(`opening ${file} of ${taskId}…`);
    this.timer = setInterval(() => this.tick(generation), 1000);
    this.tick(generation);
  }

  stop() {
    clearInterval(this.timer);
    this.timer = null;
  }

  say(text, error = false) {
    this.status.textContent = text;
    this.status.className = `log-status ${error ? "error" : "muted"}`;
  }

  async read(offset, length) {
    const query = new URLSearchParams({ path: this.file, offset: String(offset) });
    if (length) query.set("length", String(length));
    const path = `/v2/tasks/${pathSegment(this.taskId)}/files/read?${query}`;
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new ApiError(0, "the read took too long; retrying")), LogFollower.TIMEOUT);
    });
    try {
      return await Promise.race([api.get(path), timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  async tick(generation) {
    const current = () => generation === this.generation;
    if (!current() || this.busy || document.hidden) return;
    this.busy = true;
    try {
      if (this.offset === null) {
        const size = (await this.read(-1)).offset || 0;
        if (!current()) return;
        this.offset = Math.max(0, size - LogFollower.TAIL);
        this.partialLine = this.offset > 0;
      }
      // Catch up a few chunks at most per second.
      for (let round = 0; round < 4; round++) {
        const answer = await this.read(this.offset, LogFollower.CHUNK);
        if (!current()) return;
        const data = answer.data || "";
        if (!data) break;
        const bytes = utf8Length(data);
        this.offset = answer.offset + bytes;
        this.write(data);
        if (bytes < LogFollower.CHUNK) break;
      }
      this.say(`following ${this.file} of ${this.taskId} · ${this.offset} bytes`);
    } catch (error) {
      if (!current()) return;
      this.say(`${this.file} of ${this.taskId}: ${error.message}`, true);
      // The task's sandbox is gone (or the path is refused): nothing more will come.
      if (error.status === 404 || error.status === 400 || error.status === 403) this.stop();
    } finally {
      if (current()) this.busy = false;
    }
  }

  write(text) {
    if (this.partialLine) {
      // Started in the middle of the file: from the first whole line.
      const newline = text.indexOf("\n");
      if (newline < 0) return;
      text = text.slice(newline + 1);
      this.partialLine = false;
    }
    const output = this.output;
    const atBottom = output.scrollTop + output.clientHeight >= output.scrollHeight - 24;
    output.append(text);
    if (output.textContent.length > LogFollower.KEEP) {
      output.textContent = output.textContent.slice(-LogFollower.KEEP / 2);
    }
    if (atBottom) output.scrollTop = output.scrollHeight;
  }
}

/** Where a 422 detail's path (`/container/docker/image`, `/constraints(0)`) is in JSON text:
 * each of its names in turn, each after the last. */
function locatePath(text, path) {
  let at = -1;
  let length = 0;
  for (const part of path.split("/").filter(Boolean)) {
    const name = part.replace(/\(\d+\)$/, "");
    const found = text.indexOf(`"${name}"`, Math.max(at, 0));
    if (found < 0) break;
    at = found;
    length = name.length + 2;
  }
  return at < 0 ? null : [at, at + length];
}

/** What of an app's JSON is state, not definition (not shown in the editor, not sent). */
const STATE_FIELDS = ["tasks", "tasksRunning", "tasksStaged", "tasksHealthy", "tasksUnhealthy", "deployments",
  "lastTaskFailure", "taskStats", "readinessCheckResults", "version", "versionInfo"];

function definitionOf(app) {
  const definition = { ...app };
  for (const key of STATE_FIELDS) delete definition[key];
  return definition;
}

class AppPage extends Page {
  constructor(root, id) {
    super(root);
    this.id = id;
    this.app = null;
    this.dirty = false;
    this.logs = null;
    this.build();
    this.every(5000, () => this.reload());
    this.reload();
    this.loadVersions();
  }

  build() {
    const id = this.id;
    this.title = h("h1", { id: "app-title" }, id);
    this.badges = h("div", { id: "app-status", class: "badges" });
    this.error = h("div", { id: "app-error" });

    this.scaleInput = h("input", { id: "scale-input", type: "number", min: 0, "aria-label": "Instances" });
    this.scaleInput.addEventListener("input", () => { this.scaleEdited = true; });
    const scale = h("form", { id: "scale-form", class: "inline" },
      h("label", {}, "Instances ", this.scaleInput),
      h("button", { type: "submit", id: "scale-button" }, "Scale"));
    scale.addEventListener("submit", (event) => {
      event.preventDefault();
      this.scale(Number(this.scaleInput.value));
    });
    const actions = h("div", { class: "actions" }, scale,
      h("button", { type: "button", id: "restart", onclick: () => this.restart() }, "Restart"),
      h("button", { type: "button", id: "suspend", onclick: () => this.suspend() }, "Suspend"),
      h("button", { type: "button", id: "destroy", class: "danger", onclick: () => this.destroy() }, "Destroy"));

    this.deployment = h("div", { id: "deployment" });
    this.problems = h("div", { id: "problems" });

    this.tasksBody = h("tbody", {});
    const tasks = h("table", { id: "tasks-table", class: "data" },
      h("thead", {}, h("tr", {}, ["Task", "Host", "Ports", "Health", "State", "Age", ""].map((t) => h("th", {}, t)))),
      this.tasksBody);

    this.logOutput = h("pre", { id: "log-output", class: "log", tabindex: 0 });
    this.logStatus = h("div", { id: "log-status", class: "log-status muted" }, "No task to follow: “Output” on a task above shows its stdout or stderr.");
    this.logFile = h("select", { id: "log-file", "aria-label": "File" }, h("option", { value: "stdout" }, "stdout"), h("option", { value: "stderr" }, "stderr"));
    this.logFile.addEventListener("change", () => this.logs && this.logs.taskId && this.logs.follow(this.logs.taskId, this.logFile.value));
    this.logs = new LogFollower(this.logOutput, this.logStatus);

    this.summary = h("dl", { id: "config-summary", class: "summary" });
    this.editor = h("textarea", { id: "editor", class: "editor", spellcheck: "false", rows: 18, "aria-label": "App definition (JSON)" });
    this.editor.addEventListener("input", () => this.setDirty(true));
    this.editorState = h("span", { id: "editor-state", class: "muted" });
    this.editErrors = h("div", { id: "edit-errors" });
    const editorButtons = h("div", { class: "buttons" }, this.editorState, h("span", { class: "spacer" }),
      h("button", { type: "button", id: "reset-edit", class: "quiet", onclick: () => this.resetEditor() }, "Discard changes"),
      h("button", { type: "button", id: "deploy-edit", class: "primary", onclick: () => this.deployEdit() }, "Deploy changes"));

    this.versionsBody = h("tbody", {});
    this.versionView = h("pre", { id: "version-view", class: "json", hidden: true });
    this.versionsMore = h("button", { type: "button", class: "quiet small", hidden: true, onclick: () => {
      this.allVersions = true;
      this.loadVersions();
    } });

    this.root.append(
      h("div", { class: "crumbs" }, h("a", { href: "/ui", "data-nav": true }, "Apps"), " / ", id),
      h("div", { class: "page-head" }, this.title, this.badges, h("span", { class: "spacer" }), actions),
      this.error,
      this.deployment,
      this.problems,
      section("Tasks", "tasks-section", tasks),
      section("Output", "logs-section", h("div", { class: "log-head" }, this.logStatus, h("span", { class: "spacer" }), this.logFile), this.logOutput),
      section("Configuration", "config-section", this.summary,
        h("h3", {}, "Definition"),
        h("p", { class: "muted small" }, "Edit and deploy: the app becomes exactly this (PUT with partialUpdate=false). Errors are listed under the editor; click one to find it."),
        this.editor, this.editErrors, editorButtons),
      section("Versions", "versions-section",
        h("table", { id: "versions-table", class: "data" },
          h("thead", {}, h("tr", {}, ["Version", "", ""].map((t) => h("th", {}, t)))), this.versionsBody),
        this.versionsMore, this.versionView),
    );
  }

  dispose() {
    super.dispose();
    clearTimeout(this.pendingVersions);
    this.logs.stop();
  }

  /** Events of this app only (another app's tasks or deployments change nothing here); a
   * change of its definition or a deployment's end makes versions to list. */
  onEvent(event) {
    if (!streamEvent(event) && !eventApps(event).has(this.id)) return;
    this.schedule();
    const type = event.eventType;
    if (streamEvent(event) || type === "api_post_event" || type === "deployment_success" || type === "deployment_failed") {
      this.scheduleVersions();
    }
  }

  /** Versions reloaded once for a burst of events (at most every 300 ms). */
  scheduleVersions(delay = 300) {
    if (this.pendingVersions || this.disposed) return;
    this.pendingVersions = setTimeout(() => {
      this.pendingVersions = null;
      this.loadVersions();
    }, delay);
  }

  async load() {
    let app;
    let queue;
    let deployments;
    try {
      [app, queue, deployments] = await Promise.all([
        api.get(`${appApiPath(this.id)}?embed=app.readiness`).then((answer) => answer.app),
        api.get("/v2/queue"),
        api.get("/v2/deployments"),
      ]);
    } catch (error) {
      if (this.disposed) return;
      if (error.status === 404) {
        this.error.replaceChildren(h("p", { class: "error" }, `No app ${this.id} (it may have been destroyed). `,
          h("a", { href: "/ui", "data-nav": true }, "Back to the apps")));
        this.badges.replaceChildren(badge("gone", "idle"));
        this.deployment.replaceChildren();
        this.problems.replaceChildren();
        this.tasksBody.replaceChildren(h("tr", {}, h("td", { colspan: 7, class: "empty" }, "No tasks.")));
        this.logs.stop();
      } else {
        this.error.replaceChildren(errorBox(error));
      }
      return;
    }
    if (this.disposed) return;
    this.error.replaceChildren();
    this.app = app;
    const queued = (queue.queue || []).find((entry) => entry.app.id === app.id);
    const status = appStatus(app, queued, deployments);
    this.badges.replaceChildren(...status.badges);
    if (!this.scaleEdited || document.activeElement !== this.scaleInput) {
      this.scaleInput.value = app.instances;
      this.scaleEdited = false;
    }
    this.renderDeployments(app, status.deployments);
    this.renderProblems(app, queued);
    this.renderTasks(app);
    this.renderSummary(app);
    if (!this.dirty) this.resetEditor();
  }

  renderDeployments(app, deployments) {
    if (!deployments.length) {
      this.deployment.replaceChildren();
      return;
    }
    const target = app.instances || 0;
    const cards = deployments.map((deployment) => {
      const actions = (deployment.currentActions || []).filter((action) => action.app === app.id);
      const readiness = actions.flatMap((action) => action.readinessCheckResults || []);
      const hasReadiness = (app.readinessChecks || []).length > 0;
      const ready = hasReadiness ? readiness.filter((result) => result.ready).length : app.tasksRunning || 0;
      const counts = [
        ["staged", app.tasksStaged || 0],
        ["running", app.tasksRunning || 0],
        ...((app.healthChecks || []).length ? [["healthy", app.tasksHealthy || 0]] : []),
        ["ready", ready],
      ];
      const bar = h("div", { class: "progress", title: `${app.tasksRunning || 0} of ${target} running` });
      const fill = h("div", { class: "progress-fill" });
      fill.style.width = `${target ? Math.min(100, (100 * (app.tasksRunning || 0)) / target) : 100}%`;
      bar.append(fill);
      return h("div", { class: "deployment", dataset: { deploymentId: deployment.id } },
        h("div", { class: "deployment-head" },
          h("strong", { class: "deployment-step" }, `Step ${deployment.currentStep} of ${deployment.totalSteps}`),
          h("span", { class: "muted" }, (deployment.currentActions || []).map((a) => `${a.action} ${a.app}`).join(", ")),
          h("span", { class: "spacer" }),
          h("button", { type: "button", class: "rollback-deployment", onclick: () => this.cancelDeployment(deployment, false) }, "Roll back"),
          h("button", { type: "button", class: "danger stop-deployment", onclick: () => this.cancelDeployment(deployment, true) }, "Stop here")),
        bar,
        h("div", { class: "counts" }, counts.map(([label, count]) =>
          h("span", { class: "count", dataset: { count: label } }, h("b", {}, `${count}`), ` ${label}`)),
          h("span", { class: "muted" }, ` of ${target} wanted`)),
        h("div", { class: "muted small" }, `deployment ${deployment.id} · version ${deployment.version}`));
    });
    this.deployment.replaceChildren(section("Deployment in progress", "deployment-section", cards));
  }

  renderProblems(app, queued) {
    const parts = [];
    if (queued) {
      parts.push(h("div", { id: "queue-reasons" }, h("h3", {}, "Waiting to launch"), reasonList(queueReasons(queued))));
    }
    const failure = app.lastTaskFailure;
    if (failure) {
      const current = failsNow(app);
      parts.push(h("div", { id: "last-failure", class: current ? "failure" : "failure old" },
        h("h3", {}, current ? "Last task failure" : "Last task failure (an earlier configuration)"),
        h("p", { class: "failure-message" }, failure.message || "(no message)"),
        h("p", { class: "muted small" }, `${failure.state} · task ${failure.taskId} on ${failure.host} · ${ago(failure.timestamp)} · version ${failure.version}`),
        h("button", { type: "button", class: "small failure-output", onclick: () => this.showLogs(failure.taskId) }, "Its output")));
    }
    this.problems.replaceChildren(parts.length ? section("Problems", "problems-section", parts) : "");
  }

  renderTasks(app) {
    const hasChecks = (app.healthChecks || []).length > 0;
    const rows = (app.tasks || []).map((task) => {
      const results = task.healthCheckResults || [];
      let health = h("span", { class: "muted" }, hasChecks ? "unknown" : "no checks");
      if (results.length) {
        const alive = results.every((result) => result.alive);
        health = badge(alive ? "healthy" : "unhealthy", alive ? "ok" : "bad");
      }
      const state = (task.state || "").replace(/^TASK_/, "").toLowerCase();
      const ports = (task.ports || []).join(", ");
      const address = (task.ipAddresses || []).map((ip) => ip.ipAddress).join(", ");
      return h("tr", { dataset: { taskId: task.id }, class: this.logs.taskId === task.id ? "selected" : "" },
        h("td", { class: "mono" }, task.id),
        h("td", {}, task.host, address && address !== task.host ? h("div", { class: "muted small" }, address) : null),
        h("td", { class: "mono" }, ports || h("span", { class: "muted" }, "—")),
        h("td", {}, health),
        h("td", {}, badge(state, state === "running" ? "ok" : state === "failed" || state === "error" ? "bad" : "info")),
        h("td", {}, task.startedAt ? duration((Date.now() - Date.parse(task.startedAt)) / 1000) : `staged ${ago(task.stagedAt)}`),
        h("td", { class: "row-actions" },
          h("button", { type: "button", class: "small show-logs", onclick: () => this.showLogs(task.id) }, "Output"),
          h("button", { type: "button", class: "small danger kill-task", onclick: () => this.killTask(task.id) }, "Kill")));
    });
    if (!rows.length) rows.push(h("tr", {}, h("td", { colspan: 7, class: "empty" }, "No tasks.")));
    this.tasksBody.replaceChildren(...rows);
    // Nothing chosen: the output of the first running task (and of another one when that
    // task is gone, until one is chosen).
    const running = (app.tasks || []).find((task) => task.state === "TASK_RUNNING");
    const followed = (app.tasks || []).some((task) => task.id === this.logs.taskId);
    if (running && (!this.logs.taskId || (this.autoFollowed && !followed))) {
      this.showLogs(running.id, null, false);
      this.autoFollowed = true;
    }
  }

  renderSummary(app) {
    const docker = app.container && app.container.docker;
    const ports = (app.portDefinitions || []).map((p) => `${p.port}${p.name ? ` (${p.name})` : ""}`).join(", ");
    const entries = [
      ["Command", app.cmd ? h("code", {}, app.cmd) : app.args ? h("code", {}, JSON.stringify(app.args)) : "—"],
      ["Image", docker && docker.image ? h("code", {}, docker.image) : "—"],
      ["Instances", app.instances],
      ["CPUs", number(app.cpus)],
      ["Memory", megabytes(app.mem)],
      ["Disk", megabytes(app.disk)],
      ["Service ports", ports || "—"],
      ["Constraints", (app.constraints || []).map((c) => c.join(":")).join(", ") || "—"],
      ["Health checks", (app.healthChecks || []).map((c) => `${c.protocol || "HTTP"} ${c.path || ""}`.trim()).join(", ") || "—"],
      ["Readiness checks", (app.readinessChecks || []).map((c) => c.name || c.path).join(", ") || "—"],
      ["Labels", Object.entries(app.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ") || "—"],
      ["Environment", Object.keys(app.env || {}).join(", ") || "—"],
      ["Version", when(app.version)],
      ["Configuration changed", when(app.versionInfo && app.versionInfo.lastConfigChangeAt)],
    ];
    this.summary.replaceChildren(...entries.flatMap(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]));
  }

  setDirty(dirty) {
    this.dirty = dirty;
    this.editorState.textContent = dirty ? "Edited — not deployed" : "";
    this.editor.classList.toggle("dirty", dirty);
  }

  resetEditor() {
    if (!this.app) return;
    this.editor.value = JSON.stringify(definitionOf(this.app), null, 2);
    this.editErrors.replaceChildren();
    this.editor.classList.remove("invalid");
    this.setDirty(false);
  }

  /** Selects a 422 detail's path in the editor. */
  pick(path) {
    const editor = this.editor;
    const range = locatePath(editor.value, path);
    editor.focus();
    if (!range) return;
    editor.setSelectionRange(range[0], range[1]);
    // Scrolled so that the line shows, a few lines from the top.
    const line = editor.value.slice(0, range[0]).split("\n").length - 1;
    const lineHeight = parseFloat(getComputedStyle(editor).lineHeight) || 18;
    editor.scrollTop = Math.max(0, (line - 3) * lineHeight);
  }

  async deployEdit() {
    this.editErrors.replaceChildren();
    let definition;
    try {
      definition = JSON.parse(this.editor.value);
    } catch (error) {
      this.editor.classList.add("invalid");
      this.editErrors.append(h("p", { class: "error" }, `Not JSON: ${error.message}`));
      return;
    }
    const button = $("#deploy-edit");
    button.disabled = true;
    try {
      const answer = await api.call("PUT", `${appApiPath(this.id)}?partialUpdate=false`, definition);
      banner(`Deploying the new definition of ${this.id} (deployment ${answer.deploymentId})`, "ok");
      this.editor.classList.remove("invalid");
      this.setDirty(false);
      this.reload();
      this.loadVersions();
    } catch (error) {
      this.editor.classList.add("invalid");
      this.editErrors.append(h("p", { class: "error" }, error.message));
      if (error.details.length) {
        this.editErrors.append(detailList(error.details, (path) => this.pick(path)));
        this.pick(error.details[0].path || "/");
      }
    } finally {
      button.disabled = false;
    }
  }

  async loadVersions() {
    // Only the latest call draws (an earlier one answering late would show older versions).
    const call = (this.versionsCall = (this.versionsCall || 0) + 1);
    try {
      const { versions } = await api.get(`${appApiPath(this.id)}/versions`);
      if (this.disposed || call !== this.versionsCall) return;
      const current = this.app && this.app.version;
      const shown = this.allVersions ? versions : versions.slice(0, 10);
      this.versionsMore.hidden = shown.length === versions.length;
      this.versionsMore.textContent = `Show all ${versions.length} versions`;
      this.versionsBody.replaceChildren(...shown.map((version) => h("tr", { dataset: { version } },
        h("td", {}, when(version), " ", h("span", { class: "muted small" }, ago(version))),
        h("td", {}, version === current ? badge("current", "ok") : ""),
        h("td", { class: "row-actions" },
          h("button", { type: "button", class: "small show-version", onclick: () => this.showVersion(version) }, "Show"),
          version === current ? null
            : h("button", { type: "button", class: "small rollback", onclick: () => this.rollBack(version) }, "Roll back to this")))));
    } catch (error) {
      if (error.status !== 404) this.versionsBody.replaceChildren(h("tr", {}, h("td", { colspan: 3 }, errorBox(error))));
    }
  }

  async showVersion(version) {
    try {
      const app = await api.get(`${appApiPath(this.id)}/versions/${pathSegment(version)}`);
      this.versionView.textContent = JSON.stringify(app, null, 2);
      this.versionView.hidden = false;
      this.versionView.dataset.version = version;
    } catch (error) {
      banner(`Version ${version}: ${error.message}`, "error");
    }
  }

  showLogs(taskId, file, scroll = true) {
    this.autoFollowed = false;
    if (file) this.logFile.value = file;
    this.logs.follow(taskId, this.logFile.value);
    for (const row of this.tasksBody.querySelectorAll("tr")) row.classList.toggle("selected", row.dataset.taskId === taskId);
    if (scroll) $("#logs-section").scrollIntoView({ block: "nearest" });
  }

  after() {
    this.reload();
    this.loadVersions();
  }

  async scale(instances) {
    if (!Number.isInteger(instances) || instances < 0) {
      banner("Scale: give a whole number of instances, 0 or more", "error");
      return;
    }
    this.scaleEdited = false;
    const done = await act(`Scaling ${this.id} to ${instances}`,
      (force) => api.call("PUT", `${appApiPath(this.id)}${force ? "?force=true" : ""}`, { instances }),
      { forceable: true, after: () => this.after() });
    if (done) this.after();
  }

  async restart() {
    const done = await act(`Restarting ${this.id}`,
      (force) => api.call("POST", `${appApiPath(this.id)}/restart${force ? "?force=true" : ""}`),
      { forceable: true, after: () => this.after() });
    if (done) this.after();
  }

  async suspend() {
    if (!(await confirmAction(`Suspend ${this.id}?`, "Its tasks are stopped; it keeps its definition and can be scaled up again.", "Suspend"))) return;
    const done = await act(`Suspending ${this.id}`,
      (force) => api.call("PUT", `${appApiPath(this.id)}${force ? "?force=true" : ""}`, { instances: 0 }),
      { forceable: true, after: () => this.after() });
    if (done) this.after();
  }

  async destroy() {
    if (!(await confirmAction(`Destroy ${this.id}?`, "Its tasks are killed and its definition and versions deleted. This cannot be undone.", "Destroy"))) return;
    const done = await act(`Destroyed ${this.id}`, () => api.call("DELETE", appApiPath(this.id)));
    if (done) navigate("/ui");
  }

  async killTask(taskId) {
    const done = await act(`Killing ${taskId}`, () => api.call("DELETE", `${appApiPath(this.id)}/tasks/${pathSegment(taskId)}`));
    if (done) this.reload();
  }

  async cancelDeployment(deployment, force) {
    const title = force ? "Stop the deployment where it is?" : "Roll the deployment back?";
    const text = force
      ? "The apps stay as they are now, between the old and the new definition."
      : "A new deployment puts the apps back as they were before it.";
    if (!(await confirmAction(title, text, force ? "Stop here" : "Roll back"))) return;
    const done = await act(force ? "Stopped the deployment" : "Rolling the deployment back",
      () => api.call("DELETE", `/v2/deployments/${pathSegment(deployment.id)}${force ? "?force=true" : ""}`));
    if (done) this.after();
  }

  async rollBack(version) {
    if (!(await confirmAction(`Roll ${this.id} back?`, `Its definition becomes the one of ${version}, deployed as any change.`, "Roll back"))) return;
    const done = await act(`Rolling ${this.id} back to ${version}`,
      (force) => api.call("PUT", `${appApiPath(this.id)}${force ? "?force=true" : ""}`, { version }),
      { forceable: true, after: () => this.after() });
    if (done) this.after();
  }
}

class ClusterPage extends Page {
  constructor(root) {
    super(root);
    this.info = h("dl", { id: "cluster-info", class: "summary" });
    this.error = h("div", { id: "cluster-error" });
    this.masters = h("div", {});
    this.gateways = h("div", {});
    this.agents = h("div", {});
    root.append(
      h("div", { class: "page-head" }, h("h1", {}, "Cluster")),
      this.error,
      section("Overview", "info-section", this.info),
      h("div", { class: "columns" },
        section("Masters", "masters-section", this.masters),
        section("Gateways", "gateways-section", this.gateways)),
      section("Agents", "agents-section", this.agents),
    );
    this.every(3000, () => this.reload());
    this.reload();
  }

  // Cluster changes come with no events: the page polls instead.
  onEvent() {}

  async load() {
    try {
      const [cluster, info] = await Promise.all([api.get("/v2/cluster"), api.get("/v2/info")]);
      if (this.disposed) return;
      this.error.replaceChildren();
      this.renderInfo(info, cluster);
      this.masters.replaceChildren(this.members("masters-table", cluster.masters || [], "master"));
      this.gateways.replaceChildren(this.members("gateways-table", cluster.gateways || [], "gateway"));
      this.agents.replaceChildren(
        cluster.agentsError ? h("p", { class: "error", id: "agents-error" }, `Agents unknown: ${cluster.agentsError}`) : "",
        this.agentTable(cluster.agents || []));
    } catch (error) {
      this.error.replaceChildren(errorBox(error));
    }
  }

  renderInfo(info, cluster) {
    const active = (cluster.agents || []).filter((agent) => agent.status === "active").length;
    const entries = [
      ["Leading gateway", info.leader || "none"],
      ["This page from", location.host],
      ["Leading master", ((cluster.masters || []).find((m) => m.leader) || {}).address || "none"],
      ["Agents", `${active} active of ${(cluster.agents || []).length}`],
      ["Framework", info.frameworkId || "not registered"],
      ["Version", `${info.buildref || ""} (Marathon API ${info.version || "?"})`],
    ];
    this.info.replaceChildren(...entries.flatMap(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]));
  }

  members(id, members, kind) {
    if (!members.length) return h("p", { class: "muted" }, `No ${kind}s are standing for election.`);
    return h("table", { id, class: "data" },
      h("thead", {}, h("tr", {}, ["", "Address", "ID"].map((t) => h("th", {}, t)))),
      h("tbody", {}, members.map((member) => h("tr", { class: member.leader ? "leader" : "", dataset: { address: member.address || "" } },
        h("td", {}, member.leader ? badge("leader", "ok") : badge("standby", "idle"),
          kind === "gateway" && member.address === location.host ? badge("this page", "info") : null),
        h("td", { class: "mono" }, member.address || "?"),
        h("td", { class: "mono small", title: `version ${member.version || "?"}, epoch ${member.epoch}` }, member.id || "?")))));
  }

  agentTable(agents) {
    if (!agents.length) return h("p", { class: "muted" }, "No agents registered.");
    const meter = (used, total, format) => {
      const fill = h("div", { class: "progress-fill" });
      fill.style.width = `${total ? Math.min(100, (100 * used) / total) : 0}%`;
      return h("div", { class: "meter" }, h("div", { class: "progress" }, fill),
        h("span", { class: "small" }, `${format(used)} / ${format(total)}`),
        h("span", { class: "small muted" }, ` · ${format(Math.max(0, total - used))} free`));
    };
    const ranges = (list) => (list || []).map(([from, to]) => (from === to ? `${from}` : `${from}-${to}`)).join(", ") || "none";
    return h("table", { id: "agents-table", class: "data" },
      h("thead", {}, h("tr", {}, ["Agent", "Status", "Runtimes", "CPUs", "Memory", "Disk", "Free ports", "Heartbeat"].map((t) => h("th", {}, t)))),
      h("tbody", {}, agents.map((agent) => {
        const total = agent.total || {};
        const used = agent.used || {};
        return h("tr", { dataset: { agentId: agent.id } },
          h("td", {}, h("strong", {}, agent.hostname), h("div", { class: "muted small mono" }, agent.address), h("div", { class: "muted small mono" }, agent.id)),
          h("td", {}, badge(agent.status, agent.status === "active" ? "ok" : "warn")),
          h("td", {}, (agent.runtimes || []).map((runtime) => h("span", { class: "chip runtime" }, runtime))),
          h("td", {}, meter(used.cpus || 0, total.cpus || 0, (v) => number(v))),
          h("td", {}, meter(used.mem || 0, total.mem || 0, megabytes)),
          h("td", {}, meter(used.disk || 0, total.disk || 0, megabytes)),
          h("td", { class: "mono small" }, ranges((agent.free || {}).ports)),
          h("td", { class: "small" }, agent.lastHeartbeat ? ago(agent.lastHeartbeat) : "—"));
      })));
  }
}

class NotFoundPage extends Page {
  /** `why`: what is wrong with the address (by default: no page here). */
  constructor(root, why) {
    super(root);
    root.append(h("div", { class: "card", id: "not-found" }, h("h1", {}, "Not found"),
      h("p", { id: "not-found-reason" }, why || "No page here.", " ", h("a", { href: "/ui", "data-nav": true }, "Go to the apps"), ".")));
  }

  onEvent() {}

  load() {}
}

// ---------------------------------------------------------------------------------------
// The router, the header, the start

let page = null;

function route() {
  if (page) page.dispose();
  const main = $("#main");
  main.replaceChildren();
  const path = location.pathname.replace(/\/+$/, "") || "/";
  let sectionName = "apps";
  if (path === "/" || path === "/ui" || path === "/ui/apps") {
    page = new AppsPage(main);
  } else if (path.startsWith("/ui/apps/")) {
    // The id as the address spells it; refused (never called) when a segment is empty,
    // `.` or `..`, or is not valid percent-encoding, so that no API path is built from it.
    const rest = path.slice("/ui/apps/".length);
    const id = appIdFromPath(rest);
    if (id) {
      page = new AppPage(main, id);
      document.title = `${id} · Marina`;
    } else {
      page = new NotFoundPage(main, `“${rest}” is not a valid app id.`);
    }
  } else if (path === "/ui/cluster") {
    page = new ClusterPage(main);
    sectionName = "cluster";
  } else {
    page = new NotFoundPage(main);
  }
  if (!(page instanceof AppPage)) document.title = sectionName === "cluster" ? "Cluster · Marina" : "Marina";
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("current", link.dataset.section === sectionName);
  }
}

function navigate(path) {
  if (path !== location.pathname) history.pushState(null, "", path);
  route();
  window.scrollTo(0, 0);
}

/** The header's leader: which gateway leads, and whether this page came through another
 * (a standby, which forwards the API calls to the leader). */
async function showLeader() {
  const node = $("#leader");
  try {
    const { leader } = await api.get("/v2/leader");
    node.textContent = leader === location.host ? `leader ${leader}` : `leader ${leader} · via ${location.host}`;
    node.classList.remove("error");
  } catch (error) {
    node.textContent = error.status === 404 ? "no leading gateway" : `leader unknown: ${error.message}`;
    node.classList.add("error");
  }
}

function start() {
  document.addEventListener("click", (event) => {
    const link = event.target.closest("a[data-nav]");
    if (!link || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    event.preventDefault();
    navigate(new URL(link.href).pathname);
  });
  window.addEventListener("popstate", route);
  // The event stream is closed as the document is left (or kept in the back-forward
  // cache), not when the browser gets round to it: a left page's open stream holds one of
  // the few connections a browser opens to a host, and the next pages' calls would queue.
  window.addEventListener("pagehide", () => events.stop());
  window.addEventListener("pageshow", (event) => {
    if (event.persisted) {
      events.start();
      if (page && !page.disposed) page.reload();
    }
  });
  events.listeners.add((event) => {
    if (page && !page.disposed) page.onEvent(event);
  });
  route();
  events.start();
  showLeader();
  setInterval(showLeader, 10000);
}

start();
