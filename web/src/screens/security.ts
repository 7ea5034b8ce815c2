// The account and its second factor: the profile (/api/v1/me), and setting up TOTP
// (enrol: a secret for an authenticator app; confirm with a code: 10 recovery codes).

import { api } from "../api";
import { field, h, message } from "../dom";
import { problem } from "../forms";
import type { Screen } from "../screen";

interface Me {
  userId: string;
  email: string;
  kycStatus: string;
  roles: string[];
  totpEnrolled: boolean;
}

export const security: Screen = {
  path: "/account",
  title: "Account and security",
  nav: "Account",
  access: "user",
  render(root) {
    const profile = h("dl", { class: "facts" });
    const factor = h("section", { "aria-labelledby": "totp-title" }, h("h2", { id: "totp-title" }, "Two-factor authentication"));
    const error = message();
    root.append(h("h1", {}, "Account and security"), profile, factor, error);

    const showEnrol = (enrolled: boolean) => {
      const start = h("button", { type: "button" }, enrolled ? "Two-factor is on" : "Set up two-factor");
      start.disabled = enrolled;
      factor.append(h("p", {}, enrolled ? "Logins ask for a code from your authenticator app." : "Protect your account with a code from an authenticator app at each login."), start);
      start.addEventListener("click", async () => {
        error.textContent = "";
        try {
          const enrol = await api<{ secret: string; otpauthUri: string }>("POST", "/api/v1/auth/totp/enrol");
          start.remove();
          confirm(enrol.secret, enrol.otpauthUri);
        } catch (e) {
          error.textContent = problem(e);
        }
      });
    };

    const confirm = (secret: string, uri: string) => {
      const code = h("input", { name: "code", inputmode: "numeric", autocomplete: "one-time-code", required: true, maxlength: 6 });
      const form = h("form", { class: "card" },
        h("p", {}, "Add this key to your authenticator app (or open the link on your phone), then enter the code it shows."),
        h("p", {}, "Key: ", h("code", { id: "totp-secret" }, secret)),
        h("p", {}, h("a", { href: uri }, "Open in authenticator app")),
        field("Code from the app", code),
        h("button", { type: "submit" }, "Turn on"),
      );
      form.addEventListener("submit", async (event) => {
        event.preventDefault();
        error.textContent = "";
        try {
          const answer = await api<{ recoveryCodes: string[] }>("POST", "/api/v1/auth/totp/confirm", { code: code.value.trim() });
          form.replaceWith(
            h("div", { class: "card", role: "status" },
              h("p", {}, "Two-factor is on. Keep these recovery codes somewhere safe: each logs you in once without the app."),
              h("ul", { class: "codes", id: "recovery-codes" }, ...answer.recoveryCodes.map((c) => h("li", {}, h("code", {}, c))))),
          );
        } catch (e) {
          error.textContent = problem(e);
          code.select();
        }
      });
      factor.append(form);
      code.focus();
    };

    api<Me>("GET", "/api/v1/me").then(
      (me) => {
        for (const [term, value] of [["Email", me.email], ["User id", me.userId], ["KYC", me.kycStatus], ["Roles", me.roles.join(", ") || "customer"]]) {
          profile.append(h("dt", {}, term), h("dd", {}, value));
        }
        showEnrol(me.totpEnrolled);
      },
      (e) => (error.textContent = problem(e)),
    );
  },
};
