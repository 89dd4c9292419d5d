// The Data Pusher dashboard: a client of the public GraphQL API only (queries and mutations
// over HTTP at /graphql/, live changes over graphql-ws on the same URL). No build step.
// The token lives in sessionStorage (this tab only); nothing is stored anywhere else.
"use strict";

const GRAPHQL = new URL("/graphql/", location.href).toString();
const WS = GRAPHQL.replace(/^http/, "ws");
const PAGE = 50; // logs shown
const BUCKET_MS = 10000; // sparkline buckets: 30 × 10 s
const BUCKETS = 30;
const LOG_FIELDS = `id status attemptCount lastStatusCode lastError eventId webhookId
  receivedTimestamp processedTimestamp nextAttemptAt updatedAt cursor destination { id url }`;
const HEALTH = `state successRate1h latencyP50Ms inFlight backlog lastError`;

const $ = (selector) => document.querySelector(selector);
const state = {
  token: sessionStorage.getItem("dp-token"),
  me: null,
  accounts: [],
  accountId: sessionStorage.getItem("dp-account"),
  role: null,
  destinations: new Map(),
  logs: new Map(), // id -> log, with `history`: the statuses seen live
  client: null,
  stops: [],
  buckets: [],
};

// --- GraphQL over HTTP -----------------------------------------------------------------------

async function gql(query, variables = {}) {
  const headers = { "Content-Type": "application/json" };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  const response = await fetch(GRAPHQL, {
    method: "POST", headers, body: JSON.stringify({ query, variables }),
  });
  const body = await response.json();
  if (body.errors) {
    const error = body.errors[0];
    if (error.extensions?.code === "unauthenticated") logout(false);
    throw new Error(error.message);
  }
  return { data: body.data };
}

// A mutation's union answer: the object, or its OperationInfo messages as an error.
function answer(result) {
  if (result.__typename === "OperationInfo") {
    throw new Error(result.messages.map((m) => `${m.message} (${m.code})`).join("; "));
  }
  return result;
}

function showError(error) {
  $("#error").textContent = error ? String(error.message ?? error) : "";
}

// --- Login -----------------------------------------------------------------------------------

$("#login").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("#login-error").textContent = "";
  try {
    const { data } = await gql(
      `mutation ($input: LoginInput!) { login(input: $input) { __typename
        ... on AuthPayload { token }
        ... on OperationInfo { messages { code message field } } } }`,
      { input: { email: $("#email").value, password: $("#password").value } },
    );
    state.token = answer(data.login).token;
    sessionStorage.setItem("dp-token", state.token);
    $("#password").value = "";
    await start();
  } catch (error) {
    $("#login-error").textContent = error.message;
  }
});

$("#logout").addEventListener("click", () => logout(true));

async function logout(tellServer) {
  if (tellServer && state.token) {
    try { await gql("mutation { logout { __typename } }"); } catch { /* gone anyway */ }
  }
  stopLive();
  state.token = null;
  sessionStorage.removeItem("dp-token");
  show(false);
}

function show(loggedIn) {
  $("#login").hidden = loggedIn;
  $("#main").hidden = !loggedIn;
  $("#account").hidden = !loggedIn;
  $("#logout").hidden = !loggedIn;
  if (!loggedIn) $("#whoami").textContent = "";
}

// --- Account, destinations, logs -------------------------------------------------------------

async function start() {
  const { data } = await gql(`{ me { id email } accounts { id name members { role user { id } } } }`);
  state.me = data.me;
  state.accounts = data.accounts;
  $("#whoami").textContent = data.me.email;
  const picker = $("#account");
  picker.replaceChildren(...data.accounts.map((a) => new Option(a.name, a.id)));
  if (!data.accounts.some((a) => a.id === state.accountId)) state.accountId = data.accounts[0]?.id;
  picker.value = state.accountId ?? "";
  show(true);
  if (state.accountId) await openAccount();
}

$("#account").addEventListener("change", async (event) => {
  state.accountId = event.target.value;
  await openAccount();
});

