// Delivering one message exactly once. Each message gets its own
// Idempotency-Key when it is written, and keeps it through every retry: the
// console answers a repeated key with the first answer (or attaches to the
// send still running) instead of sending it to a node again.

import { NetworkError, Problem, sendOnce } from "./api.js";

/**
 * How long the answer may take to begin: the console begins it with the
 * reply's first piece, within its infer timeout (30 s by default).
 */
const FIRST_MS = 120_000;
/** Silence, once the answer began, that counts as a lost connection: the console sends a keep-alive comment every 15 s. */
const IDLE_MS = 45_000;
/** Automatic retries of one message before the operator is asked. */
const MAX_RETRIES = 6;

export function newKey() {
  return `web-${crypto.randomUUID()}`;
}

const OUTBOX = "sofiia.outbox";

function readOutbox() {
  try {
    return JSON.parse(sessionStorage.getItem(OUTBOX)) || [];
  } catch {
    return [];
  }
}

function writeOutbox(items) {
  if (items.length === 0) sessionStorage.removeItem(OUTBOX);
  else sessionStorage.setItem(OUTBOX, JSON.stringify(items));
}

/**
 * Messages not answered yet, kept in the tab's sessionStorage with their
 * keys, so that a reload neither loses nor doubles them: one still being
 * sent (`sending`) is sent again under its key when its chat opens (the
 * console attaches to it or replays it); one that stopped for the
 * operator (`held`: 429, 502, 504, no answer after the retries) waits for
 * Send again. Signing out empties it: the next operator of the tab never
 * sees, nor sends, another's messages.
 */
export const outbox = {
  put(chatId, key, message, state) {
    writeOutbox([...readOutbox().filter((i) => i.key !== key), { chatId, key, message, state }]);
  },
  drop(key) {
    writeOutbox(readOutbox().filter((i) => i.key !== key));
  },
  of(chatId) {
    return readOutbox().filter((i) => i.chatId === chatId);
  },
  /** Forgets every message: the operator signed out, or was signed out. */
  clear() {
    writeOutbox([]);
  },
};

/**
 * What to do after a failed attempt: `{retryIn: seconds}` to try again by
 * itself, or null to stop and let the operator decide.
 *  - no answer (network, timeout): the send may be running or done; the
 *    same key attaches to it or replays it;
 *  - 409: the same key is still running elsewhere;
 *  - 503: a store is unavailable for a moment.
 * 429 waits for the operator (a countdown), 502/504 and 4xx are shown.
 */
export function retryPlan(error, retriesSoFar) {
  if (retriesSoFar >= MAX_RETRIES) return null;
  const backoff = Math.min(2 ** retriesSoFar, 16);
  if (error instanceof NetworkError) return { retryIn: backoff };
  if (error instanceof Problem && (error.status === 409 || error.status === 503)) {
    return { retryIn: Math.max(error.retryAfter ?? backoff, 1) };
  }
  return null;
}

/**
 * Sends `message` under `key`, retrying by itself where that is safe.
 * `ui` hears `reset()` before each attempt (a retry streams the reply from
 * its first piece again), `delta(text)`, and `retrying(n, seconds, error)`.
 * Resolves to `{receipt, replayed, retries}`; rejects with the error that
 * needs the operator.
 */
export async function deliver(chatId, message, key, ui) {
  for (let retries = 0; ; retries++) {
    ui.reset();
    try {
      const answer = await sendOnce(chatId, message, key, { onDelta: ui.delta, firstMs: FIRST_MS, idleMs: IDLE_MS });
      return { ...answer, retries };
    } catch (error) {
      const plan = retryPlan(error, retries);
      if (!plan) throw error;
      ui.retrying(retries + 1, plan.retryIn, error);
      await new Promise((resolve) => setTimeout(resolve, plan.retryIn * 1000));
    }
  }
}
