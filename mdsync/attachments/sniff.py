"""The content type of an upload from its first bytes: a small magic-bytes table for the common
binary types, a look at the start of text for markup (HTML, SVG, XML — active content, which is
never served inline), and the file name only where the bytes say little (plain text, zip-based
office formats). A name cannot make binary bytes look like an image, nor hide markup."""

from __future__ import annotations

import mimetypes

SNIFF_BYTES = 1024

_MAGIC: list[tuple[bytes, int, str]] = [  # (magic, offset, type)
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"BM", 0, "image/bmp"),
    (b"\x00\x00\x01\x00", 0, "image/x-icon"),
    (b"II*\x00", 0, "image/tiff"),
    (b"MM\x00*", 0, "image/tiff"),
    (b"%PDF-", 0, "application/pdf"),
    (b"PK\x03\x04", 0, "application/zip"),
    (b"\x1f\x8b", 0, "application/gzip"),
    (b"7z\xbc\xaf\x27\x1c", 0, "application/x-7z-compressed"),
    (b"OggS", 0, "audio/ogg"),
    (b"ID3", 0, "audio/mpeg"),
    (b"fLaC", 0, "audio/flac"),
    (b"\x1aE\xdf\xa3", 0, "video/webm"),
]

# what a browser would run: never inline, never redirected (docs/api.md "Attachments")
ACTIVE_TYPES = frozenset({"text/html", "application/xhtml+xml", "image/svg+xml", "application/xml", "text/xml",
                          "text/javascript", "application/javascript", "application/ecmascript", "text/xsl"})
_MARKUP = {b"<svg": "image/svg+xml", b"<!doctype html": "text/html", b"<html": "text/html",
           b"<head": "text/html", b"<body": "text/html", b"<script": "text/html", b"<iframe": "text/html",
           b"<?xml": "application/xml", b"<!doctype svg": "image/svg+xml"}
_ZIP_FORMATS = {".docx", ".xlsx", ".pptx", ".odt", ".ods", ".odp", ".epub"}
_TEXT_BY_NAME = {".md": "text/markdown", ".markdown": "text/markdown", ".csv": "text/csv", ".json": "application/json",
                 ".txt": "text/plain", ".tsv": "text/tab-separated-values"}


def is_active(content_type: str) -> bool:
    base = content_type.split(";")[0].strip().lower()
    return base in ACTIVE_TYPES or base.endswith("+xml") or "html" in base or "script" in base


def _name_type(name: str) -> str | None:
    return mimetypes.guess_type(name, strict=False)[0]


def _suffix(name: str) -> str:
    return ("." + name.rsplit(".", 1)[1].lower()) if "." in name else ""


def sniff(head: bytes, name: str) -> str:
    for magic, offset, ctype in _MAGIC:
        if head[offset:offset + len(magic)] == magic:
            if ctype == "application/zip" and _suffix(name) in _ZIP_FORMATS:
                return _name_type(name) or ctype
            return ctype
    if head[:4] == b"RIFF" and head[8:12] in (b"WEBP", b"WAVE", b"AVI "):
        return {b"WEBP": "image/webp", b"WAVE": "audio/wav", b"AVI ": "video/x-msvideo"}[head[8:12]]
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"mif1"):
            return "image/heic"
        if brand[:3] == b"avi":
            return "image/avif"
        return "video/quicktime" if brand == b"qt  " else "video/mp4"
    if b"\x00" in head:
        return "application/octet-stream"
    text = head.lstrip(b"\xef\xbb\xbf").lstrip().lower()
    for start, ctype in _MARKUP.items():
        if text.startswith(start):
            if ctype == "application/xml" and b"<svg" in head.lower():
                return "image/svg+xml"
            if ctype == "application/xml" and b"<html" in head.lower():
                return "application/xhtml+xml"
            return ctype
    guessed = _name_type(name) or ""
    if is_active(guessed):  # markup that does not start like markup is still markup to a browser
        return guessed
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the end of the sniffed bytes
            return "application/octet-stream"
    return _TEXT_BY_NAME.get(_suffix(name), "text/plain") + ("; charset=utf-8" if _suffix(name) != ".json" else "")