async function openAccount() {
  sessionStorage.setItem("dp-account", state.accountId);
  const account = state.accounts.find((a) => a.id === state.accountId);
  state.role = account.members.find((m) => m.user.id === state.me.id)?.role ?? null;
  state.buckets = [];
  $("#detail").hidden = true;
  const { data } = await gql(
    `query ($id: ID!) { destinations(filters: { accountId: $id }) {
      id url httpMethod isActive health { ${HEALTH} } } }`,
    { id: state.accountId },
  );
  state.destinations = new Map(data.destinations.map((d) => [d.id, d]));
  const choice = $("#f-destination");
  choice.replaceChildren(new Option("any", ""),
    ...data.destinations.map((d) => new Option(d.url, d.id)));
  renderDestinations();
  await loadLogs();
}

function filters() {
  const f = {
    status: $("#f-status").value || null,
    destinationId: $("#f-destination").value || null,
    eventId: $("#f-event").value.trim() || null,
    from: $("#f-from").value ? new Date($("#f-from").value) : null,
    to: $("#f-to").value ? new Date($("#f-to").value) : null,
  };
  return f;
}

$("#filters").addEventListener("submit", async (event) => {
  event.preventDefault();
  await loadLogs();
});

// The first page, then live changes after the newest change among the logs read (those of the
// page, and the account's latest one whatever the filters): every change made after the read
// has a later cursor, so nothing between the two is missed. An account without logs replays
// from the start, which is nothing.
async function loadLogs() {
  stopLive();
  showError(null);
  const f = filters();
  const logFilter = { accountId: state.accountId, destinationId: f.destinationId, eventId: f.eventId };
  if (f.status) logFilter.status = [f.status];
  if (f.from || f.to) {
    logFilter.receivedTimestamp = { gte: f.from?.toISOString() ?? null, lte: f.to?.toISOString() ?? null };
  }
  let data;
  try {
    ({ data } = await gql(
      `query ($f: LogFilter, $n: Int!, $a: ID!) {
        page: logs(filters: $f, first: $n) { edges { node { ${LOG_FIELDS} } } }
        latest: logs(filters: { accountId: $a }, first: 1) { edges { node { id updatedAt cursor } } } }`,
      { f: logFilter, n: PAGE, a: state.accountId },
    ));
  } catch (error) {
    showError(error);
    return;
  }
  const nodes = data.page.edges.map((e) => e.node);
  state.logs = new Map(nodes.map((log) => [log.id, { ...log, history: [] }]));
  renderLogs();
  const read = [...nodes, ...data.latest.edges.map((e) => e.node)];
  const newest = read.reduce((a, b) => (!a || newer(b, a) ? b : a), null);
  startLive(f, newest?.cursor ?? null, newest ? null : "1970-01-01T00:00:00Z");
}

function newer(a, b) {
  return a.updatedAt > b.updatedAt || (a.updatedAt === b.updatedAt && Number(a.id) > Number(b.id));
}

// --- Live ------------------------------------------------------------------------------------

