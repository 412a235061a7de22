"""`mdsync sync DIR`: a folder of .md files in two-way sync with a workspace (docs/sync.md).

- `engine.py`  one pass: binding, change feed, local moves/deletes, pull, push, creates
- `watch.py`   --watch: passes when files went quiet or the change feed reports a change; saves and
               remote edits of tracked documents synced alone (`sync_files`)
- `merge.py`   each document's Yjs replica; local edits as a minimal text diff (a block diff for
               `tiptap` documents), CRLF/BOM kept local
- `creates.py` new files as documents, each create recorded before it is sent (adopted after a crash)
- `folders.py` directories as folders: created, renamed or moved (one PATCH), deleted
- `attachments.py` files in DIR/_attachments/ both ways
- `layout.py`  where documents and folders go (named as the export names them)
- `state.py`   DIR/.mdsync/state.db: binding, cursor, replicas, last synced texts, pending updates
               and creates
- `http.py`    the HTTP calls with the token (urllib3: kept-alive connections, bounded retries, a
               busy server's Retry-After waited out, capped)
- `report.py`  one line (or JSON object) per action; the initial pull's bar on a terminal
"""
