"""Node configuration: TOML parsed by a pure function into frozen dataclasses.

Unknown sections and keys, and values of the wrong type or range, are errors naming the file,
the section and the key. Paths in the file are relative to the file's own folder.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from pithnode.protocol.errors import InputError
from pithnode.protocol.identifiers import normalise_alias

from .errors import ConfigError

__all__ = [
    "AttestConfig",
    "CacheConfig",
    "GossipConfig",
    "HttpConfig",
    "LogConfig",
    "NodeConfig",
    "NodeSection",
    "P2PConfig",
    "PullConfig",
    "SocketConfig",
    "SyncConfig",
    "config_from_toml",
    "load_config",
]

MAX_CONFIG_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class NodeSection:
    #: where the store, key and socket live; None: --data-dir or the default
    data_dir: Path | None = None
    #: the network spec; None: the shipped mainnet spec (configs/network.toml)
    network: Path | None = None
    #: signer_id of this node's events; empty: its peer id
    name: str = ""


@dataclass(frozen=True, slots=True)
class P2PConfig:
    listen: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",)
    bootstrap: tuple[str, ...] = ()
    max_peers: int = 50
    mdns: bool = False
    #: Pith suffix prefixes this node mirrors; empty: every record
    mirror_prefixes: tuple[str, ...] = ()
    redial_min_s: float = 1.0
    redial_max_s: float = 60.0


@dataclass(frozen=True, slots=True)
class SyncConfig:
    interval_s: float = 30.0
    jitter_s: float = 10.0
    fetch_batch: int = 500
    timeout_s: float = 20.0
    frame_size_limit: int = 60_000


@dataclass(frozen=True, slots=True)
class GossipConfig:
    max_batch_events: int = 200
    max_batch_bytes: int = 256 * 1024
    flush_interval_s: float = 0.05
    #: accepted events per second per signer (token bucket); beyond: dropped and counted
    rate_per_signer: float = 200.0
    heartbeat_s: float = 1.0


@dataclass(frozen=True, slots=True)
class HttpConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8080
    #: base URL advertised in mirror hints and the manifest; empty: http://host:port
    public_url: str = ""


@dataclass(frozen=True, slots=True)
class SocketConfig:
    #: None: <data dir>/node.sock
    path: Path | None = None


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"
    format: str = "human"


@dataclass(frozen=True, slots=True)
class PullConfig:
    #: base or manifest URLs of HTTP mirrors to pull from on a schedule
    sources: tuple[str, ...] = ()
    interval_s: float = 3600.0
    records: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AttestConfig:
    #: sign mirror hints and attestations, audit peers, exchange checkpoints
    enabled: bool = True
    mirror_hint_interval_s: float = 3600.0
    checkpoint_interval_s: float = 300.0
    audit_interval_s: float = 120.0
    audit_objects: int = 8


@dataclass(frozen=True, slots=True)
class CacheConfig:
    #: served states and bundles kept in memory for the socket and the HTTP mirror (LRU by
    #: bytes; 0 turns the cache off)
    max_bytes: int = 128 << 20
    #: identifiers (Pith Numbers, arXiv ids, DOIs) remembered with the record they name
    max_names: int = 65_536


@dataclass(frozen=True, slots=True)
class NodeConfig:
    node: NodeSection = field(default_factory=NodeSection)
    p2p: P2PConfig = field(default_factory=P2PConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    gossip: GossipConfig = field(default_factory=GossipConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    socket: SocketConfig = field(default_factory=SocketConfig)
    log: LogConfig = field(default_factory=LogConfig)
    pull: PullConfig = field(default_factory=PullConfig)
    attest: AttestConfig = field(default_factory=AttestConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    source: str = "<defaults>"


_SECTIONS: Mapping[str, type] = {
    "node": NodeSection, "p2p": P2PConfig, "sync": SyncConfig, "gossip": GossipConfig,
    "http": HttpConfig, "socket": SocketConfig, "log": LogConfig, "pull": PullConfig,
    "attest": AttestConfig, "cache": CacheConfig,
}

T = TypeVar("T")
Check = Callable[[Any], Any]


def _positive(v: Any) -> bool:
    return bool(v > 0)


def _nonneg(v: Any) -> bool:
    return bool(v >= 0)


def _identifiers(v: Any) -> bool:
    try:
        return all(normalise_alias(x) for x in v)
    except InputError:
        return False


def _http_urls(v: Any) -> bool:
    return all(urlsplit(x).scheme in ("http", "https") and bool(urlsplit(x).hostname)
               for x in v)


_RULES: Mapping[tuple[str, str], tuple[str, Check | None]] = {
    ("pull", "records"): ("a list of Pith Numbers, arXiv ids or DOIs", _identifiers),
    ("pull", "sources"): ("a list of http(s) URLs", _http_urls),
    ("p2p", "max_peers"): ("a positive integer", _positive),
    ("p2p", "redial_min_s"): ("a positive number", _positive),
    ("p2p", "redial_max_s"): ("a positive number", _positive),
    ("sync", "interval_s"): ("a positive number", _positive),
    ("sync", "jitter_s"): ("a number >= 0", _nonneg),
    ("sync", "fetch_batch"): ("an integer from 1 to 10000", lambda v: 1 <= v <= 10_000),
    ("sync", "timeout_s"): ("a positive number", _positive),
    ("sync", "frame_size_limit"): ("0 or an integer >= 4096", lambda v: v == 0 or v >= 4096),
    ("gossip", "max_batch_events"): ("an integer from 1 to 5000", lambda v: 1 <= v <= 5000),
    ("gossip", "max_batch_bytes"): ("an integer from 1024 to 1048576",
                                    lambda v: 1024 <= v <= 1 << 20),
    ("gossip", "flush_interval_s"): ("a positive number", _positive),
    ("gossip", "rate_per_signer"): ("a positive number", _positive),
    ("gossip", "heartbeat_s"): ("a positive number", _positive),
    ("http", "port"): ("a port number from 0 to 65535", lambda v: 0 <= v <= 65535),
    ("log", "level"): ("one of debug, info, warning, error",
                       lambda v: v in ("debug", "info", "warning", "error")),
    ("log", "format"): ("human or json", lambda v: v in ("human", "json")),
    ("pull", "interval_s"): ("a positive number", _positive),
    ("attest", "mirror_hint_interval_s"): ("a positive number", _positive),
    ("attest", "checkpoint_interval_s"): ("a positive number", _positive),
    ("attest", "audit_interval_s"): ("a positive number", _positive),
    ("attest", "audit_objects"): ("an integer from 1 to 256", lambda v: 1 <= v <= 256),
    ("cache", "max_bytes"): ("an integer >= 0", _nonneg),
    ("cache", "max_names"): ("an integer >= 0", _nonneg),
}


def _convert(value: Any, default: Any, where: str, base: Path) -> Any:
    """Coerce a TOML value to the type of the field's default."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false")
        return value
    if isinstance(default, int) and not isinstance(default, bool):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer")
        return value
    if isinstance(default, float):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number")
        try:
            return float(value)
        except OverflowError as exc:
            raise ConfigError(f"{where}: number out of range") from exc
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise ConfigError(f"{where}: expected a list of strings")
        return tuple(value)
    # Path | None fields
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a path")
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


