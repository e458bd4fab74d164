-- Daily quota charges: which message (log, seq) each user was charged for on a UTC day,
-- written in batches (at most a second behind), read back at start so that a restart
-- does not give users their day's quota again.
CREATE TABLE quota_charges (
    day     INTEGER NOT NULL,  -- UTC days since the Unix epoch
    user_id TEXT    NOT NULL,
    log     INTEGER NOT NULL,  -- tier * 2 + delayed view
    seq     INTEGER NOT NULL,
    PRIMARY KEY (day, user_id, log, seq)
) WITHOUT ROWID;
