// What the secondary screens (funds, statement, inbox, GTT, brackets, operator) share.

import { ApiError } from "../api";

/** The text to show for a failed call. */
export function problem(e: unknown): string {
  return e instanceof ApiError ? e.message : String(e);
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
