"""What the stack's supervisord says of each process (stack.sh's read_states), one a line:
NAME STATE PID DESCRIPTION, PID 0 when there is none.

    python scripts/stack/states.py .stack/supervisor.sock

Unlike `supervisorctl status`, it gives the pid of a process still STARTING (within its
startsecs), which stack.sh needs to tell a run from the next. Exit 1 if supervisord does
not answer.
"""

from __future__ import annotations

import sys
import xmlrpc.client

from supervisor.xmlrpc import SupervisorTransport


def main(argv: list[str]) -> int:
    transport = SupervisorTransport(None, None, f"unix://{argv[0]}")
    # The host is a placeholder: the transport connects to the unix socket.
    supervisor = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor
    try:
        processes = supervisor.getAllProcessInfo()
    except OSError as e:
        print(f"supervisord on {argv[0]}: {e}", file=sys.stderr)
        return 1
    for p in processes:
        print(p["name"], p["statename"], p["pid"], p["description"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
