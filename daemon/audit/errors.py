"""The audit log's exceptions; every message is one line fit for a user."""

from __future__ import annotations


class AuditError(Exception):
    """Base class; the message is one line fit for a user."""


class AuditCorruptError(AuditError):
    """The log is damaged in a way that must not be repaired automatically."""


class AuditLockedError(AuditError):
    """Another process holds the log open for writing."""


class AuditWriteError(AuditError):
    """A record could not be made durable; the log refuses further appends."""
