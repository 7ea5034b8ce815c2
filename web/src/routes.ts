// Every screen of the app, in the order of the main navigation. A new screen is one
// module in src/screens/ exporting a Screen (src/screen.ts), imported and listed here.

import type { Screen } from "./screen";
import { brackets } from "./screens/brackets";
import { funds } from "./screens/funds";
import { gtt } from "./screens/gtt";
import { inbox } from "./screens/inbox";
import { login } from "./screens/login";
import { operator } from "./screens/operator";
import { orders } from "./screens/orders";
import { positions } from "./screens/positions";
import { security } from "./screens/security";
import { signup } from "./screens/signup";
import { statement } from "./screens/statement";
import { symbol } from "./screens/symbol";
import { watchlist } from "./screens/watchlist";

export const routes: Screen[] = [
  watchlist,
  symbol,
  orders,
  positions,
  funds,
  statement,
  inbox,
  gtt,
  brackets,
  operator,
  security,
  login,
  signup,
];
