"""The Isthmus REST API: CRUD for the intent model under /apis/isthmus.io/v1, with bearer-token auth."""

from isthmus.api.app import create_app

__all__ = ["create_app"]
