-- 0021_brackets_by_status: GET /api/v1/brackets?status= pages one user's brackets of one
-- status, newest first (brokercore.entry.brackets.BracketBook.list). With only
-- brackets_account_idx, a status that few or none of them have walked every bracket of
-- the account to fill a page (85 ms at 100,000 brackets); this index reads just the
-- status's range, newest first.

CREATE INDEX brackets_account_status_idx ON brackets (account_id, status, bracket_id DESC);
