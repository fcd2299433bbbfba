-- etcd's auth store (see migrations/sqlite/0005_auth_and_alarms.sql).
CREATE TABLE koine_auth (
    id INT PRIMARY KEY,
    revision BIGINT NOT NULL,
    enabled BIGINT NOT NULL,
    state BYTEA NOT NULL
);
INSERT INTO koine_auth (id, revision, enabled, state) VALUES (1, 1, 0, ''::bytea);

CREATE TABLE koine_auth_token (
    token BYTEA PRIMARY KEY,
    username BYTEA NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE TABLE koine_alarm (
    member_id BIGINT NOT NULL,
    alarm BIGINT NOT NULL,
    PRIMARY KEY (member_id, alarm)
);
