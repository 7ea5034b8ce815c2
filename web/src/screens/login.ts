// Log in: email and password, then the second factor (a TOTP code or a recovery code)
// when the account has one (docs/identity.md).

import { ApiError, api, setTokens, type Tokens } from "../api";
import { field, h, message } from "../dom";
import { navigate } from "../router";
import { problem } from "../forms";
import type { Screen } from "../screen";

type LoginAnswer = Tokens | { mfaRequired: true; mfaToken: string };

function done(): void {
  const next = new URLSearchParams(location.search).get("next");
  navigate(next && next.startsWith("/") && !next.startsWith("//") ? next : "/watchlist", true);
}

export const login: Screen = {
  path: "/login",
  title: "Log in",
  nav: "Log in",
  access: "public",
  render(root) {
    const email = h("input", { type: "email", name: "email", autocomplete: "username", required: true });
    email.value = new URLSearchParams(location.search).get("email") ?? "";
    const password = h("input", { type: "password", name: "password", autocomplete: "current-password", required: true });
    const code = h("input", { name: "code", inputmode: "numeric", autocomplete: "one-time-code", maxlength: 11 });
    const error = message();
    const submit = h("button", { type: "submit" }, "Log in");
    const second = h("div", { hidden: true }, field("Authentication code", code, "The 6-digit code from your authenticator app, or a recovery code"));
    const form = h("form", { class: "card narrow", "aria-labelledby": "login-title" },
      h("h1", { id: "login-title" }, "Log in"),
      field("Email", email),
      field("Password", password),
      second,
      error,
      submit,
      h("p", {}, "New here? ", h("a", { href: "/signup", "data-link": true }, "Open an account")),
    );
    let mfaToken: string | null = null;
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      error.textContent = "";
      submit.disabled = true;
      try {
        if (mfaToken) {
          setTokens(await api<Tokens>("POST", "/api/v1/auth/login/totp", { mfaToken, code: code.value.trim() }));
          done();
          return;
        }
        const answer = await api<LoginAnswer>("POST", "/api/v1/auth/login", { email: email.value.trim(), password: password.value });
        if ("mfaRequired" in answer) {
          mfaToken = answer.mfaToken;
          second.hidden = false;
          code.required = true;
          email.readOnly = password.readOnly = true;
          submit.textContent = "Verify";
          code.focus();
        } else {
          setTokens(answer);
          done();
        }
      } catch (e) {
        error.textContent = problem(e);
        if (e instanceof ApiError && e.code === "INVALID_CODE") code.select();
      } finally {
        submit.disabled = false;
      }
    });
    root.append(form);
    (email.value ? password : email).focus();
  },
};
