// The REST API behind the edge: JSON bodies, the bearer token, its refresh, and the
// project's error shape ({"error": {"code", "message", "fields"?}}, docs/errors.md).

export interface FieldError {
  field: string;
  message: string;
}

/** A refusal of the API (or of the network) with its stable code and a human message. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly fields: FieldError[] = [],
  ) {
    super(message);
  }
}

export interface Tokens {
  accessToken: string;
  refreshToken: string;
  expiresIn: number;
}

const STORE = "brokercore.tokens";
type Listener = (signedIn: boolean) => void;
const listeners = new Set<Listener>();
let refreshing: Promise<boolean> | null = null;

/** The tokens of this tab's login (sessionStorage: each tab, each browser context, its own). */
export function tokens(): Tokens | null {
  const raw = sessionStorage.getItem(STORE);
  return raw ? (JSON.parse(raw) as Tokens) : null;
}

export function signedIn(): boolean {
  return tokens() !== null;
}

export function setTokens(value: Tokens | null): void {
  if (value) sessionStorage.setItem(STORE, JSON.stringify(value));
  else sessionStorage.removeItem(STORE);
  for (const listener of listeners) listener(value !== null);
}

/** Called with true on a login, false when the session ends (logout, refresh refused). */
export function onAuthChange(listener: Listener): void {
  listeners.add(listener);
}

/** The token's claims, unverified (the services verify it): for the user id and roles. */
export function claims(): { sub: string; roles: string[]; exp: number } | null {
  const token = tokens()?.accessToken;
  if (!token) return null;
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part));
  } catch {
    return null;
  }
}

async function errorOf(response: Response): Promise<ApiError> {
  try {
    const body = await response.json();
    if (body?.error?.code) {
      return new ApiError(response.status, body.error.code, body.error.message, body.error.fields ?? []);
    }
  } catch {
    // not JSON: fall through
  }
  return new ApiError(response.status, `HTTP_${response.status}`, response.statusText || "request failed");
}

/** Spend the refresh token for new tokens, once at a time; false when refused (signed out). */
export function refresh(): Promise<boolean> {
  refreshing ??= (async () => {
    const current = tokens();
    if (!current) return false;
    try {
      const next = await call<Tokens>("POST", "/api/v1/auth/refresh", { refreshToken: current.refreshToken }, false);
      setTokens(next);
      return true;
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) setTokens(null);
      return false;
    }
  })().finally(() => (refreshing = null));
  return refreshing;
}

/** An access token good for at least 30 s more (refreshed first when not): for the WebSocket. */
export async function freshToken(): Promise<string | null> {
  const exp = claims()?.exp ?? 0;
  if (exp * 1000 - Date.now() < 30_000 && !(await refresh())) return null;
  return tokens()?.accessToken ?? null;
}

async function call<T>(method: string, path: string, body: unknown, authed: boolean, headers: Record<string, string> = {}): Promise<T> {
  const send: Record<string, string> = { Accept: "application/json", ...headers };
  if (body !== undefined) send["Content-Type"] = "application/json";
  const token = authed ? tokens()?.accessToken : undefined;
  if (token) send.Authorization = `Bearer ${token}`;
  let response: Response;
  try {
    response = await fetch(path, { method, headers: send, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new ApiError(0, "NETWORK", "the server cannot be reached; check the connection and try again");
  }
  if (!response.ok) throw await errorOf(response);
  if (response.status === 204) return undefined as T;
  const type = response.headers.get("content-type") ?? "";
  return (type.includes("json") ? await response.json() : await response.text()) as T;
}

/**
 * One request: the bearer token sent when signed in; a 401 refreshes the token once and
 * retries; any refusal is thrown as an ApiError.
 */
export async function api<T>(method: string, path: string, body?: unknown, headers?: Record<string, string>): Promise<T> {
  try {
    return await call<T>(method, path, body, true, headers);
  } catch (e) {
    if (e instanceof ApiError && e.status === 401 && signedIn() && (await refresh())) {
      return call<T>(method, path, body, true, headers);
    }
    throw e;
  }
}

/** A new idempotency key (an order, a modify, a deposit). */
export function idempotencyKey(prefix: string): string {
  const bytes = crypto.getRandomValues(new Uint8Array(12)); // randomUUID needs a secure origin
  return `${prefix}-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}
