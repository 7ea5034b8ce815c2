// The market phase banner: what the symbols the app has seen are doing (the BOOK frames'
// and the instruments' phase): pre-open with the indicative opening, open, halted, closed.

import { rupees } from "./dom";
import type { Book, Indicative } from "./types";

interface State {
  phase: string;
  halted: boolean;
  indicative: Indicative | null;
}

const states = new Map<string, State>();
let focus: string | null = null;

/** The symbol the current screen is about (its phase is told first), or null. */
export function focusPhase(symbol: string | null): void {
  focus = symbol;
  render();
}

export function notePhase(symbol: string, state: Partial<Book> & { phase: string }): void {
  states.set(symbol, { phase: state.phase, halted: state.halted ?? state.phase === "HALTED", indicative: state.indicative ?? null });
  render();
}

function describe(symbol: string, state: State): [string, string] {
  if (state.halted || state.phase === "HALTED") return ["halted", `${symbol}: halted, no trading`];
  if (state.phase === "PRE_OPEN") {
    const at = state.indicative ? `indicative opening ₹${rupees(state.indicative.price)} (${state.indicative.volume} shares)` : "no indicative price yet";
    return ["pre-open", `${symbol}: pre-open call auction, ${at}`];
  }
  if (state.phase === "CLOSED") return ["closed", `${symbol}: closed (after-market orders are taken)`];
  return ["open", `${symbol}: open`];
}

function render(): void {
  const banner = document.getElementById("phase");
  if (!banner) return;
  const shown = focus && states.has(focus) ? focus : null;
  let kind: string;
  let text: string;
  if (shown) [kind, text] = describe(shown, states.get(shown)!);
  else if (states.size) {
    const phases = new Set([...states.values()].map((s) => (s.halted ? "HALTED" : s.phase)));
    const halted = [...states].filter(([, s]) => s.halted || s.phase === "HALTED").map(([n]) => n);
    if (phases.size === 1) [kind, text] = describe("Market", [...states.values()][0]);
    else [kind, text] = ["mixed", `Market: mixed phases${halted.length ? `; halted: ${halted.join(", ")}` : ""}`];
  } else {
    banner.hidden = true;
    return;
  }
  banner.hidden = false;
  banner.dataset.phase = kind;
  if (banner.textContent !== text) banner.textContent = text; // a live region: said when it changes
}
