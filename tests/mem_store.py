"""An in-memory SyncStore for fast tests of sync and gossip (a fake of our own interface).

It verifies like the real store (``protocol.ingest.accept``) and merges with the real merge.
"""

from __future__ import annotations

from collections.abc import Sequence

from pithnode.protocol.events import Event
from pithnode.protocol.ingest import accept, sync_item
from pithnode.protocol.merge import merge
from pithnode.protocol.spec import NetworkSpec
from pithnode.protocol.wire import prefixes_match


class MemStore:
    def __init__(self, spec: NetworkSpec, events: Sequence[Event] = ()) -> None:
        self.spec = spec
        self.events: dict[bytes, Event] = {}
        self.sources: dict[str, str] = {}
        for ev in events:
            self.events[sync_item(ev)[1]] = ev

    async def sync_items(self, prefixes: Sequence[str]) -> list[tuple[int, bytes]]:
        return sorted(sync_item(e) for e in self.events.values()
                      if prefixes_match(e.subject.rsplit(":", 1)[-1], prefixes))

    async def raw_events(self, ids: Sequence[bytes]) -> list[bytes]:
        return [self.events[i].canonical_bytes() for i in ids if i in self.events]

    async def ingest_events(self, events: Sequence[Event], *, source: str
                            ) -> tuple[int, int, int]:
        new = dup = rej = 0
        for ev in events:
            key = sync_item(ev)[1]
            if accept(ev, self.spec) is not None:
                rej += 1
            elif key in self.events:
                dup += 1
            else:
                self.events[key] = ev
                self.sources[ev.event_id] = source
                new += 1
        return new, dup, rej

    def ids(self) -> set[str]:
        return {e.event_id for e in self.events.values()}

    def states(self) -> dict[str, str]:
        subjects = sorted({e.subject for e in self.events.values()})
        return {s: merge(s, [e for e in self.events.values() if e.subject == s], self.spec,
                         verify_signatures=False).state_sha256 for s in subjects}
