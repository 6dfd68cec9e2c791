"""The package version, on the ground floor so the daemon and its API never import the client to learn it."""

__version__ = "0.1.0"
