"""postgres.sh refuses clearly to start a server on a port another one holds (a stale
read replica of another checkout left running by a test run, say): it names the
holder's pid and data directory instead of failing in the log, and it takes no new base
backup over the replica's copy."""

from __future__ import annotations

import os
import socket
import subprocess

from private_servers import REPO, PrivateReplica


def replica_start(replica: PrivateReplica, port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / "scripts/postgres/postgres.sh"), "replica-start"],
        env=os.environ | replica.env | {"BROKERCORE_PG_REPLICA_PORT": str(port)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_replica_port_held_by_another_server_or_process_names_it(private_postgres):
    replica = private_postgres.replica()
    try:
        # Held by a PostgreSQL server that is not this replica: the primary.
        done = replica_start(replica, private_postgres.port)
        assert done.returncode == 1, done
        assert (
            f"127.0.0.1:{private_postgres.port} is held by PostgreSQL pid" in done.stderr
            and f"data directory {private_postgres.state / 'data'}" in done.stderr
            and "set BROKERCORE_PG_REPLICA_PORT to another port" in done.stderr
        ), done.stderr
        assert not (replica.state / "data").exists()  # no base backup was taken

        # Held by another process: this one.
        with socket.socket() as holder:
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            holder.bind(("127.0.0.1", replica.port))
            holder.listen()
            done = replica_start(replica, replica.port)
        assert done.returncode == 1, done
        assert f"127.0.0.1:{replica.port} is held by pid {os.getpid()}" in done.stderr, done
    finally:
        replica.remove()
