-- Message store schema, version 1. Applied once, inside the migration transaction, by
-- `PostgresMessageStore::connect`; `schema_version` (component 'message store') records
-- that it ran.
--
-- `conv` is `ConversationId::to_key()`: a tag byte then big-endian ids (17 bytes), so byte
-- order is id order, as in the embedded store. Seqs and user ids are BIGINT (u64 bits).

-- A conversation's last seq (absent: 0). Its row lock serializes the appenders of one
-- conversation across every server; a rolled-back append gives its increment back.
CREATE TABLE conversation_heads (
    conv     BYTEA  PRIMARY KEY,
    last_seq BIGINT NOT NULL CHECK (last_seq > 0)
);

-- The log: the wire `Message`, prost-encoded once at append (`record`), served as stored.
-- The other columns are what lookups need.
CREATE TABLE messages (
    conv          BYTEA  NOT NULL,
    seq           BIGINT NOT NULL,
    client_msg_id TEXT COLLATE "C" NOT NULL,
    record        BYTEA  NOT NULL,
    PRIMARY KEY (conv, seq),
    UNIQUE (conv, client_msg_id)
);

-- A user's read position in a conversation (absent: 0).
CREATE TABLE read_positions (
    user_id  BIGINT NOT NULL,
    conv     BYTEA  NOT NULL,
    read_seq BIGINT NOT NULL,
    PRIMARY KEY (user_id, conv)
);

-- Both members of every direct conversation with a message.
CREATE TABLE direct_conversations (
    user_id BIGINT NOT NULL,
    conv    BYTEA  NOT NULL,
    PRIMARY KEY (user_id, conv)
);
