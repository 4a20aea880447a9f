// Small DOM helpers. Text always goes in as text nodes, never as HTML.

/**
 * `h("p#hint.note", {title: "x", onclick: f}, "text", child)`: an element
 * with the id and classes of the tag, attributes (functions under `on*`
 * become listeners; `false`/`null` attributes are left out) and children.
 */
export function h(tag, attrs = {}, ...children) {
  const [name, ...marks] = tag.split(/(?=[#.])/);
  const el = document.createElement(name);
  const classes = marks.filter((m) => m.startsWith(".")).map((m) => m.slice(1));
  const id = marks.find((m) => m.startsWith("#"));
  if (classes.length) el.className = classes.join(" ");
  if (id) el.id = id.slice(1);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === false || v === null || v === undefined) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

/** Replaces the main view's content and moves focus to `focus` (or main). */
export function show(...children) {
  const main = document.getElementById("main");
  main.replaceChildren(...children);
  return main;
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dateTimeFormat = new Intl.DateTimeFormat(undefined, {
  year: "numeric",
  month: "short",
  day: "numeric",
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
});

/** A `<time>` for an RFC 3339 instant: short text, the full instant as title. */
export function when(iso, { full = false } = {}) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return h("time", {}, iso || "");
  const sameDay = new Date().toDateString() === d.toDateString();
  const text = full || !sameDay ? dateTimeFormat.format(d) : timeFormat.format(d);
  return h("time", { datetime: iso, title: d.toISOString() }, text);
}

/**
 * Calls `load` whenever `sentinel` becomes visible (in the viewport and
 * not clipped by the pane that scrolls it). `recheck()` (after a page is
 * added) looks again: a sentinel that stayed in view, because the page was
 * short, asks for the next page too.
 */
export function onVisible(sentinel, load) {
  const observer = new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting)) load();
  });
  observer.observe(sentinel);
  return {
    recheck() {
      observer.unobserve(sentinel);
      observer.observe(sentinel);
    },
  };
}

/** A problem as one line for people: title, detail and the request id. */
export function describe(problem) {
  const parts = [problem.title || problem.message];
  if (problem.detail && problem.detail !== problem.title) parts.push(problem.detail);
  let text = parts.join(": ");
  if (problem.requestId) text += ` (request id ${problem.requestId})`;
  return text;
}
