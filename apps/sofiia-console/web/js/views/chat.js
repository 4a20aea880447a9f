// One chat: its history (newest at the bottom, older pages loaded as the
// operator scrolls up) and the composer. Enter sends, Shift+Enter starts a
// new line.

import { getChat, listMessages, Problem } from "../api.js";
import { describe, h, onVisible, when } from "../dom.js";
import { deliver, newKey, outbox } from "../send.js";

export class ChatView {
  constructor(chatId, { onChanged }) {
    this.chatId = chatId;
    this.onChanged = onChanged;
    this.cursor = undefined;
    this.done = false;
    this.loading = false;
    this.sending = false;

    this.title = h("h2#chat-heading", {}, chatId);
    this.node = h("span.node", {});
    this.messages = h("ol.messages", { "aria-label": "Messages" });
    this.topStatus = h("p.muted.list-status", { role: "status" });
    this.older = h(
      "button.link",
      { type: "button", hidden: true, onclick: () => this.loadOlder() },
      "Load older messages",
    );
    this.sentinel = h("div.sentinel", { "aria-hidden": "true" });
    this.scroller = h(
      "div.scroll.history",
      { role: "log", "aria-labelledby": "chat-heading" },
      this.sentinel,
      this.older,
      this.topStatus,
      this.messages,
    );
    this.input = h("textarea#message", {
      name: "text",
      rows: 2,
      maxlength: 16000,
      required: true,
      placeholder: "Write to Sofiia…",
      "aria-describedby": "composer-help",
    });
    this.sendButton = h("button#send.primary", { type: "submit" }, "Send");
    this.composer = h(
      "form.composer",
      { "aria-label": "Send a message" },
      h("label.visually-hidden", { for: "message" }, "Message"),
      this.input,
      this.sendButton,
      h(
        "p#composer-help.composer-help.muted",
        {},
        "Enter sends, Shift+Enter starts a new line. A message is sent once, however often it is retried.",
      ),
    );
    this.el = h(
      "section.chat",
      { "aria-labelledby": "chat-heading" },
      h(
        "div.pane-head",
        {},
        h("a.back", { href: "#/chats" }, "← Chats"),
        this.title,
        this.node,
      ),
      this.scroller,
      this.composer,
    );

    this.input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.composer.requestSubmit();
      }
    });
    this.composer.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    this.start();
  }

  async start() {
    try {
      const chat = await getChat(this.chatId);
      this.showChat(chat);
      await this.loadOlder();
      this.scrollToEnd();
      this.watch = onVisible(this.sentinel, () => this.loadOlder());
    } catch (e) {
      if (e instanceof Problem && e.status === 404) {
        this.topStatus.textContent = "A new chat: your first message creates it.";
        this.done = true;
      } else {
        this.topStatus.textContent = `Could not load the chat: ${describe(e)}`;
      }
    }
    this.resume();
  }

  /** The messages of this chat a reload interrupted, from the outbox. */
  resume() {
    for (const item of outbox.of(this.chatId)) {
      const p = new Pending(item.message, this.messages);
      const resend = () => this.send(item.message, item.key, p);
      if (item.state === "sending" && !this.sending) resend();
      else p.held(resend);
    }
  }

  showChat(chat) {
    this.title.textContent = chat.title || chat.id;
    this.node.textContent = chat.node;
    this.node.title = `default node of this chat: ${chat.node}`;
  }

  async loadOlder() {
    if (this.loading || this.done) return;
    this.loading = true;
    this.topStatus.textContent = "Loading older messages…";
    try {
      const page = await listMessages(this.chatId, this.cursor);
      const fromBottom = this.scroller.scrollHeight - this.scroller.scrollTop;
      // The page is newest first; the view reads top to bottom.
      this.messages.prepend(...page.items.reverse().map((m) => messageItem(m)));
      this.scroller.scrollTop = this.scroller.scrollHeight - fromBottom;
      this.cursor = page.next_cursor;
      this.done = !page.next_cursor;
      this.topStatus.textContent = this.done
        ? this.messages.childElementCount === 0
          ? "No messages yet."
          : "The beginning of this chat."
        : "";
      this.watch?.recheck();
    } catch (e) {
      this.topStatus.textContent = `Could not load messages: ${describe(e)}`;
    } finally {
      this.loading = false;
      this.older.hidden = this.done;
    }
  }

  scrollToEnd() {
    this.scroller.scrollTop = this.scroller.scrollHeight;
  }

  submit() {
    const text = this.input.value.trim();
    if (this.sending || !text) return;
    this.input.value = "";
    this.send({ text }, newKey());
  }

  /** Sends `message` under `key`: a first try, or the operator's resend. */
  async send(message, key, pending = null) {
    // One send at a time per chat: a resend waits for the composer's turn.
    if (this.sending) return;
    this.sending = true;
    this.sendButton.disabled = true;
    this.sendButton.textContent = "Sending…";
    // "No messages yet" and "a new chat" notes end with the first message.
    if (!this.messages.querySelector("li[data-id]")) this.topStatus.textContent = "";
    const p = pending ?? new Pending(message, this.messages);
    p.sending();
    outbox.put(this.chatId, key, message, "sending");
    this.scrollToEnd();
    try {
      const answer = await deliver(this.chatId, message, key, {
        reset: () => p.reset(),
        delta: (text) => {
          const atEnd = this.scroller.scrollHeight - this.scroller.scrollTop - this.scroller.clientHeight < 40;
          p.delta(text);
          if (atEnd) this.scrollToEnd();
        },
        retrying: (n, seconds, error) => p.retrying(n, seconds, error),
      });
      outbox.drop(key);
      p.answered(answer);
      getChat(this.chatId)
        .then((chat) => {
          this.showChat(chat);
          this.onChanged(chat);
        })
        .catch(() => {});
    } catch (error) {
      // A refused request (400, 401, 413, 422, ...) will not go through
      // later; anything else may, and waits for the operator.
      const refused = error instanceof Problem && error.status < 500 && ![408, 409, 429].includes(error.status);
      if (refused) outbox.drop(key);
      else outbox.put(this.chatId, key, message, "held");
      // A node that broke off mid-reply was reached: its key keeps that
      // failure for good, so only a new key can ask again.
      const again = interrupted(error) ? () => this.send(message, newKey(), p) : () => this.send(message, key, p);
      if (interrupted(error)) outbox.drop(key);
      p.failed(error, again);
    } finally {
      this.sending = false;
      this.sendButton.disabled = false;
      this.sendButton.textContent = "Send";
      this.scrollToEnd();
    }
  }
}

