"""Workspaces, members, invitations and the one permission check (access.py)."""