function startLive(f, after, since) {
  const live = $("#live");
  const client = graphqlWs.createClient({
    url: WS,
    connectionParams: { authToken: state.token },
    retryAttempts: Infinity,
    retryWait: (n) => new Promise((go) => setTimeout(go, Math.min(500 * 2 ** n, 5000))),
    shouldRetry: () => true, // a refused token (4401) still ends it
    on: {
      connected: () => { live.dataset.state = "live"; live.textContent = "live"; },
      closed: (event) => {
        if (state.client !== client) return;
        live.dataset.state = "reconnecting";
        live.textContent = "reconnecting…";
        if (event?.code === 4401 || event?.code === 4403) logout(false);
      },
    },
  });
  state.client = client;
  const updateFilter = { destinationId: f.destinationId, eventId: f.eventId };
  if (f.status) updateFilter.status = [f.status];
  // graphql-ws sends this payload again on every reconnect: `after` always holds the cursor of
  // the last change applied, so a reconnect resumes right after it.
  const logs = {
    query: `subscription ($a: ID, $f: LogUpdateFilter, $after: String, $since: DateTime) {
      logUpdates(accountId: $a, filters: $f, after: $after, since: $since) { ${LOG_FIELDS} } }`,
    variables: { a: state.accountId, f: updateFilter, after, since },
  };
  state.stops.push(client.subscribe(logs, {
    next: ({ data, errors }) => {
      if (errors) return showError(new Error(errors[0].message));
      const log = data.logUpdates;
      logs.variables.after = log.cursor;
      logs.variables.since = null;
      applyLog(log, f);
    },
    error: (error) => showError(new Error(`Live updates ended: ${error.reason ?? error.message ?? error}`)),
    complete: () => {},
  }));
  const health = {
    query: `subscription ($a: ID) { destinationUpdates(accountId: $a) {
      destination { id isActive health { ${HEALTH} } } notice { kind detail } } }`,
    variables: { a: state.accountId },
  };
  state.stops.push(client.subscribe(health, {
    next: ({ data }) => {
      const update = data?.destinationUpdates?.destination;
      const known = update && state.destinations.get(update.id);
      if (!known) return;
      Object.assign(known, update);
      renderDestinations();
    },
    error: () => {},
    complete: () => {},
  }));
}

function stopLive() {
  for (const stop of state.stops) stop();
  state.stops = [];
  if (state.client) state.client.dispose();
  state.client = null;
  $("#live").dataset.state = "off";
  $("#live").textContent = "offline";
}

function applyLog(log, f) {
  count(log);
  const known = state.logs.get(log.id);
  if (known) {
    // The change we have: a resume repeats a log's current state when changes of different
    // logs arrived out of cursor order.
    if (log.cursor === known.cursor) return;
    Object.assign(known, log);
    known.history.push(log.status);
  } else {
    const at = new Date(log.receivedTimestamp);
    if ((f.from && at < f.from) || (f.to && at > f.to)) return; // time range: not filtered live
    state.logs.set(log.id, { ...log, history: [log.status] });
  }
  renderLogs();
  if (!$("#detail").hidden && $("#detail").dataset.id === log.id) showAttempts(log.id);
}

// Sparklines: events accepted (a log's first QUEUED) and the share of sends that succeeded.
function count(log) {
  const now = Date.now();
  const slot = Math.floor(now / BUCKET_MS);
  let bucket = state.buckets[state.buckets.length - 1];
  if (!bucket || bucket.slot !== slot) {
    bucket = { slot, events: new Set(), ok: 0, sent: 0 };
    state.buckets.push(bucket);
  }
  state.buckets = state.buckets.filter((b) => b.slot > slot - BUCKETS);
  if (log.status === "QUEUED" && log.attemptCount === 0) bucket.events.add(log.eventId);
  if (log.status === "SUCCESS") { bucket.ok += 1; bucket.sent += 1; }
  if (log.status === "FAILED" || log.status === "RETRYING") bucket.sent += 1;
  renderSparklines(slot);
}

function renderSparklines(slot) {
  const series = { events: [], success: [] };
  for (let s = slot - BUCKETS + 1; s <= slot; s += 1) {
    const b = state.buckets.find((x) => x.slot === s);
    series.events.push(b ? b.events.size / (BUCKET_MS / 1000) : 0);
    series.success.push(b && b.sent ? b.ok / b.sent : null);
  }
  const last = state.buckets[state.buckets.length - 1];
  $("#rate-events").textContent = (last ? last.events.size / (BUCKET_MS / 1000) : 0).toFixed(1);
  const sent = state.buckets.reduce((n, b) => n + b.sent, 0);
  const ok = state.buckets.reduce((n, b) => n + b.ok, 0);
  $("#rate-success").textContent = sent ? `${Math.round((100 * ok) / sent)} %` : "–";
  line($("#spark-events"), series.events, Math.max(1, ...series.events));
  line($("#spark-success"), series.success, 1);
}

function line(svg, values, top) {
  const step = 300 / (values.length - 1);
  const points = values
    .map((v, i) => (v === null ? null : `${(i * step).toFixed(1)},${(38 - (36 * v) / top).toFixed(1)}`))
    .filter(Boolean).join(" ");
  svg.innerHTML = `<polyline points="${points}"></polyline>`;
}

