"""Run mypy over the three source folders under their installed names.

The folders protocol/, storage/ and node/ install as pithnode.protocol, pithnode.storage and
pithnode.node (setuptools package-dir). mypy cannot follow that mapping, so this script lays
a tree of symlinks, build/mypy/pithnode/{protocol,storage,node}, and checks that package.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREE = ROOT / "build" / "mypy" / "pithnode"


def main() -> int:
    TREE.mkdir(parents=True, exist_ok=True)
    for name in ("protocol", "storage", "node"):
        link = TREE / name
        if not link.is_symlink():
            link.symlink_to(ROOT / name, target_is_directory=True)
    # libp2p depends on trio-typing, whose old trio-stubs would shadow trio's own inline
    # types; a trio entry on MYPYPATH takes precedence over installed stub packages.
    import trio

    shadow = TREE.parent / "trio"
    if not shadow.is_symlink():
        shadow.symlink_to(Path(trio.__file__).parent, target_is_directory=True)
    env = dict(os.environ, MYPYPATH=str(TREE.parent))
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
           "-p", "pithnode"]
    return subprocess.call(cmd, cwd=TREE.parent, env=env)


if __name__ == "__main__":
    sys.exit(main())
