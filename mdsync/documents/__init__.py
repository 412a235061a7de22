"""Folders, documents, grants, share links, the tree, the trash, and document content."""
