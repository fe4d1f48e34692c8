"""What every CLI command receives: its streams and the loaded network spec."""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from rich.console import Console

from pithnode.protocol.errors import SpecError
from pithnode.protocol.spec import NetworkSpec, spec_from_toml

from .errors import CliError

MAX_SPEC_BYTES = 1 << 20


def default_network_text() -> str:
    """The mainnet network spec shipped with the package (``configs/network.toml``)."""
    return (importlib.resources.files("pithnode.node") / "data" / "network.toml").read_text(
        encoding="utf-8")


def load_spec(path: str | None) -> NetworkSpec:
    if path is None:
        return spec_from_toml(default_network_text(), source="configs/network.toml")
    p = Path(path)
    try:
        if p.stat().st_size > MAX_SPEC_BYTES:
            raise CliError(f"network spec {path} is larger than {MAX_SPEC_BYTES} bytes")
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read network spec {path}: {exc}",
                       hint="pass --network with a readable TOML file") from exc
    try:
        return spec_from_toml(text, source=str(path))
    except SpecError as exc:
        raise CliError(str(exc), hint="fix the network spec file") from exc


@dataclass(slots=True)
class Context:
    stdout: IO[str]
    stderr: IO[str]
    stdin: IO[bytes] | None
    network: str | None
    debug: bool = False

    @property
    def console(self) -> Console:
        return Console(file=self.stdout, highlight=False, soft_wrap=True)

    @property
    def err_console(self) -> Console:
        return Console(file=self.stderr, highlight=False, soft_wrap=True)

    def spec(self) -> NetworkSpec:
        return load_spec(self.network)
