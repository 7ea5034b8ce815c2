// The WebSocket (/ws/v1/orders, src/brokercore/services/ws.py): one per tab. It connects
// when signed in, answers PINGs, keeps the market-data subscriptions the screens ask for,
// and reconnects after any drop with ?since=<the last ORDER_UPDATE seq seen>, so the
// gateway replays every order update missed meanwhile (none twice) before the live ones.

import { freshToken, refresh, signedIn } from "./api";
import type { Book, Notification, OrderUpdate, TradeTick } from "./types";

export type LiveState = "offline" | "connecting" | "live" | "reconnecting";

interface Events {
  order: OrderUpdate;
  notification: Notification;
  trade: TradeTick;
  book: Book;
  state: LiveState;
  /** The replay could not cover the gap (no seq seen yet, or truncated): reload from REST. */
  resync: void;
  /** A market-data subscription is active (again): what was read before may be stale. */
  subscribed: { channel: string; symbol: string };
}
type Handler<K extends keyof Events> = (value: Events[K]) => void;

const SEQ_STORE = "brokercore.lastSeq";
const SEEN_LIMIT = 5000;
const MAX_BACKOFF_MS = 10_000;

class Live {
  private socket: WebSocket | null = null;
  private handlers = new Map<keyof Events, Set<(value: never) => void>>();
  private subscriptions = new Map<string, number>(); // "channel:symbol" -> screens holding it
  private seen = new Set<number>();
  private attempts = 0;
  private running = false;
  private retry: ReturnType<typeof setTimeout> | undefined;
  private watchdog: ReturnType<typeof setTimeout> | undefined;
  private heartbeatMs = 30_000;
  private connectedOnce = false;
  state: LiveState = "offline";

  /** The highest ORDER_UPDATE seq this tab has seen (the resume point), or null. */
  get lastSeq(): number | null {
    const raw = sessionStorage.getItem(SEQ_STORE);
    return raw === null ? null : Number(raw);
  }

  private set lastSeq(seq: number | null) {
    if (seq === null) sessionStorage.removeItem(SEQ_STORE);
    else sessionStorage.setItem(SEQ_STORE, String(seq));
  }

  on<K extends keyof Events>(event: K, handler: Handler<K>): () => void {
    let set = this.handlers.get(event);
    if (!set) this.handlers.set(event, (set = new Set()));
    set.add(handler);
    return () => void set.delete(handler);
  }

  private emit<K extends keyof Events>(event: K, value: Events[K]): void {
    for (const handler of this.handlers.get(event) ?? []) (handler as Handler<K>)(value);
  }

  /** Market data of a symbol ("trades" or "book") while the returned function is not called. */
  subscribe(channel: "trades" | "book", symbol: string): () => void {
    const key = `${channel}:${symbol}`;
    const holders = this.subscriptions.get(key) ?? 0;
    this.subscriptions.set(key, holders + 1);
    if (holders === 0) this.send({ op: "subscribe", channel, symbol });
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      const left = (this.subscriptions.get(key) ?? 1) - 1;
      if (left > 0) this.subscriptions.set(key, left);
      else {
        this.subscriptions.delete(key);
        this.send({ op: "unsubscribe", channel, symbol });
      }
    };
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    void this.connect();
  }

  /** Signed out: close, forget the resume point and the subscriptions' socket. */
  stop(): void {
    this.running = false;
    clearTimeout(this.retry);
    clearTimeout(this.watchdog);
    this.socket?.close(1000, "signed out");
    this.socket = null;
    this.lastSeq = null;
    this.seen.clear();
    this.connectedOnce = false;
    this.setState("offline");
  }

  /** Drop the connection as a network failure would (the reconnect and resume follow). */
  drop(): void {
    this.socket?.close(4000, "dropped by the client");
  }

  private setState(state: LiveState): void {
    this.state = state;
    this.emit("state", state);
  }

  private send(frame: object): void {
    if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(frame));
  }

  private async connect(): Promise<void> {
    this.setState(this.connectedOnce ? "reconnecting" : "connecting");
    const token = await freshToken();
    if (!this.running) return;
    if (!token) {
      if (signedIn()) void this.closed(0); // the refresh failed on the way: try again later
      else this.stop();
      return;
    }
    const since = this.lastSeq;
    const url = new URL("/ws/v1/orders", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("token", token);
    if (since !== null) url.searchParams.set("since", String(since));
    const socket = new WebSocket(url);
    this.socket = socket;
    const reconnecting = this.connectedOnce;
    socket.onmessage = (message) => {
      this.alive();
      this.receive(JSON.parse(String(message.data)), reconnecting && since === null);
    };
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      this.socket = null;
      clearTimeout(this.watchdog);
      if (!this.running) return;
      void this.closed(event.code);
    };
  }

  private async closed(code: number): Promise<void> {
    if (code === 4401 && !(await refresh()) && !signedIn()) {
      this.stop(); // the session is over (the refresh token refused)
      return;
    }
    this.setState("reconnecting");
    const delay = Math.min(MAX_BACKOFF_MS, 250 * 2 ** this.attempts) * (0.5 + Math.random() / 2);
    this.attempts += 1;
    this.retry = setTimeout(() => void this.connect(), delay);
  }

  /** Nothing heard for two heartbeats and a bit: the connection is dead, whatever TCP says. */
  private alive(): void {
    clearTimeout(this.watchdog);
    this.watchdog = setTimeout(() => this.socket?.close(4408, "heartbeat lost"), this.heartbeatMs * 2 + 5000);
  }

  private receive(frame: { type: string; [key: string]: unknown }, gap: boolean): void {
    switch (frame.type) {
      case "WELCOME":
        this.heartbeatMs = Number(frame.heartbeat) * 1000;
        this.attempts = 0;
        this.connectedOnce = true;
        for (const key of this.subscriptions.keys()) {
          const [channel, symbol] = key.split(":");
          this.send({ op: "subscribe", channel, symbol });
        }
        this.setState("live");
        if (gap) this.emit("resync", undefined);
        break;
      case "PING":
        this.send({ op: "pong" });
        break;
      case "SUBSCRIBED":
        this.emit("subscribed", { channel: String(frame.channel), symbol: String(frame.symbol) });
        break;
      case "RESUMED":
        if (frame.truncated) this.emit("resync", undefined);
        break;
      case "ORDER_UPDATE":
        this.order(frame as unknown as OrderUpdate);
        break;
      case "NOTIFICATION":
        this.emit("notification", frame as unknown as Notification);
        break;
      case "TRADE":
        this.emit("trade", frame as unknown as TradeTick);
        break;
      case "BOOK":
        this.emit("book", frame as unknown as Book);
        break;
      case "ERROR":
        console.warn("websocket:", frame.code, frame.message);
        break;
    }
  }

  private order(update: OrderUpdate): void {
    if (this.seen.has(update.seq)) return;
    this.seen.add(update.seq);
    if (this.seen.size > SEEN_LIMIT) this.seen.delete(this.seen.values().next().value as number);
    if (update.seq > (this.lastSeq ?? -1)) this.lastSeq = update.seq;
    this.emit("order", update);
  }
}

/** The tab's one connection. */
export const live = new Live();
