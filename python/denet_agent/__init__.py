"""denet-agent from Python: run a command traced exactly by denet-agent, read traces
as dicts or data frames, and drive the job service.

    from denet_agent import execute_with_monitoring
    exit_code, monitor = execute_with_monitoring(["samtools", "sort", "in.bam"])
    print(monitor.get_summary()["peak_memory_mb"])

See docs/python.md.
"""

from ._binary import binary
from ._run import execute_with_monitoring
from .monitor import Monitor, Tables, load, records

try:
    from importlib.metadata import PackageNotFoundError, version

    try:
        __version__ = version("denet-agent")
    except PackageNotFoundError:  # imported from a source tree
        __version__ = "0.0.0+source"
except ImportError:  # pragma: no cover
    __version__ = "0.0.0+source"

# denet's name for the monitor class.
ProcessMonitor = Monitor

__all__ = [
    "Monitor",
    "ProcessMonitor",
    "Tables",
    "binary",
    "execute_with_monitoring",
    "load",
    "records",
]
