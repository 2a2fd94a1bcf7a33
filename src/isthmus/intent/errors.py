"""Errors of intent changes; each names the object and the problem, and means nothing was changed."""


class IntentError(ValueError):
    status = 400
    reason = "Invalid"


class Invalid(IntentError):
    status = 422


class NotFound(IntentError):
    status = 404
    reason = "NotFound"


class AlreadyExists(IntentError):
    status = 409
    reason = "AlreadyExists"


class InUse(IntentError):
    status = 409
    reason = "InUse"


class Stale(IntentError):
    status = 409
    reason = "Conflict"


class Forbidden(IntentError):
    status = 403
    reason = "Forbidden"
