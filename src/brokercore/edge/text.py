"""Which characters a client's string may hold before it reaches the database or a log.

Every string a client sends (a body's fields and keys, a query parameter, a path, a
token's subject) is checked at the edge with ``bad_character``. Refused: NUL (Postgres
text cannot hold it), the other C0 and C1 control characters and DEL (they forge or
break log lines and mean nothing in a symbol, a key or a token), and lone surrogates (no
UTF-8 encoding exists for them). Everything else, right-to-left marks and emoji
included, is ordinary text: an unknown symbol is then refused as unknown.
"""

from __future__ import annotations

import re

__all__ = ["bad_character"]

_REFUSED = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def bad_character(text: str) -> str | None:
    """The first refused character of ``text`` as ``U+XXXX``; None if there is none."""
    found = _REFUSED.search(text)
    return None if found is None else f"U+{ord(found.group()):04X}"
