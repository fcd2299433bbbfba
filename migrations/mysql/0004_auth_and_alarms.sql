-- etcd's auth store (see migrations/sqlite/0005_auth_and_alarms.sql).
CREATE TABLE koine_auth (
    id INT NOT NULL PRIMARY KEY,
    revision BIGINT NOT NULL,
    enabled BIGINT NOT NULL,
    state LONGBLOB NOT NULL
) ENGINE = InnoDB;
INSERT INTO koine_auth (id, revision, enabled, state) VALUES (1, 1, 0, x'');

CREATE TABLE koine_auth_token (
    token VARBINARY(64) NOT NULL PRIMARY KEY,
    username VARBINARY(3000) NOT NULL,
    expires_at BIGINT NOT NULL
) ENGINE = InnoDB;

CREATE TABLE koine_alarm (
    member_id BIGINT NOT NULL,
    alarm BIGINT NOT NULL,
    PRIMARY KEY (member_id, alarm)
) ENGINE = InnoDB;
