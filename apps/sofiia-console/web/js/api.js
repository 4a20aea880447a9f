// The console's JSON API, as the page uses it. Every call goes to the
// console that served the page (same origin, no cookies): operator calls
// carry the operator token from sessionStorage, audit calls the key the
// audit view holds in memory.

import { events } from "./sse.js";

const TOKEN_KEY = "sofiia.operator-token";

/** A problem+json answer (or a failure to get one), as an Error. */
export class Problem extends Error {
  constructor(status, doc = {}, headers = new Headers()) {
    super(doc.detail || doc.title || `HTTP ${status}`);
    this.status = status;
    this.type = doc.type || "";
    this.title = doc.title || `HTTP ${status}`;
    this.detail = doc.detail || "";
    this.requestId = doc.request_id || headers.get("x-request-id") || "";
    this.retryAfter = retryAfterSeconds(headers.get("retry-after"));
  }
}

/** The request never got an answer: the network failed or it timed out. */
export class NetworkError extends Error {
  constructor(message, { timedOut = false } = {}) {
    super(message);
    this.timedOut = timedOut;
  }
}

function retryAfterSeconds(value) {
  if (!value) return null;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, Math.ceil(seconds));
  const at = Date.parse(value);
  return Number.isNaN(at) ? null : Math.max(0, Math.ceil((at - Date.now()) / 1000));
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  sessionStorage.setItem(TOKEN_KEY, value);
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

async function problemOf(res) {
  let doc = {};
  try {
    doc = await res.json();
  } catch {
    // Not JSON (a proxy's error page, say): the status speaks for itself.
  }
  const problem = new Problem(res.status, doc, res.headers);
  if (res.status === 401 && res.url && !res.url.includes("/api/audit")) {
    window.dispatchEvent(new CustomEvent("sofiia:unauthorized", { detail: problem }));
  }
  return problem;
}

async function call(path, { method = "GET", body, headers = {}, signal, auth = "operator" } = {}) {
  const h = new Headers(headers);
  if (!h.has("accept")) h.set("accept", "application/json");
  if (auth === "operator" && token()) h.set("authorization", `Bearer ${token()}`);
  if (body !== undefined) h.set("content-type", "application/json");
  let res;
  try {
    res = await fetch(path, {
      method,
      headers: h,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: "no-store",
      credentials: "omit",
    });
  } catch (e) {
    throw asNetworkError(e, signal);
  }
  return res;
}

function asNetworkError(e, signal) {
  if (e instanceof Problem || e instanceof NetworkError) return e;
  const timedOut = signal?.aborted && signal.reason instanceof NetworkError && signal.reason.timedOut;
  return new NetworkError(timedOut ? "the request timed out" : "the network failed", { timedOut });
}

async function json(path, options) {
  const res = await call(path, options);
  if (!res.ok) throw await problemOf(res);
  return res.json();
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") q.set(k, v);
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

const chatPath = (id) => `/api/chats/${encodeURIComponent(id)}`;

export const listChats = (cursor, limit = 30) => json(`/api/chats${query({ cursor, limit })}`);
export const getChat = (id) => json(chatPath(id));
export const listMessages = (id, cursor, limit = 50) =>
  json(`${chatPath(id)}/messages${query({ cursor, limit })}`);
export const createChat = (chat) => json("/api/chats", { method: "POST", body: chat });

/** The audit trail, newest first; `key` is the audit key. */
export const readAudit = (filters, cursor, key) =>
  json(`/api/audit${query({ ...filters, cursor, limit: 50 })}`, {
    auth: "audit",
    headers: { "x-audit-key": key },
  });

/** The configured node names, from the readiness report (200 or 503). */
export async function nodeNames() {
  const res = await call("/api/ready", { auth: "none" });
  const body = await res.json().catch(() => ({}));
  return Object.keys(body.nodes || {}).sort();
}

/**
 * One attempt at a send, streamed: `onDelta(text)` for each piece of the
 * reply as it is written. Resolves to `{receipt, replayed}`; rejects with a
 * Problem (an answer or an `error` event) or a NetworkError (no complete
 * answer: the same key may be sent again). `firstMs` bounds the wait for
 * the answer to begin (the console starts a stream with the reply's first
 * piece, so this covers the node's thinking time); `idleMs` bounds the
 * silence between two reads after that, the console's keep-alive comments
 * counting as reads.
 */
export async function sendOnce(chatId, message, key, { onDelta, firstMs, idleMs }) {
  const controller = new AbortController();
  let timer;
  const arm = (ms = idleMs) => {
    clearTimeout(timer);
    timer = setTimeout(
      () => controller.abort(new NetworkError("no answer in time", { timedOut: true })),
      ms,
    );
  };
  arm(firstMs);
  try {
    const res = await call(`${chatPath(chatId)}/send`, {
      method: "POST",
      body: message,
      headers: { accept: "text/event-stream", "idempotency-key": key },
      signal: controller.signal,
    });
    if (!res.ok) throw await problemOf(res);
    const replayed = res.headers.get("idempotent-replayed") === "true";
    if (!(res.headers.get("content-type") || "").startsWith("text/event-stream")) {
      return { receipt: await res.json(), replayed };
    }
    arm();
    for await (const ev of events(res.body, () => arm())) {
      if (ev.event === "delta") onDelta(JSON.parse(ev.data).text);
      else if (ev.event === "done") return { receipt: JSON.parse(ev.data), replayed };
      else if (ev.event === "error") {
        const doc = JSON.parse(ev.data);
        throw new Problem(doc.status || 502, doc, res.headers);
      }
    }
    throw new NetworkError("the reply stopped before its end");
  } catch (e) {
    throw asNetworkError(e, controller.signal);
  } finally {
    clearTimeout(timer);
  }
}
