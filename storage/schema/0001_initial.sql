-- Schema version 1 of the pithnode store.
--
-- Applied in one transaction by pithnode.storage.migrate, which then sets
-- PRAGMA user_version = 1. Never edit a released upgrade file: add 0002_*.sql instead.
--
-- Objects hold exact bytes keyed by their SHA-256. Every other table is an index or a
-- materialised view that `pithnode fsck --repair` rebuilds from the objects, except the
-- provenance columns events.source and events.received_at, which only the store knows.
-- Ids that are SHA-256 digests are stored as 32-byte BLOBs, names as small INTEGER keys.

PRAGMA application_id = 1346982984;  -- "PITH"

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- Exact bytes through a codec (storage/codec.py): 0 raw, 1 raw deflate, 2 a native event
-- as CBOR fields. sha256 and size are those of the exact, decoded bytes.
CREATE TABLE objects (
    id     INTEGER PRIMARY KEY,
    sha256 BLOB    NOT NULL UNIQUE CHECK (length(sha256) = 32),
    codec  INTEGER NOT NULL,
    size   INTEGER NOT NULL CHECK (size >= 0),
    data   BLOB    NOT NULL
);

-- Records (papers), by full Pith Number.
CREATE TABLE records (
    id   INTEGER PRIMARY KEY,
    pith TEXT    NOT NULL UNIQUE
);

CREATE TABLE event_types (
    id   INTEGER PRIMARY KEY,
    name TEXT    NOT NULL UNIQUE
);

-- Signers by key fingerprint (16 raw bytes).
CREATE TABLE signers (
    id          INTEGER PRIMARY KEY,
    fingerprint BLOB    NOT NULL UNIQUE
);

-- Where events came from: a peer id, a file name, a URL.
CREATE TABLE sources (
    id   INTEGER PRIMARY KEY,
    name TEXT    NOT NULL UNIQUE
);

-- One row per stored (native, signed) event. id is the arrival order and also the id of
-- the event's object (its canonical bytes).
CREATE TABLE events (
    id          INTEGER PRIMARY KEY REFERENCES objects(id),
    eid         BLOB    NOT NULL UNIQUE CHECK (length(eid) = 32),
    record      INTEGER NOT NULL REFERENCES records(id),
    type        INTEGER NOT NULL REFERENCES event_types(id),
    signer      INTEGER NOT NULL REFERENCES signers(id),
    created_s   INTEGER NOT NULL,  -- whole seconds of created_at: the sync timestamp
    source      INTEGER NOT NULL REFERENCES sources(id),
    received_at REAL    NOT NULL   -- first received, seconds since the epoch
);
CREATE INDEX events_record ON events(record);
CREATE INDEX events_type ON events(type, created_s);
CREATE INDEX events_signer ON events(signer, created_s);
CREATE INDEX events_sync ON events(created_s, eid);

-- Registry events (unsigned, Pith's own) carried by stored registry_import events.
CREATE TABLE carried (
    import INTEGER NOT NULL REFERENCES events(id),
    eid    BLOB    NOT NULL CHECK (length(eid) = 32),
    PRIMARY KEY (import, eid)
) WITHOUT ROWID;
CREATE INDEX carried_eid ON carried(eid);

-- The materialised state document of every record (served bytes through a codec).
CREATE TABLE states (
    record             INTEGER PRIMARY KEY REFERENCES records(id),
    state_sha256       BLOB    NOT NULL CHECK (length(state_sha256) = 32),
    fingerprint        BLOB    NOT NULL CHECK (length(fingerprint) = 32),
    stored_events      INTEGER NOT NULL,
    event_count        INTEGER NOT NULL,
    valid_count        INTEGER NOT NULL,
    invalid_count      INTEGER NOT NULL,
    equivocation_count INTEGER NOT NULL,
    codec              INTEGER NOT NULL,
    size               INTEGER NOT NULL,   -- length of the served bytes
    data_sha256        BLOB    NOT NULL CHECK (length(data_sha256) = 32),  -- of the served bytes
    data               BLOB    NOT NULL
);

-- Events the merge found invalid, with the reason (from each record's state).
CREATE TABLE invalid_events (
    record     INTEGER NOT NULL REFERENCES records(id),
    eid        BLOB    NOT NULL,
    event_type TEXT    NOT NULL,
    reason     TEXT    NOT NULL,
    PRIMARY KEY (record, eid)
) WITHOUT ROWID;
CREATE INDEX invalid_eid ON invalid_events(eid);

-- Lookup names of records. origin 0: the Pith Number's own forms (pith = the bare suffix,
-- pith_short_8/12/16); origin 1: the state's source_aliases (arxiv, arxiv_version, doi, ...).
CREATE TABLE aliases (
    kind       TEXT    NOT NULL,
    value      TEXT    NOT NULL,
    record     INTEGER NOT NULL REFERENCES records(id),
    created_at TEXT    NOT NULL,
    origin     INTEGER NOT NULL,
    PRIMARY KEY (kind, value, record)
) WITHOUT ROWID;
CREATE INDEX aliases_record ON aliases(record);