def config_from_toml(text: str, *, source: str = "<config>", base: Path | None = None
                     ) -> NodeConfig:
    """Parse node configuration text. ``base`` resolves relative paths (the file's folder)."""
    try:
        doc = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    except RecursionError as exc:
        raise ConfigError(f"{source}: TOML nested too deeply") from exc
    base = base or Path.cwd()
    sections: dict[str, Any] = {}
    for name, table in doc.items():
        if name not in _SECTIONS:
            raise ConfigError(f"{source}: unknown section [{name}]")
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [{name}] must be a table")
        cls = _SECTIONS[name]
        defaults = cls()
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in table.items():
            where = f"{source} [{name}] {key}"
            if key not in known:
                raise ConfigError(f"{source} [{name}]: unknown key {key!r}")
            converted = _convert(value, getattr(defaults, key), where, base)
            rule = _RULES.get((name, key))
            if rule is not None and rule[1] is not None and not rule[1](converted):
                raise ConfigError(f"{where}: must be {rule[0]}")
            values[key] = converted
        sections[name] = cls(**values)
    cfg = NodeConfig(**sections, source=source)
    if cfg.p2p.redial_max_s < cfg.p2p.redial_min_s:
        raise ConfigError(f"{source} [p2p] redial_max_s: must be >= redial_min_s")
    for prefix in cfg.p2p.mirror_prefixes:
        if not prefix or len(prefix) > 26 or not all(c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
                                                      for c in prefix):
            raise ConfigError(f"{source} [p2p] mirror_prefixes: {prefix!r} is not a "
                              "Pith suffix prefix (upper-case base32)")
    return cfg


def load_config(path: Path | None) -> NodeConfig:
    """Read a config file; None gives the defaults."""
    if path is None:
        return NodeConfig()
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    return config_from_toml(text, source=str(path), base=path.resolve().parent)
