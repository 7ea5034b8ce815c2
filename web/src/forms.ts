// What the screens' forms and loads share: the text of a failure, a form sent with an
// idempotency key kept until an answer comes, and reloads coalesced.

import { ApiError, idempotencyKey } from "./api";

/** The text to show for a failed call. */
export function problem(e: unknown): string {
  return e instanceof ApiError ? e.message : String(e);
}

/** Run `action`, its failure shown in `where` (emptied first). */
export async function shown(where: HTMLElement, action: () => Promise<unknown>): Promise<void> {
  where.textContent = "";
  try {
    await action();
  } catch (e) {
    where.textContent = problem(e);
  }
}

/**
 * Send `form` with `send(key)`, its failure shown in `where`. The idempotency key stays
 * the same until an answer comes (a retry after a lost answer is the same request, never
 * a second one) and is a new one once the form is changed.
 */
export function keyedSubmit(form: HTMLFormElement, prefix: string, where: HTMLElement, send: (key: string) => Promise<void>): void {
  let key: string | null = null;
  form.addEventListener("input", () => (key = null));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const sent = (key ??= idempotencyKey(prefix));
    void shown(where, async () => {
      await send(sent);
      key = null;
    });
  });
}

/**
 * `load` run again on each call, never two at once: calls while one runs make one more
 * run after it (so the last state is always read, and a burst of updates costs two reads).
 */
export function coalesced(load: () => Promise<void>): () => void {
  let busy = false;
  let again = false;
  return async () => {
    if (busy) return void (again = true);
    busy = true;
    try {
      do {
        again = false;
        await load();
      } while (again);
    } finally {
      busy = false;
    }
  };
}
