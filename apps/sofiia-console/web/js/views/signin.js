// Signing in: the operator token is checked against the API and kept in
// sessionStorage (this tab only, gone when it closes); never in a cookie or
// a URL.

import { forgetToken, listChats, Problem, setToken } from "../api.js";
import { describe, h } from "../dom.js";

export function signInView({ message = "", onSignedIn }) {
  const input = h("input#token", {
    type: "password",
    name: "token",
    autocomplete: "off",
    required: true,
    spellcheck: "false",
    "aria-describedby": "token-help",
  });
  const error = h("p.error#signin-error", { role: "alert" }, message);
  const button = h("button.primary", { type: "submit" }, "Sign in");
  const form = h(
    "form.signin",
    { "aria-labelledby": "signin-heading" },
    h("h1#signin-heading", {}, "Sign in"),
    h("label", { for: "token" }, "Operator token"),
    input,
    h(
      "p#token-help.muted",
      {},
      "The token your administrator configured for you (SOFIIA_OPERATOR_TOKENS). It stays in this tab only.",
    ),
    button,
    error,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    button.disabled = true;
    setToken(input.value.trim());
    try {
      await listChats(undefined, 1);
      onSignedIn();
    } catch (e) {
      forgetToken();
      error.textContent =
        e instanceof Problem && e.status === 401
          ? "The console did not accept this operator token (401). Check it and try again."
          : `Could not reach the console: ${describe(e)}`;
      input.select();
    } finally {
      button.disabled = false;
    }
  });
  return { el: h("div.center", {}, form), focus: input };
}
