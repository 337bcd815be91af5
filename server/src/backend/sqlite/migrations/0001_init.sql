-- Directory schema, version 1. Applied once, inside the migration transaction, by
-- `SqliteDirectory::open`; `PRAGMA user_version` records that it ran.
--
-- Ids use AUTOINCREMENT so a deleted row's id is never handed out again (UserId's contract).
-- Timestamps are milliseconds since the Unix epoch. Booleans are 0/1 integers.

CREATE TABLE users (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    username       TEXT    NOT NULL UNIQUE,
    password_hash  TEXT    NOT NULL,
    display_name   TEXT    NOT NULL,
    status_message TEXT    NOT NULL DEFAULT '',
    avatar_url     TEXT    NOT NULL DEFAULT '',
    created_at_ms  INTEGER NOT NULL
) STRICT;

-- One row per user who changed a setting; a missing row means the defaults (all on).
CREATE TABLE settings (
    user_id               INTEGER PRIMARY KEY REFERENCES users (id),
    notifications_enabled INTEGER NOT NULL CHECK (notifications_enabled IN (0, 1)),
    presence_visible      INTEGER NOT NULL CHECK (presence_visible IN (0, 1))
) STRICT;

CREATE TABLE devices (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id       INTEGER NOT NULL REFERENCES users (id),
    name          TEXT    NOT NULL,
    revoked       INTEGER NOT NULL DEFAULT 0 CHECK (revoked IN (0, 1)),
    created_at_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX devices_by_user ON devices (user_id);

-- Every refresh token a device was ever given, by SHA-256 hash. Rotated-out tokens stay
-- (`used = 1`) so that presenting one again is recognised as reuse.
CREATE TABLE refresh_tokens (
    hash          BLOB    PRIMARY KEY,
    device_id     INTEGER NOT NULL REFERENCES devices (id),
    expires_at_ms INTEGER NOT NULL,
    used          INTEGER NOT NULL DEFAULT 0 CHECK (used IN (0, 1))
) STRICT, WITHOUT ROWID;
CREATE INDEX refresh_tokens_by_device ON refresh_tokens (device_id);

-- A pending request from `from_id` to `to_id`. At most one per pair: a request in the other
-- direction turns into a friendship instead.
CREATE TABLE friend_requests (
    from_id       INTEGER NOT NULL REFERENCES users (id),
    to_id         INTEGER NOT NULL REFERENCES users (id),
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (from_id, to_id),
    CHECK (from_id <> to_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX friend_requests_by_target ON friend_requests (to_id, from_id);

-- A friendship, stored once per pair with the lower id first.
CREATE TABLE friendships (
    lo       INTEGER NOT NULL REFERENCES users (id),
    hi       INTEGER NOT NULL REFERENCES users (id),
    since_ms INTEGER NOT NULL,
    PRIMARY KEY (lo, hi),
    CHECK (lo < hi)
) STRICT, WITHOUT ROWID;
CREATE INDEX friendships_by_hi ON friendships (hi, lo);

-- `chat_groups`, not `groups`: GROUPS is an SQL keyword (window frames).
CREATE TABLE chat_groups (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT    NOT NULL,
    owner_id      INTEGER NOT NULL REFERENCES users (id),
    created_at_ms INTEGER NOT NULL
) STRICT;

-- `join_seq` orders members by joining: the owner first at creation, and the smallest
-- remaining `join_seq` is the longest-standing member (who inherits ownership).
CREATE TABLE group_members (
    join_seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id     INTEGER NOT NULL REFERENCES chat_groups (id),
    user_id      INTEGER NOT NULL REFERENCES users (id),
    joined_at_ms INTEGER NOT NULL,
    UNIQUE (group_id, user_id)
) STRICT;
CREATE INDEX group_members_by_user ON group_members (user_id, group_id);
