// The chat list (most recently active first, paged as it scrolls) and the
// form that creates a chat.

import { createChat, listChats, nodeNames } from "../api.js";
import { describe, h, onVisible, when } from "../dom.js";

export class ChatList {
  constructor({ onOpen }) {
    this.onOpen = onOpen;
    this.cursor = undefined;
    this.done = false;
    this.loading = false;
    this.selected = null;
    this.items = h("ul.chat-items", { "aria-label": "Chats" });
    this.status = h("p.muted.list-status", { role: "status" });
    this.more = h("button.link", { type: "button", onclick: () => this.load() }, "Load more chats");
    this.sentinel = h("div.sentinel", { "aria-hidden": "true" });
    this.scroller = h("div.scroll", {}, this.items, this.status, this.more, this.sentinel);
    this.form = newChatForm((chat) => this.created(chat));
    this.el = h(
      "aside.chats",
      { "aria-labelledby": "chats-heading" },
      h("div.pane-head", {}, h("h1#chats-heading", {}, "Chats"), this.form.toggle),
      this.form.el,
      this.scroller,
    );
    this.watch = onVisible(this.sentinel, () => this.load());
    this.load();
  }

  /** Reads the list again from its first page (others may have sent). */
  refresh() {
    if (this.loading) return;
    this.cursor = undefined;
    this.done = false;
    this.items.replaceChildren();
    this.load();
  }

  async load() {
    if (this.loading || this.done) return;
    this.loading = true;
    this.status.textContent = "Loading…";
    try {
      const page = await listChats(this.cursor);
      for (const chat of page.items) this.items.append(this.row(chat));
      this.cursor = page.next_cursor;
      this.done = !page.next_cursor;
      this.status.textContent =
        this.items.childElementCount === 0 ? "No chats yet: create one, or send to a new chat id." : "";
      this.watch?.recheck();
    } catch (e) {
      this.status.textContent = `Could not load chats: ${describe(e)}`;
    } finally {
      this.loading = false;
      this.more.hidden = this.done;
    }
  }

  row(chat) {
    const link = h(
      "a.chat-link",
      { href: `#/chats/${encodeURIComponent(chat.id)}`, dataset: { chatId: chat.id } },
      h("span.chat-title", {}, chat.title || chat.id),
      h(
        "span.chat-meta",
        {},
        h("span.node", {}, chat.node),
        ` · ${chat.message_count} message${chat.message_count === 1 ? "" : "s"} · `,
        when(chat.updated_at),
      ),
    );
    if (chat.id === this.selected) link.setAttribute("aria-current", "page");
    return h("li", { dataset: { chatId: chat.id } }, link);
  }

  /** Marks `id` as the open chat. */
  select(id) {
    this.selected = id;
    for (const a of this.items.querySelectorAll("a.chat-link")) {
      if (a.dataset.chatId === id) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
  }

  /** A chat changed (a send): it moves to the top with its new figures. */
  touched(chat) {
    this.items.querySelector(`li[data-chat-id="${CSS.escape(chat.id)}"]`)?.remove();
    this.items.prepend(this.row(chat));
    this.status.textContent = "";
  }

  created(chat) {
    this.touched(chat);
    this.onOpen(chat.id);
  }
}

function newChatForm(onCreated) {
  const title = h("input#new-title", { name: "title", maxlength: 200, autocomplete: "off" });
  const node = h("select#new-node", { name: "node" });
  const error = h("p.error", { role: "alert" });
  const form = h(
    "form.new-chat",
    { hidden: true, "aria-label": "New chat" },
    h("label", { for: "new-title" }, "Title"),
    title,
    h("label", { for: "new-node" }, "Node"),
    node,
    h(
      "div.actions",
      {},
      h("button.primary", { type: "submit" }, "Create chat"),
      h("button.link", { type: "button", onclick: () => close() }, "Cancel"),
    ),
    error,
  );
  const toggle = h(
    "button.secondary.new-chat-toggle",
    { type: "button", "aria-expanded": "false", onclick: () => (form.hidden ? open() : close()) },
    "New chat",
  );
  async function open() {
    form.hidden = false;
    toggle.setAttribute("aria-expanded", "true");
    error.textContent = "";
    title.focus();
    if (node.options.length === 0) {
      const names = await nodeNames().catch(() => []);
      node.replaceChildren(
        h("option", { value: "" }, "default node"),
        ...names.map((n) => h("option", { value: n }, n)),
      );
    }
  }
  function close() {
    form.hidden = true;
    toggle.setAttribute("aria-expanded", "false");
    toggle.focus();
  }
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const chat = {};
    if (title.value.trim()) chat.title = title.value.trim();
    if (node.value) chat.node = node.value;
    try {
      const created = await createChat(chat);
      title.value = "";
      form.hidden = true;
      toggle.setAttribute("aria-expanded", "false");
      onCreated(created);
    } catch (e) {
      error.textContent = `Could not create the chat: ${describe(e)}`;
    }
  });
  return { el: form, toggle };
}
