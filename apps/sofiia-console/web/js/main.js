// The page's entry: sign-in, then three views chosen by the URL's fragment
// (#/chats, #/chats/<id>, #/audit). The chat list stays alive while chats
// are opened beside it, so its scroll position and pages are kept.

import { forgetToken, token } from "./api.js";
import { h, show } from "./dom.js";
import { outbox } from "./send.js";
import { AuditView } from "./views/audit.js";
import { ChatView } from "./views/chat.js";
import { ChatList } from "./views/chats.js";
import { signInView } from "./views/signin.js";

let current = "none";
let list = null;
let chat = null;
let audit = null;
let layout = null;

const nav = document.querySelector("nav.views");
const signOut = document.getElementById("sign-out");

function route() {
  const hash = location.hash.replace(/^#/, "") || "/chats";
  if (hash === "/audit") return { view: "audit" };
  const m = hash.match(/^\/chats\/(.+)$/);
  if (m) return { view: "chats", chatId: decodeURIComponent(m[1]) };
  return { view: "chats", chatId: null };
}

function render({ message = "" } = {}) {
  const { view, chatId } = route();
  if (view !== "audit" && audit) {
    audit.close();
    audit = null;
  }
  // The audit view has a key of its own; everything else needs the token.
  if (view !== "audit" && !token()) {
    current = "signin";
    list = chat = layout = null;
    nav.hidden = true;
    signOut.hidden = true;
    const form = signInView({ message, onSignedIn: () => render() });
    show(form.el);
    form.focus.focus();
    return;
  }
  nav.hidden = false;
  signOut.hidden = !token();
  for (const a of nav.querySelectorAll("a")) {
    if (a.dataset.view === view) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (view === "audit") {
    if (current !== "audit") {
      current = "audit";
      list = chat = layout = null;
      audit = new AuditView();
      show(audit.el);
      audit.keyInput.focus();
    }
    return;
  }
  if (current !== "chats") {
    current = "chats";
    list = new ChatList({ onOpen: (id) => (location.hash = `#/chats/${encodeURIComponent(id)}`) });
    layout = h("div.split", {}, list.el, placeholder());
    show(layout);
    chat = null;
  }
  if ((chat?.chatId ?? null) === chatId) return;
  list.select(chatId);
  layout.classList.toggle("has-chat", chatId !== null);
  if (chatId === null) {
    if (chat) list.refresh();
    chat = null;
    layout.replaceChild(placeholder(), layout.lastChild);
    return;
  }
  chat = new ChatView(chatId, { onChanged: (c) => list?.touched(c) });
  layout.replaceChild(chat.el, layout.lastChild);
  chat.input.focus();
}

function placeholder() {
  return h("div.placeholder", {}, h("p.muted", {}, "Choose a chat, or create one."));
}

window.addEventListener("hashchange", () => render());
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") list?.refresh();
});
window.addEventListener("sofiia:unauthorized", () => {
  if (current === "signin") return;
  forgetToken();
  outbox.clear();
  current = "none";
  render({ message: "The console no longer accepts your operator token (401). Sign in again." });
});
signOut.addEventListener("click", () => {
  forgetToken();
  outbox.clear();
  current = "none";
  location.hash = "#/chats";
  render();
});

render();