/** The node broke off after it began its reply (502 `node-interrupted`). */
function interrupted(error) {
  return error instanceof Problem && error.type.endsWith(":node-interrupted");
}

function messageItem(m) {
  const agent = m.role === "agent";
  return h(
    `li.msg.${agent ? "agent" : "operator"}`,
    { dataset: { id: m.id } },
    h("div.text", {}, m.text),
    h(
      "div.meta",
      {},
      agent ? h("span.node", { title: "the node that answered" }, m.node) : h("span", {}, m.operator_id),
      " · ",
      when(m.ts),
    ),
  );
}

/** A message on its way: the operator's text and the reply as it streams in. */
class Pending {
  constructor(message, list) {
    this.list = list;
    this.mine = h(
      "li.msg.operator.pending",
      {},
      h("div.text", {}, message.text),
      h("div.meta", {}, "sending…"),
    );
    this.replyText = h("div.text", {});
    this.status = h("div.meta", { role: "status" });
    this.reply = h("li.msg.agent.pending", { "aria-busy": "true" }, this.replyText, this.status);
    list.append(this.mine, this.reply);
    this.countdown = null;
  }

  sending() {
    clearInterval(this.countdown);
    this.mine.querySelector(".meta").textContent = "sending…";
    this.reply.classList.remove("failed");
    this.reply.setAttribute("aria-busy", "true");
    this.status.replaceChildren("Sofiia is writing…");
  }

  reset() {
    this.replyText.textContent = "";
  }

  delta(text) {
    this.replyText.append(text);
  }

  retrying(n, seconds, error) {
    const why = error instanceof Problem ? describe(error) : error.message;
    this.status.replaceChildren(
      h("span.badge.warn", {}, "retrying"),
      ` ${why}; attempt ${n + 1} in ${seconds} s, with the same key (no second message).`,
    );
  }

  answered({ receipt, replayed }) {
    // Already in the history (a reload read it before this replay came).
    if (this.list.querySelector(`li[data-id="${CSS.escape(receipt.message.id)}"]`)) {
      this.mine.remove();
      this.reply.remove();
      return;
    }
    this.mine.replaceWith(messageItem(receipt.message));
    const item = messageItem(receipt.reply);
    if (replayed) {
      item.querySelector(".meta").append(
        " · ",
        h("span.badge", { title: "answered from the first delivery of this message" }, "replayed"),
      );
    }
    this.reply.replaceWith(item);
  }

  /** Interrupted by a reload after it stopped for the operator. */
  held(resend) {
    this.mine.querySelector(".meta").textContent = "not sent yet";
    this.reply.classList.add("failed");
    this.reply.removeAttribute("aria-busy");
    this.status.replaceChildren(
      "Not answered yet. ",
      h("button.secondary.resend", { type: "button", onclick: resend }, "Send again"),
    );
  }

  failed(error, resend) {
    this.mine.querySelector(".meta").textContent =
      error instanceof Problem && error.status === 429 ? "not sent yet" : "no answer yet";
    this.reply.classList.add("failed");
    this.reply.removeAttribute("aria-busy");
    const again = h("button.secondary.resend", { type: "button", onclick: resend }, "Send again");
    if (!(error instanceof Problem)) {
      this.status.replaceChildren(`No answer (${error.message}). `, again);
      return;
    }
    const status = error.status;
    if (status === 429 && error.retryAfter !== null) {
      again.disabled = true;
      const left = h("span.countdown", { role: "timer" });
      let seconds = error.retryAfter;
      const tick = () => {
        left.textContent = `${seconds} s`;
        if (seconds <= 0) {
          clearInterval(this.countdown);
          again.disabled = false;
          left.textContent = "now";
        }
        seconds -= 1;
      };
      this.status.replaceChildren(
        h("span.badge.warn", {}, "rate limited"),
        ` ${error.detail || error.title}. You can send again in `,
        left,
        ". ",
        again,
      );
      tick();
      this.countdown = setInterval(tick, 1000);
    } else if (status === 503 || status === 409) {
      this.status.replaceChildren("The console is busy: try again shortly. ", again);
    } else if (interrupted(error)) {
      again.textContent = "Send as a new message";
      this.status.replaceChildren(
        h("span.badge.error", {}, "reply broken off"),
        ` ${describe(error)}. The node began answering and stopped; this message will not be sent again. `,
        again,
      );
    } else if (status === 502 || status === 504) {
      this.status.replaceChildren(
        h("span.badge.error", {}, status === 504 ? "node timed out" : "node failed"),
        ` ${describe(error)}. `,
        again,
      );
    } else {
      this.status.replaceChildren(h("span.badge.error", {}, `${status}`), ` ${describe(error)}`);
    }
  }
}
