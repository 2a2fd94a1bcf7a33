"""Changing intent: admission against the ledger, allocation, and one atomic commit per request."""

from isthmus.intent.apply import Applied, apply, change, delete
from isthmus.intent.errors import AlreadyExists, Forbidden, IntentError, InUse, Invalid, NotFound, Stale

__all__ = [
    "AlreadyExists",
    "Applied",
    "Forbidden",
    "InUse",
    "IntentError",
    "Invalid",
    "NotFound",
    "Stale",
    "apply",
    "change",
    "delete",
]
