"""Snakemake logger plugin ``denet``: tells denet-agent which job each shell is.

``denet-agent run -- snakemake --logger denet ...`` (or ``logger: denet`` in a
profile). Snakemake runs a job's ``shell:`` command in a shell of its own process,
with nothing that names the job; this plugin writes each job Snakemake starts (job
id, rule, wildcards, shell command) to the file denet-agent names in
``DENET_AGENT_SNAKEMAKE_JOBS``, and the agent matches the shells it traces against
it. Without that variable (Snakemake not run under denet-agent) it does nothing.

The job is written by a handler called in the thread that logs it, before Snakemake
hands the job to its executor: the plugin handlers Snakemake itself calls run later,
from a queue, and a short job could be over before its line was written.
"""

import json
import logging
import os
import threading
from dataclasses import dataclass
from typing import Optional

from snakemake_interface_logger_plugins.base import LogHandlerBase
from snakemake_interface_logger_plugins.common import LogEvent
from snakemake_interface_logger_plugins.settings import LogHandlerSettingsBase

JOBS_ENV = "DENET_AGENT_SNAKEMAKE_JOBS"
# The logger Snakemake logs its events to.
SNAKEMAKE_LOGGER = "snakemake.logging"


@dataclass
class LogHandlerSettings(LogHandlerSettingsBase):
    pass


class _JobListWriter(logging.Handler):
    """Appends one JSON line per job, synchronously."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self._lock_file = threading.Lock()
        # Append only; the agent made the file for this run.
        self._file = open(path, "a", encoding="utf-8")

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "event", None) != LogEvent.JOB_INFO:
            return
        wildcards = getattr(record, "wildcards", None) or {}
        line = json.dumps(
            {
                "jobid": getattr(record, "jobid", None),
                "rule": getattr(record, "rule_name", None),
                "wildcards": {str(k): str(v) for k, v in dict(wildcards).items()},
                "shellcmd": getattr(record, "shellcmd", None),
                "threads": getattr(record, "threads", None),
            }
        )
        with self._lock_file:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        with self._lock_file:
            self._file.close()
        super().close()


class LogHandler(LogHandlerBase):
    def __post_init__(self) -> None:
        self._writer: Optional[_JobListWriter] = None
        path = os.environ.get(JOBS_ENV)
        if path:
            self._writer = _JobListWriter(path)
            logging.getLogger(SNAKEMAKE_LOGGER).addHandler(self._writer)

    def emit(self, record: logging.LogRecord) -> None:
        # Everything is written by the synchronous handler above.
        pass

    def close(self) -> None:
        if self._writer is not None:
            logging.getLogger(SNAKEMAKE_LOGGER).removeHandler(self._writer)
            self._writer.close()
            self._writer = None
        super().close()

    @property
    def writes_to_stream(self) -> bool:
        return False

    @property
    def writes_to_file(self) -> bool:
        return False

    @property
    def has_filter(self) -> bool:
        # Every job, whatever --quiet says.
        return True

    @property
    def has_formatter(self) -> bool:
        return True

    @property
    def needs_rulegraph(self) -> bool:
        return False
