// The notification inbox (GET /api/v1/notifications, a page at a time): newest first,
// unread marked, one marked read when opened (POST .../{id}/read), all at once (POST
// .../read-all). A notification that arrives on the WebSocket joins the top at once (the
// shell shows it as a toast too).

import { api } from "../api";
import { h, message, time } from "../dom";
import { live } from "../live";
import type { Screen } from "../screen";
import type { Notification } from "../types";
import { shown } from "../forms";

/** A notification as the inbox lists it: the WebSocket's frame and whether it was read. */
type Item = Omit<Notification, "type"> & { read: boolean };

interface Page {
  notifications: Item[];
  unreadCount: number;
  nextCursor: string | null;
}

export const inbox: Screen = {
  path: "/inbox",
  title: "Inbox",
  nav: "Inbox",
  access: "user",
  render(root) {
    const items = new Map<string, Item>(); // by id, newest first
    let unread = 0;
    let cursor: string | null = null;
    const count = h("p", { id: "unread", role: "status", "aria-live": "polite" });
    const list = h("ul", { id: "inbox", class: "inbox", style: "list-style: none; padding: 0; margin: 0; display: grid; gap: 8px" });
    const error = message();
    const more = h("button", { type: "button", class: "secondary", hidden: true }, "Older notifications");
    const readAll = h("button", { type: "button", class: "secondary" }, "Mark all read");

    const markRead = (item: Item) => shown(error, async () => {
      await api("POST", `/api/v1/notifications/${encodeURIComponent(item.id)}/read`);
      item.read = true;
      unread = Math.max(0, unread - 1);
      draw();
    });
    const entry = (item: Item) => h("li", { class: "card", "data-notification": item.id, "data-kind": item.kind, "data-read": String(item.read), style: item.read ? "" : "border-left: 4px solid var(--accent)" },
      h("p", { style: "margin: 0" }, h("strong", {}, item.title), item.read ? "" : h("span", { class: "visually-hidden" }, " (unread)")),
      h("p", { style: "margin: 4px 0" }, item.body),
      h("small", {}, `${new Date(item.createdAt).toLocaleDateString("en-IN")} ${time(item.createdAt)}`,
        item.orderId ? " · " : null, item.orderId ? h("a", { href: "/orders", "data-link": true }, `order ${item.orderId}`) : null),
      item.read ? null : h("div", {}, h("button", { type: "button", class: "link", "aria-label": `Mark read: “${item.title}”`, onclick: () => void markRead(item) }, "Mark read")));
    function draw(): void {
      count.textContent = unread ? `${unread} unread` : "All read.";
      readAll.disabled = unread === 0;
      list.replaceChildren(...(items.size ? [...items.values()].map(entry) : [h("li", {}, "No notifications yet.")]));
      more.hidden = cursor === null;
    }
    const load = (after: string | null) => shown(error, async () => {
      const page = await api<Page>("GET", `/api/v1/notifications?limit=50${after ? `&cursor=${encodeURIComponent(after)}` : ""}`);
      if (!after) items.clear();
      for (const item of page.notifications) items.set(item.id, item);
      unread = page.unreadCount;
      cursor = page.nextCursor;
      draw();
    });
    more.addEventListener("click", () => void load(cursor));
    readAll.addEventListener("click", () => void shown(error, async () => {
      await api("POST", "/api/v1/notifications/read-all");
      for (const item of items.values()) item.read = true;
      unread = 0;
      draw();
    }));
    root.append(h("h1", {}, "Inbox"), h("div", { class: "actions" }, count, readAll), error, list, more);
    const off = [
      live.on("notification", (note: Notification) => {
        if (items.has(note.id)) return;
        const { type: _frame, ...fields } = note;
        const item: Item = { ...fields, read: false };
        const rest = [...items.values()];
        items.clear();
        for (const one of [item, ...rest]) items.set(one.id, one);
        unread += 1;
        draw();
      }),
      live.on("resync", () => void load(null)),
    ];
    void load(null);
    return () => off.forEach((f) => f());
  },
};
