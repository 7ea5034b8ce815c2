// Open an account: email and password (10 to 256 characters). The account trades once an
// operator has verified its KYC; the second factor is set up after the first login.

import { ApiError, api } from "../api";
import { field, h, message } from "../dom";
import { navigate } from "../router";
import { problem } from "../forms";
import type { Screen } from "../screen";

export const signup: Screen = {
  path: "/signup",
  title: "Open an account",
  nav: "Sign up",
  access: "public",
  render(root) {
    const email = h("input", { type: "email", name: "email", autocomplete: "username", required: true });
    const password = h("input", { type: "password", name: "password", autocomplete: "new-password", required: true, minlength: 10, maxlength: 256 });
    const error = message();
    const submit = h("button", { type: "submit" }, "Open account");
    const form = h("form", { class: "card narrow", "aria-labelledby": "signup-title" },
      h("h1", { id: "signup-title" }, "Open an account"),
      field("Email", email),
      field("Password", password, "At least 10 characters"),
      error,
      submit,
      h("p", {}, "Have an account? ", h("a", { href: "/login", "data-link": true }, "Log in")),
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      error.textContent = "";
      submit.disabled = true;
      try {
        await api("POST", "/api/v1/auth/signup", { email: email.value.trim(), password: password.value });
        navigate(`/login?email=${encodeURIComponent(email.value.trim())}`);
      } catch (e) {
        error.textContent = e instanceof ApiError ? (e.fields[0]?.message ?? e.message) : problem(e);
      } finally {
        submit.disabled = false;
      }
    });
    root.append(form);
  },
};
