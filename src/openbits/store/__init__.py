"""Durable job store: every acknowledged change is on disk before the API answers."""

from .base import Store
from .sqlite import SqliteStore

__all__ = ["Store", "SqliteStore"]