// --- Rendering -------------------------------------------------------------------------------

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text ?? "";
  if (className) td.className = className;
  td.title = text ?? "";
  return td;
}

function badge(text) {
  const td = document.createElement("td");
  const span = document.createElement("span");
  span.className = `status ${text}`;
  span.textContent = text;
  td.append(span);
  return td;
}

function renderDestinations() {
  const rows = [...state.destinations.values()].map((d) => {
    const tr = document.createElement("tr");
    tr.dataset.id = d.id;
    tr.dataset.state = d.health.state;
    const rate = d.health.successRate1h;
    tr.append(
      cell(d.url, "url"), cell(d.httpMethod), badge(d.health.state),
      cell(rate === null ? "–" : `${Math.round(rate * 100)} %`),
      cell(d.health.latencyP50Ms === null ? "–" : `${d.health.latencyP50Ms} ms`),
      cell(String(d.health.inFlight)), cell(String(d.health.backlog)),
      cell(d.health.lastError, "err"),
    );
    return tr;
  });
  $("#destinations tbody").replaceChildren(...rows);
}

function renderLogs() {
  const logs = [...state.logs.values()]
    .sort((a, b) => (a.receivedTimestamp < b.receivedTimestamp ? 1 : -1) || Number(b.id) - Number(a.id))
    .slice(0, PAGE);
  const rows = logs.map((log) => {
    const tr = document.createElement("tr");
    tr.dataset.id = log.id;
    tr.dataset.status = log.status;
    tr.dataset.history = log.history.join(" ");
    tr.dataset.event = log.eventId;
    const retry = document.createElement("td");
    if (state.role === "ADMIN" && log.status !== "SENDING") {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "retry";
      button.textContent = "Retry";
      button.addEventListener("click", (event) => { event.stopPropagation(); retryLog(log.id); });
      retry.append(button);
    }
    tr.append(
      cell(new Date(log.receivedTimestamp).toLocaleString()), cell(log.eventId),
      cell(log.destination?.url ?? "(deleted)", "url"), badge(log.status),
      cell(String(log.attemptCount)), cell(log.lastStatusCode === null ? "" : String(log.lastStatusCode)),
      cell(log.lastError, "err"), retry,
    );
    tr.addEventListener("click", () => showAttempts(log.id));
    return tr;
  });
  $("#logs tbody").replaceChildren(...rows);
}

async function retryLog(id) {
  showError(null);
  try {
    const { data } = await gql(
      `mutation ($id: ID!) { logRetry(id: $id) { __typename ... on DeliveryLog { id status }
        ... on OperationInfo { messages { code message field } } } }`,
      { id },
    );
    answer(data.logRetry); // the new status arrives over the live stream
  } catch (error) {
    showError(error);
  }
}

async function showAttempts(id) {
  const log = state.logs.get(id);
  if (!log) return;
  const { data } = await gql(
    `query ($id: ID!) { log(id: $id) {
      attempts { number startedAt durationMs statusCode responseBody errorClass errorMessage } } }`,
    { id },
  );
  const node = data.log;
  const detail = $("#detail");
  detail.dataset.id = id;
  detail.hidden = false;
  $("#detail-title").textContent = `${log.eventId} → ${log.destination?.url ?? "(deleted)"}`;
  const rows = (node?.attempts ?? []).map((a) => {
    const tr = document.createElement("tr");
    const response = document.createElement("td");
    const pre = document.createElement("pre");
    pre.textContent = a.responseBody.slice(0, 500);
    response.append(pre);
    tr.append(
      cell(String(a.number)), cell(new Date(a.startedAt).toLocaleString()),
      cell(a.statusCode === null ? "–" : String(a.statusCode)), cell(`${a.durationMs} ms`),
      response, cell([a.errorClass, a.errorMessage].filter(Boolean).join(": "), "err"),
    );
    return tr;
  });
  detail.querySelector("tbody").replaceChildren(...rows);
}

if (state.token) start().catch(() => logout(false));
else show(false);
