"""Accounts and sign-in: passwords, tokens, sessions, throttling, and the /auth and /me routes."""
