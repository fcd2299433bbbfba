-- etcd's auth store. One row (id = 1): whether auth is enabled, its
-- revision (etcd's auth_revision, bumped by every change), and the users
-- and roles as one protobuf blob (Koine's AuthSnapshot: authpb.User and
-- authpb.Role messages, bcrypt password hashes). Changes go through the
-- writer, which holds the meta row, so instances on one database apply
-- them one at a time and all enforce the same state.
CREATE TABLE koine_auth (
    id INTEGER PRIMARY KEY,
    revision INTEGER NOT NULL,
    enabled INTEGER NOT NULL,
    state BLOB NOT NULL
);
INSERT INTO koine_auth (id, revision, enabled, state) VALUES (1, 1, 0, x'');

-- Simple auth tokens, shared by every instance on the database: a token
-- handed out by one is accepted by the others. expires_at is milliseconds
-- since the epoch on the database clock, pushed forward as it is used.
CREATE TABLE koine_auth_token (
    token BLOB PRIMARY KEY,
    username BLOB NOT NULL,
    expires_at INTEGER NOT NULL
);

-- etcd's alarms (NOSPACE, CORRUPT), one row per raised alarm, shared by
-- every instance: while NOSPACE is raised no instance takes writes that
-- add data.
CREATE TABLE koine_alarm (
    member_id INTEGER NOT NULL,
    alarm INTEGER NOT NULL,
    PRIMARY KEY (member_id, alarm)
);
