-- AI proxy: provider keys a workspace pays with (encrypted), its limits, and the ledger of calls.
--
-- ai_keys.ciphertext is nonce || AES-256-GCM(api_key) under a key derived from the server secret
-- (mdsync/ai/keys.py); only the last four characters are kept readable, for display.
-- ai_calls holds one row per proxied call: `reserved` tokens while it runs (0 once settled), then
-- the provider's counts (or an estimate, `estimated` = 1). ai_spend keeps running totals, reserved
-- and spent together, per workspace and month (user_id '') and per user and UTC day, so a budget
-- check reads one row; both tables change only in the writer's transactions (reserve, settle).

CREATE TABLE ai_keys (
    workspace_id TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    provider     TEXT NOT NULL,
    ciphertext   BLOB NOT NULL,
    last4        TEXT NOT NULL,
    base_url     TEXT,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (workspace_id, provider)
) STRICT;

CREATE TABLE ai_limits (
    workspace_id             TEXT PRIMARY KEY REFERENCES workspaces(id) ON DELETE CASCADE,
    tokens_per_month         INTEGER,
    user_requests_per_minute INTEGER,
    user_tokens_per_day      INTEGER,
    models                   TEXT,     -- JSON list of model ids, NULL: all
    updated_at               TEXT NOT NULL
) STRICT;

CREATE TABLE ai_calls (
    id            INTEGER PRIMARY KEY,
    workspace_id  TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    user_id       TEXT NOT NULL,
    provider      TEXT NOT NULL,
    model         TEXT NOT NULL,
    started       REAL NOT NULL,        -- unix seconds (the per-minute window)
    day           TEXT NOT NULL,        -- YYYY-MM-DD, UTC
    reserved      INTEGER NOT NULL,
    status        INTEGER,              -- the upstream's HTTP status (0: never answered)
    input_tokens  INTEGER,
    output_tokens INTEGER,
    estimated     INTEGER,
    settled_at    TEXT
) STRICT;
CREATE INDEX ai_calls_user ON ai_calls(workspace_id, user_id, started);
CREATE INDEX ai_calls_day ON ai_calls(workspace_id, day);

CREATE TABLE ai_spend (
    workspace_id TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    period       TEXT NOT NULL,         -- YYYY-MM (workspace total) or YYYY-MM-DD (one user)
    user_id      TEXT NOT NULL,         -- '' for the workspace total
    tokens       INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, period, user_id)
) STRICT, WITHOUT ROWID;
