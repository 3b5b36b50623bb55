"""What machine a figure was measured on (for the benchmark scripts' headers)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def describe() -> str:
    """CPU model, cores and Python version, one line."""
    return f"CPU: {cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}"
