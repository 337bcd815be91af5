-- Directory schema, version 1: the SQLite directory's schema in PostgreSQL types. Applied
-- once, inside the migration transaction, by `PostgresDirectory::connect`;
-- `schema_version` (component 'directory') records that it ran.
--
-- Ids are BIGSERIAL: a sequence never hands out an id twice, even after a rollback (UserId's
-- contract). Timestamps are milliseconds since the Unix epoch.

-- COLLATE "C": usernames are unique and compared byte for byte, as stored.
CREATE TABLE users (
    id             BIGSERIAL PRIMARY KEY,
    username       TEXT COLLATE "C" NOT NULL UNIQUE,
    password_hash  TEXT   NOT NULL,
    display_name   TEXT   NOT NULL,
    status_message TEXT   NOT NULL DEFAULT '',
    avatar_url     TEXT   NOT NULL DEFAULT '',
    created_at_ms  BIGINT NOT NULL
);

-- One row per user who changed a setting; a missing row means the defaults (all on).
CREATE TABLE settings (
    user_id               BIGINT  PRIMARY KEY REFERENCES users (id),
    notifications_enabled BOOLEAN NOT NULL,
    presence_visible      BOOLEAN NOT NULL
);

CREATE TABLE devices (
    id            BIGSERIAL PRIMARY KEY,
    user_id       BIGINT  NOT NULL REFERENCES users (id),
    name          TEXT    NOT NULL,
    revoked       BOOLEAN NOT NULL DEFAULT FALSE,
    created_at_ms BIGINT  NOT NULL
);
CREATE INDEX devices_by_user ON devices (user_id);

-- Every refresh token a device was ever given, by SHA-256 hash. Rotated-out tokens stay
-- (`used`) so that presenting one again is recognised as reuse.
CREATE TABLE refresh_tokens (
    hash          BYTEA   PRIMARY KEY,
    device_id     BIGINT  NOT NULL REFERENCES devices (id),
    expires_at_ms BIGINT  NOT NULL,
    used          BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX refresh_tokens_by_device ON refresh_tokens (device_id);

-- A pending request from `from_id` to `to_id`. At most one per pair: a request in the other
-- direction turns into a friendship instead.
CREATE TABLE friend_requests (
    from_id       BIGINT NOT NULL REFERENCES users (id),
    to_id         BIGINT NOT NULL REFERENCES users (id),
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (from_id, to_id),
    CHECK (from_id <> to_id)
);
CREATE INDEX friend_requests_by_target ON friend_requests (to_id, from_id);

-- A friendship, stored once per pair with the lower id first.
CREATE TABLE friendships (
    lo       BIGINT NOT NULL REFERENCES users (id),
    hi       BIGINT NOT NULL REFERENCES users (id),
    since_ms BIGINT NOT NULL,
    PRIMARY KEY (lo, hi),
    CHECK (lo < hi)
);
CREATE INDEX friendships_by_hi ON friendships (hi, lo);

-- `chat_groups`, not `groups`: GROUPS is an SQL keyword (window frames).
CREATE TABLE chat_groups (
    id            BIGSERIAL PRIMARY KEY,
    name          TEXT   NOT NULL,
    owner_id      BIGINT NOT NULL REFERENCES users (id),
    created_at_ms BIGINT NOT NULL
);

-- `join_seq` orders a group's members by joining: the owner first at creation, and the
-- smallest remaining `join_seq` is the longest-standing member (who inherits ownership). It
-- is assigned as (the group's largest join_seq) + 1, 2, ... while the group row is locked.
CREATE TABLE group_members (
    group_id     BIGINT NOT NULL REFERENCES chat_groups (id),
    user_id      BIGINT NOT NULL REFERENCES users (id),
    join_seq     BIGINT NOT NULL,
    joined_at_ms BIGINT NOT NULL,
    PRIMARY KEY (group_id, user_id),
    UNIQUE (group_id, join_seq)
);
CREATE INDEX group_members_by_user ON group_members (user_id, group_id);
