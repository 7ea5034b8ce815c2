"""Which input offsets a prefix of the commands covers: the link between the consumer
thread (Kafka messages in) and the publisher thread (events and offsets out).

The consumer numbers the commands it submits 0, 1, 2, ... (the shard's matcher counts
the same way) and records, per chunk of messages, the offset of each command's message
and the messages it could not decode. Once the events of the first G commands are
published, ``advance(G)`` says up to which offset the input is done (the offset to
commit) and hands over the dead letters that lie before it, so that both go into the
same transaction as those events.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from brokercore.kafka.messages import DeadLetter

__all__ = ["InputJournal"]


@dataclass
class _Chunk:
    first: int  # number of the chunk's first command
    offsets: np.ndarray  # offset of the message of each command (int64)
    end_offset: int  # the offset after the chunk's last message
    dead: deque[DeadLetter] = field(default_factory=deque)  # in offset order


class InputJournal:
    """Thread-safe: one consumer thread appends, one publisher thread advances."""

    def __init__(self, first_command: int = 0):
        self._chunks: deque[_Chunk] = deque()
        self._next_command = first_command
        self._lock = threading.Lock()

    def append(self, offsets: np.ndarray, end_offset: int, dead: Sequence[DeadLetter] = ()) -> int:
        """Record the next chunk: the offsets of its commands (submitted next, in this
        order) and its undecodable messages; returns the number of its first command."""
        with self._lock:
            chunk = _Chunk(
                self._next_command, np.asarray(offsets, np.int64), end_offset, deque(dead)
            )
            self._chunks.append(chunk)
            self._next_command += len(chunk.offsets)
            return chunk.first

    def advance(self, commands: int) -> tuple[int | None, list[DeadLetter]]:
        """The first ``commands`` commands are done: the input offset done up to (None
        if nothing was recorded) and the dead letters before it (each handed out once).

        Every message before the first command not done is done, so dead letters at
        the tail of the input are not held back by the absence of a later command."""
        done_offset: int | None = None
        dead: list[DeadLetter] = []
        with self._lock:
            while self._chunks:
                chunk = self._chunks[0]
                covered = commands - chunk.first
                if covered >= len(chunk.offsets):
                    dead.extend(chunk.dead)
                    done_offset = chunk.end_offset
                    self._chunks.popleft()
                    continue
                done_offset = int(chunk.offsets[covered])
                while chunk.dead and chunk.dead[0].offset < done_offset:
                    dead.append(chunk.dead.popleft())
                chunk.offsets = chunk.offsets[covered:]
                chunk.first = commands
                break
        return done_offset, dead
