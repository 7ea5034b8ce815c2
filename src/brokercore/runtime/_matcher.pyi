"""Type stubs for the compiled matcher loop (_matcher.pyx says how it works)."""

from typing import Final

from typing_extensions import disjoint_base

from brokercore.engine._engine import OrderBook
from brokercore.runtime._ringbuffer import RingBuffer

DRAINED: Final = 0
PAUSED: Final = 1

@disjoint_base
class Matcher:
    """Owns the C state of a shard's matching loop over ``books`` (symbol id -> OrderBook)."""

    def __init__(
        self,
        command_ring: RingBuffer,
        event_ring: RingBuffer,
        books: dict[int, OrderBook],
        max_batch: int = 1024,
        idle_wait: float = 0.05,
        mark_ring: RingBuffer | None = None,
    ) -> None: ...
    @property
    def command_ring(self) -> RingBuffer: ...
    @property
    def event_ring(self) -> RingBuffer: ...
    @property
    def mark_ring(self) -> RingBuffer | None: ...
    @property
    def books(self) -> dict[int, OrderBook]: ...
    def run(self) -> int: ...
    def request_pause(self, pause: bool = True) -> None: ...
    @property
    def next_sequence(self) -> int: ...
    @property
    def commands_applied(self) -> int: ...
    @property
    def events_published(self) -> int: ...
    @property
    def batches(self) -> int: ...
