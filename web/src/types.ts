// The API's bodies and the WebSocket's frames as the app uses them (money and prices are
// decimal strings of rupees, quantities shares, times ISO 8601 UTC).

export type Side = "BUY" | "SELL";
export type OrderType = "LIMIT" | "MARKET" | "STOP" | "STOP_LIMIT";
export type Validity = "DAY" | "GTC" | "IOC" | "FOK";

export interface Order {
  orderId: number;
  symbol: string;
  side: Side;
  type: OrderType;
  timeInForce: string;
  price: string | null;
  quantity: number;
  filledQty: number;
  avgPrice: string | null;
  status: string;
  rejectReason: string | null;
  createdAt: string;
  updatedAt: string;
  triggerPrice: string | null;
  disclosedQuantity: number;
}

export interface OrderUpdate {
  type: "ORDER_UPDATE";
  seq: number;
  orderId: number;
  symbol: string;
  side: Side;
  orderType: OrderType;
  status: string;
  quantity: number;
  filledQty: number;
  avgPrice: string | null;
  price: string | null;
  rejectReason: string | null;
  updatedAt: string;
  triggerPrice: string | null;
  disclosedQuantity: number;
}

export interface Notification {
  type: "NOTIFICATION";
  id: string;
  kind: string;
  title: string;
  body: string;
  symbol: string;
  createdAt: string;
  orderId?: number | null;
}

export interface TradeTick {
  type: "TRADE";
  tradeId: string;
  symbol: string;
  price: string;
  quantity: number;
  time: string;
}

export interface Level {
  price: string;
  quantity: number;
}

export interface Indicative {
  price: string;
  volume: number;
  imbalance: number;
  surplusSide: string | null;
}

export interface Book {
  type?: "BOOK";
  symbol: string;
  bids: Level[];
  asks: Level[];
  bestBid: Level | null;
  bestAsk: Level | null;
  lastPrice: string | null;
  phase: string;
  halted: boolean;
  indicative: Indicative | null;
}

export interface Candle {
  time: string;
  open: string;
  high: string;
  low: string;
  close: string;
  volume: number;
}

export interface Position {
  symbol: string;
  quantity: number;
  avgPrice: string;
  currentPrice: string | null;
  pnl: string | null;
  realisedPnl: string;
  dayPnl: string | null;
}

export interface Portfolio {
  cash: string;
  blockedCash: string;
  positions: Position[];
  realisedPnl: string;
  dayPnl: string;
}

export interface Instrument {
  symbol: string;
  tickSize: string;
  lotSize: number;
  band: { low: string; high: string };
  maxOrderQuantity: number;
  enabled: boolean;
  phase: string;
}

export interface WatchSymbol {
  symbol: string;
  lastPrice: string | null;
  previousClose: string | null;
  change: string | null;
  changePercent: string | null;
}

export interface Watchlist {
  id: number;
  name: string;
  symbols: WatchSymbol[];
}
