"""docs/errors.md lists every error code a client can receive: each code string the
source can raise (found by walking its syntax trees, so a new code cannot slip by), the
refusal enums' values, the engine's reasons an order's rejectReason shows, and the edge's
own answers. The test names each code missing from the page's tables."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from brokercore.engine.records import Reason

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "src" / "brokercore"
DOC = ROOT / "docs" / "errors.md"
EDGE = ROOT / "scripts" / "edge" / "nginx.conf.template"

CODE_ARGUMENT = {
    "ApiError": 1,  # ApiError(status, code, message): every HTTP refusal
    "error_response": 1,  # error_response(status, code, message): services/http.py
    "AuthError": 0,  # AuthError(code, message): a refused token (edge/auth.py)
    "Refused": 1,  # Refused(close_code, code, message): a refused WebSocket
    "Error": 0,  # Error(code, message): a WebSocket ERROR frame (realtime/hub.py)
    "path_id": 2,  # path_id(request, name, code, what): an id that names nothing
}
"""The calls that carry a client-visible code, and the position of the code."""
CODE_ENUM = re.compile(r"^(RejectCode|\w*Refusal)$")
"""The enums whose values are API codes (an exception carries one; the service maps it
to a status)."""
_CODE = re.compile(r"^[A-Z][A-Z0-9_]+$")


def _called(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Name):
        return node.func.id
    return node.func.attr if isinstance(node.func, ast.Attribute) else None


def raised_codes() -> dict[str, str]:
    """Every code the source can answer with -> where it is (file:line)."""
    found: dict[str, str] = {}
    for path in sorted(SOURCE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        where = str(path.relative_to(ROOT))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                position = CODE_ARGUMENT.get(_called(node) or "")
                if position is not None and len(node.args) > position:
                    argument = node.args[position]
                    if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                        found.setdefault(argument.value, f"{where}:{node.lineno}")
            elif isinstance(node, ast.ClassDef) and CODE_ENUM.match(node.name):
                for statement in node.body:
                    if isinstance(statement, ast.Assign) and isinstance(
                        statement.value, ast.Constant
                    ):
                        found.setdefault(
                            str(statement.value.value), f"{where}:{statement.lineno} {node.name}"
                        )
    for reason in Reason:
        if reason is not Reason.NONE:
            found.setdefault(reason.name, "brokercore.engine.records.Reason (rejectReason)")
    for code in re.findall(r'"code":"([A-Z_]+)"', EDGE.read_text()):
        found.setdefault(code, str(EDGE.relative_to(ROOT)))
    return found


def documented_codes() -> set[str]:
    """The codes in the first column of docs/errors.md's tables (a cell may list several,
    comma-separated)."""
    codes: set[str] = set()
    for line in DOC.read_text().splitlines():
        if line.startswith("|"):
            first = line.split("|")[1]
            codes.update(c.strip() for c in first.split(",") if _CODE.match(c.strip()))
    return codes


def test_the_walk_finds_codes_of_every_kind():
    found = raised_codes()
    for code in ("INVALID_REQUEST", "TOKEN_EXPIRED", "NOT_IN_PRE_OPEN", "ORDER_NOT_OPEN"):
        assert code in found, code
    for code in ("RESUME_NOT_ALLOWED", "WITHDRAWAL_NOT_PENDING", "SESSION_STATE", "BAD_GATEWAY"):
        assert code in found, code
    assert all(_CODE.match(code) for code in found), sorted(found)


def test_every_code_a_client_can_receive_is_in_docs_errors_md():
    found = raised_codes()
    missing = found.keys() - documented_codes()
    assert not missing, "codes missing from docs/errors.md: " + "; ".join(
        f"{code} ({found[code]})" for code in sorted(missing)
    )
