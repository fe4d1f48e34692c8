"""A ``pithnode`` entry point for tests only: a node that cheats in one chosen way.

    python -P tests/cheat_node.py MODE [pithnode arguments ...]

``MODE`` is one of:

* ``cached-digest``: as a holder, answers each object with the digest it computed the first
  time that object was challenged (re-signed for the new challenge), as a node that kept
  digests instead of the bytes would;
* ``replay``: sends its first (honest) answer again to every later challenge;
* ``byteless``: answers with digests of made-up bytes, as a node that attested objects it
  does not hold would;
* ``withhold``: stores the events submitted over its query socket (they enter its states and
  its checkpoints) but never gossips them and never serves them to a sync peer.

Production code reads no switch for any of this: this module subclasses the daemon's
:class:`~pithnode.node.attest.Attestor` or :class:`~pithnode.node.daemon.Node`, puts the
subclass in place of the original in ``pithnode.node.daemon`` and hands the remaining
arguments to the ordinary command line (so ``run`` builds the cheating node). The multi-node
tests start it through ``Cluster.add(..., command=...)`` (tests/cluster.py). ``-P`` keeps the
tests folder off ``sys.path``: its module names must not shadow installed packages.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pithnode.node import cli, daemon
from pithnode.node.api import SubmitOutcome
from pithnode.node.attest import Attestor
from pithnode.node.daemon import Node
from pithnode.protocol.audit import Answer, Challenge, nonce_digest
from pithnode.protocol.events import event_from_json
from pithnode.protocol.keys import SigningKey


def resigned(key: SigningKey, challenge: Challenge, digests: Sequence[bytes | None]) -> Answer:
    """A validly signed answer to ``challenge`` carrying whatever digests the cheat chose."""
    unsigned = Answer(challenge_id=challenge.challenge_id,
                      challenge_sha256=hashlib.sha256(challenge.canonical_bytes()).digest(),
                      holder=key.fingerprint, digests=tuple(digests), signature=bytes(64))
    return dataclasses.replace(unsigned, signature=key.sign_digest(unsigned.signing_digest()))


class CachedDigestHolder(Attestor):
    """Keeps each object's first digest and answers it again, whatever the nonce."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cached: dict[bytes, bytes | None] = {}

    async def answer(self, challenge: Challenge) -> Answer:
        fresh = [o for o in challenge.object_ids if o not in self.cached]
        if fresh:
            honest = await super().answer(dataclasses.replace(challenge,
                                                              object_ids=tuple(fresh)))
            self.cached.update(zip(fresh, honest.digests, strict=True))
        return resigned(self.key, challenge, [self.cached[o] for o in challenge.object_ids])


class ReplayingHolder(Attestor):
    """Answers its first challenge honestly and sends that answer to every later one."""

    first: Answer | None = None

    async def answer(self, challenge: Challenge) -> Answer:
        if self.first is None:
            self.first = await super().answer(challenge)
        return self.first


class BytelessHolder(Attestor):
    """Answers for bytes it does not read: digests of made-up data."""

    async def answer(self, challenge: Challenge) -> Answer:
        return resigned(self.key, challenge, [nonce_digest(challenge.nonce, b"made up")
                                              for _ in challenge.object_ids])


class WithholdingNode(Node):
    """Stores what is submitted to it, but neither gossips it nor lets a sync peer have it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.withheld: set[bytes] = set()

    async def submit(self, events: list[Any]) -> list[SubmitOutcome]:
        parsed = [event_from_json(obj) for obj in events]
        self.withheld.update(bytes.fromhex(e.event_id.removeprefix("sha256:")) for e in parsed)
        return await self.ingest(parsed, source="socket")

    async def sync_items(self, prefixes: Sequence[str]) -> list[tuple[int, bytes]]:
        return [i for i in await super().sync_items(prefixes) if i[1] not in self.withheld]

    async def raw_events(self, ids: Sequence[bytes]) -> list[bytes]:
        return await super().raw_events([i for i in ids if i not in self.withheld])


def _attestor(cls: type[Attestor]) -> Callable[[], None]:
    def install() -> None:
        daemon.Attestor = cls  # type: ignore[attr-defined,misc]

    return install


def _node(cls: type[Node]) -> Callable[[], None]:
    def install() -> None:
        daemon.Node = cls  # type: ignore[misc]

    return install


MODES: dict[str, Callable[[], None]] = {
    "cached-digest": _attestor(CachedDigestHolder),
    "replay": _attestor(ReplayingHolder),
    "byteless": _attestor(BytelessHolder),
    "withhold": _node(WithholdingNode),
}


def main(argv: Sequence[str]) -> int:
    if not argv or argv[0] not in MODES:
        sys.stderr.write(f"usage: cheat_node.py {{{','.join(MODES)}}} PITHNODE_ARGS...\n")
        return 2
    MODES[argv[0]]()
    sys.stderr.write(f"cheat_node: a node that cheats ({argv[0]})\n")
    return cli.main(list(argv[1:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
