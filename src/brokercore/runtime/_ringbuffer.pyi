"""Type stubs for the compiled ring buffer (_ringbuffer.pyx says how it works)."""

import enum
from collections.abc import Iterable
from typing import Any, Self

import numpy as np
import numpy.typing as npt
from typing_extensions import disjoint_base

class WaitStrategy(enum.IntEnum):
    """How a consumer waits for records (and a producer for room)."""

    BUSY_SPIN = 0
    YIELD = 1
    BLOCKING = 2

@disjoint_base
class RingBuffer:
    """A ring of ``capacity`` numpy records of ``dtype`` between threads."""

    # __new__, not __init__: the .pyx takes its arguments in __cinit__, which runs from tp_new
    def __new__(
        cls,
        capacity: int,
        dtype: npt.DTypeLike,
        consumers: Iterable[int] = ...,
        multi_producer: bool = False,
    ) -> Self: ...
    @property
    def dtype(self) -> np.dtype[Any]: ...
    def publish(self, records: npt.ArrayLike) -> int: ...
    def try_publish(self, records: npt.ArrayLike) -> bool: ...
    def poll(
        self, consumer: int = 0, max_records: int = 4096, timeout: float | None = None
    ) -> npt.NDArray[Any]: ...
    def close(self) -> None: ...
    @property
    def capacity(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    @property
    def cursor(self) -> int: ...
    def consumer_sequence(self, consumer: int = 0) -> int: ...
    @property
    def claimed(self) -> int: ...
    @property
    def fill(self) -> int: ...
