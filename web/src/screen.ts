// What a screen is: one module in src/screens/, listed in src/routes.ts.

export type Params = Record<string, string>;

export interface Screen {
  /** The path it answers, with :name parts ("/symbol/:symbol"). */
  path: string;
  /** The document title, and the heading screen readers are moved to. */
  title: string;
  /** Its label in the main navigation; none: not listed there. */
  nav?: string;
  /** Who may open it: anyone, a signed-in user, or an operator (the token's roles). */
  access: "public" | "user" | "operator";
  /** Fill `root`; the function returned (if any) runs when the screen is left. */
  render(root: HTMLElement, params: Params): (() => void) | void;
}
