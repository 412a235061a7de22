"""Export and import of a workspace as a zip of markdown (docs/api.md "Export and import").

- `archive.py`  the zip layout both directions share: file names, YAML front matter, entry paths
  that are safe to accept, attachment link rewriting.
- `export.py`   writes a workspace into a zip as it reads it (never whole in memory), for the
  HTTP route (streamed to the response through a thread) and `mdsync export`.
- `sources.py`  what an import reads: a zip, or (the CLI) a folder of `.md` files.
- `importer.py` validates all of an archive first, then creates its folders and documents in one
  transaction.
- `routes.py`   the two routes.
"""
