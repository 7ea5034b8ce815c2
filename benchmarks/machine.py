"""What machine a benchmark ran on, for the header every benchmark prints."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(shared_with: str) -> str:
    """The header line of a service benchmark: CPU, cores, load, what else runs here."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"machine : {cpu_model()}, {os.cpu_count()} logical CPUs, load avg {load} "
        f"(shared with {shared_with})"
    )
