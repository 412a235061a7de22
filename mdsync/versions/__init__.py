"""Version history (docs/api.md "Versions", docs/architecture.md "Versions").

policy.py (which automatic versions thinning keeps: a pure function) · textdiff.py (the unified
diff of two markdowns) · store.py (SQL)
· service.py (`app[VERSIONS]`: record, list, read, diff, restore, prune; `record_import` for the
import feature) · scheduler.py (automatic versions from the rooms' update stream, the periodic
prune) · routes.py (HTTP).
"""
