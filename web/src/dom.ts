// Small DOM helpers: elements built in code (no HTML strings, so no injection), labelled
// form fields, and number formatting.

type Child = Node | string | number | null | undefined | false;
type Attrs = Record<string, string | number | boolean | EventListener | undefined>;

/** h("button", {type: "submit", onclick: f}, "Buy"): attributes, "on*" listeners, children. */
export function h<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Attrs = {}, ...children: Child[]): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  append(element, ...children);
  return element;
}

export function append(parent: Element, ...children: Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    parent.append(child instanceof Node ? child : String(child));
  }
}

/** A table's header row: `numeric` names the columns aligned right (their cells are .num). */
export function head(labels: string[], numeric: string[] = []): HTMLTableSectionElement {
  return h("thead", {}, h("tr", {}, ...labels.map((label) =>
    h("th", { scope: "col", class: numeric.includes(label) ? "num" : undefined }, label || h("span", { class: "visually-hidden" }, "Actions")))));
}

/** A wide table in a box that scrolls sideways on a narrow screen: a region named by the
 * table's caption, focusable so that a keyboard can scroll it too (WCAG 2.1.1). */
export function scrolling(table: HTMLTableElement): HTMLElement {
  return h("div", { class: "grid-wrap", role: "region", "aria-label": table.caption?.textContent ?? undefined, tabindex: 0 }, table);
}

/** Name each cell of `row` after its column, for the stacked layout on a phone (.cards). */
export function labelled<T extends HTMLTableRowElement>(row: T, labels: string[]): T {
  Array.from(row.cells).forEach((cell, i) => labels[i] && (cell.dataset.label = labels[i]));
  return row;
}

let fieldCount = 0;

/** A label with its control (input or select) and a place for the field's error. */
export function field(label: string, control: HTMLInputElement | HTMLSelectElement, hint?: string): HTMLElement {
  control.id ||= `f${++fieldCount}`;
  const wrap = h("div", { class: "field" }, h("label", { for: control.id }, label), control);
  if (hint) {
    const note = h("small", { id: `${control.id}-hint` }, hint);
    control.setAttribute("aria-describedby", note.id);
    wrap.append(note);
  }
  return wrap;
}

export function select(name: string, options: [string, string][], value?: string): HTMLSelectElement {
  const element = h("select", { name });
  for (const [key, text] of options) element.append(h("option", { value: key, selected: key === value }, text));
  return element;
}

/** An element whose text is a message for screen readers and eyes (role=alert on errors). */
export function message(kind: "error" | "info" = "error"): HTMLElement {
  return h("p", { class: `message ${kind}`, role: kind === "error" ? "alert" : "status", "aria-live": "polite" });
}

const money = new Intl.NumberFormat("en-IN", { minimumFractionDigits: 2, maximumFractionDigits: 2 });

/** "123456.5" -> "1,23,456.50"; null -> "—". */
export function rupees(value: string | null | undefined): string {
  if (value === null || value === undefined || value === "") return "—";
  return money.format(Number(value));
}

/** A signed amount with its class for colour: gain, loss or flat. */
export function signed(value: string | null | undefined): HTMLElement {
  const n = Number(value ?? 0);
  const cls = value === null || value === undefined ? "flat" : n > 0 ? "gain" : n < 0 ? "loss" : "flat";
  return h("span", { class: cls }, value === null || value === undefined ? "—" : `${n > 0 ? "+" : ""}${rupees(value)}`);
}

export function time(iso: string): string {
  return new Date(iso).toLocaleTimeString("en-IN", { hour12: false });
}
