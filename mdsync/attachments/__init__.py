"""Attachments (docs/api.md "Attachments"): files uploaded into a workspace, stored by a backend.

storage.py   the storage protocol (put, open, delete, url, exists) and `open_storage(settings)`
local.py     backend: files under data_dir/files/, named by id, written atomically
s3.py        backend: an S3-compatible bucket through aiobotocore
sniff.py     the content type from the first bytes (and the name where the bytes say little)
signing.py   signed `?exp=&sig=` URLs (HMAC with the server secret)
service.py   uploads, reads, deletes, purge hooks, the share-link filter (SQL inside)
routes.py    the HTTP routes
"""
