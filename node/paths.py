"""Where a node keeps its files: the data directory and the query socket inside it.

Resolution order of the data directory (``--data-dir`` is handled by the commands, before
this function): ``$PITHNODE_DATA_DIR``, else ``$XDG_DATA_HOME/pithnode``, else
``~/.local/share/pithnode``. Empty variables count as unset and a relative
``XDG_DATA_HOME`` is ignored, as the XDG Base Directory specification requires.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["APP_NAME", "DATA_DIR_ENV", "SOCKET_NAME", "default_data_dir", "socket_path"]

APP_NAME = "pithnode"
DATA_DIR_ENV = "PITHNODE_DATA_DIR"
#: File name of the local query socket inside the data directory.
SOCKET_NAME = "node.sock"


def default_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The data directory when none is given on the command line (see module docstring)."""
    env = os.environ if environ is None else environ
    explicit = env.get(DATA_DIR_ENV, "")
    if explicit:
        return Path(explicit).expanduser()
    xdg = env.get("XDG_DATA_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / APP_NAME
    home = env.get("HOME", "")
    base = Path(home) if home else Path.home()
    return base / ".local" / "share" / APP_NAME


def socket_path(data_dir: Path) -> Path:
    """The query socket of the node whose data directory is ``data_dir``."""
    return data_dir / SOCKET_NAME
