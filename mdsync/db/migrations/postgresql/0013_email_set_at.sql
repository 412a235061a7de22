-- When a user's current email was set (registration or a change through PATCH /me). An invitation
-- bound to an email is accepted only by an account that had that email when the invitation was
-- created (or that registers with it and the invitation): an address taken later, which nobody
-- verified, never accepts it (mdsync/workspaces/invitations.py). NULL: since the account's
-- creation (rows from before this column).
-- (PostgreSQL: the same change as sqlite/0013_email_set_at.sql.)
ALTER TABLE users ADD COLUMN email_set_at TEXT;
