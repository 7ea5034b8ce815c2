// Every screen of the app, in the order of the main navigation. A new screen is one
// module in src/screens/ exporting a Screen (src/screen.ts), imported and listed here.

import type { Screen } from "./screen";
import { login } from "./screens/login";
import { orders } from "./screens/orders";
import { positions } from "./screens/positions";
import { security } from "./screens/security";
import { signup } from "./screens/signup";
import { symbol } from "./screens/symbol";
import { watchlist } from "./screens/watchlist";

export const routes: Screen[] = [
  watchlist,
  symbol,
  orders,
  positions,
  security,
  login,
  signup,
];
