// The audit trail, for whoever holds an audit key. The key is asked for on
// this view and lives only in this view's memory: it is never stored, and
// leaving the view forgets it.

import { readAudit } from "../api.js";
import { describe, h, onVisible, when } from "../dom.js";

const ACTIONS = [
  "chat.create",
  "chat.send",
  "chat.send.replay",
  "chat.send.conflict",
  "chat.send.mismatch",
  "chat.send.rate_limited",
  "auth.denied",
  "audit.read",
  "audit.prune",
  "audit.migrate",
];

export class AuditView {
  constructor() {
    this.key = "";
    this.filters = {};
    this.cursor = undefined;
    this.done = true;
    this.loading = false;

    const field = (id, label, input) =>
      h("div.field", {}, h("label", { for: id }, label), input);
    this.keyInput = h("input#audit-key", {
      type: "password",
      name: "audit-key",
      autocomplete: "off",
      required: true,
      spellcheck: "false",
    });
    this.actor = h("input#audit-actor", { name: "actor", autocomplete: "off" });
    this.action = h("input#audit-action", { name: "action", list: "audit-actions", autocomplete: "off" });
    this.since = h("input#audit-since", { name: "since", type: "datetime-local", step: 1 });
    this.until = h("input#audit-until", { name: "until", type: "datetime-local", step: 1 });
    this.error = h("p.error", { role: "alert" });
    this.form = h(
      "form.audit-filters",
      { "aria-label": "Audit filters" },
      field("audit-key", "Audit key", this.keyInput),
      field("audit-actor", "Actor", this.actor),
      field("audit-action", "Action", this.action),
      h("datalist#audit-actions", {}, ...ACTIONS.map((a) => h("option", { value: a }))),
      field("audit-since", "Since (local time)", this.since),
      field("audit-until", "Until (local time)", this.until),
      h("div.actions", {}, h("button.primary", { type: "submit" }, "Read the audit trail")),
      this.error,
    );
    this.rows = h("tbody", {});
    this.table = h(
      "table.audit",
      { hidden: true },
      h("caption.visually-hidden", {}, "Audit events, newest first"),
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          ...COLUMNS.map((t) => h("th", { scope: "col" }, t)),
        ),
      ),
      this.rows,
    );
    this.status = h("p.muted.list-status", { role: "status" });
    this.more = h("button.link", { type: "button", hidden: true, onclick: () => this.load() }, "Older events");
    this.sentinel = h("div.sentinel", { "aria-hidden": "true" });
    this.scroller = h("div.scroll", {}, this.table, this.status, this.more, this.sentinel);
    this.el = h(
      "section.audit-view",
      { "aria-labelledby": "audit-heading" },
      h("div.pane-head", {}, h("h1#audit-heading", {}, "Audit trail")),
      h(
        "p.muted",
        {},
        "Needs an audit key. The key is kept only while this view is open and is never stored.",
      ),
      this.form,
      this.scroller,
    );
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.search();
    });
    this.watch = onVisible(this.sentinel, () => this.load());
  }

  search() {
    this.error.textContent = "";
    let filters;
    try {
      filters = {
        actor: this.actor.value.trim(),
        action: this.action.value.trim(),
        since: instant(this.since.value),
        until: instant(this.until.value),
      };
    } catch (e) {
      this.error.textContent = e.message;
      return;
    }
    this.key = this.keyInput.value;
    this.filters = filters;
    this.cursor = undefined;
    this.done = false;
    this.rows.replaceChildren();
    this.table.hidden = true;
    this.load();
  }

  async load() {
    if (this.loading || this.done || !this.key) return;
    this.loading = true;
    this.status.textContent = "Loading…";
    try {
      const page = await readAudit(this.filters, this.cursor, this.key);
      this.rows.append(...page.items.map(row));
      this.cursor = page.next_cursor;
      this.done = !page.next_cursor;
      this.table.hidden = this.rows.childElementCount === 0;
      this.status.textContent =
        this.rows.childElementCount === 0
          ? "No events match."
          : `${this.rows.childElementCount} events${this.done ? ", to the oldest that match" : ""}.`;
      this.watch.recheck();
    } catch (e) {
      this.done = true;
      this.status.textContent = "";
      this.error.textContent =
        e.status === 401
          ? "The console did not accept this audit key (401)."
          : `Could not read the audit trail: ${describe(e)}`;
    } finally {
      this.loading = false;
      this.more.hidden = this.done;
    }
  }

  /** Forgets the key (the view is being left). */
  close() {
    this.key = "";
    this.keyInput.value = "";
  }
}

function instant(local) {
  if (!local) return "";
  const d = new Date(local);
  if (Number.isNaN(d.getTime())) throw new Error(`Not a date and time: ${local}`);
  return d.toISOString();
}

const COLUMNS = ["Time", "Actor", "Action", "Target", "Outcome", "Node", "Request id", "Details"];

function row(event) {
  const details = event.details && Object.keys(event.details).length ? JSON.stringify(event.details) : "";
  const cells = [
    h("td", {}, when(event.ts, { full: true })),
    h("td", {}, event.actor ?? ""),
    h("td", {}, event.action),
    h("td", {}, event.target ?? ""),
    h("td", {}, `${event.outcome ?? ""}${event.status ? ` ${event.status}` : ""}`),
    h("td", {}, event.node ?? ""),
    h("td.mono", {}, event.request_id ?? ""),
    h("td.mono.details", {}, details),
  ];
  // The label each cell shows on narrow screens, where the head is hidden.
  cells.forEach((cell, i) => cell.setAttribute("data-label", COLUMNS[i]));
  return h("tr", { dataset: { id: event.id } }, ...cells);
}
