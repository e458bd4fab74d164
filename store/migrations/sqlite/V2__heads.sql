-- The head of each channel survives the pruning of its newest rows: a seq is never
-- reused, even when retention has removed every stored message of a channel.
ALTER TABLE channel_epochs ADD COLUMN pruned_head INTEGER NOT NULL DEFAULT 0;
