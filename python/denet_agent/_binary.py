"""Where the `denet-agent` binary is: the one installed with this package."""

from __future__ import annotations

import os
import shutil
import sysconfig
from pathlib import Path

_NAME = "denet-agent"


def binary() -> str:
    """The path of the `denet-agent` binary.

    Looked up in this order: the ``DENET_AGENT_BIN`` environment variable, the
    scripts directory of the environment this package is installed in (where the
    wheel puts it), then ``PATH``. Raises ``FileNotFoundError`` when none has it.
    """
    explicit = os.environ.get("DENET_AGENT_BIN")
    if explicit:
        if os.access(explicit, os.X_OK):
            return explicit
        raise FileNotFoundError(f"DENET_AGENT_BIN={explicit} is not an executable file")
    candidates = [sysconfig.get_path("scripts")]
    user_scheme = f"{os.name}_user"
    if user_scheme in sysconfig.get_scheme_names():
        candidates.append(sysconfig.get_path("scripts", user_scheme))
    for d in candidates:
        if d:
            p = Path(d) / _NAME
            if os.access(p, os.X_OK):
                return str(p)
    found = shutil.which(_NAME)
    if found:
        return found
    raise FileNotFoundError(
        f"{_NAME} binary not found (not next to this Python, not on PATH); "
        "reinstall the denet-agent wheel or set DENET_AGENT_BIN"
    )
