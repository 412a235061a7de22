"""mdsync: the self-hostable backend of a collaborative markdown editor."""

__version__ = "0.1.0"
