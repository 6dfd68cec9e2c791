"""openbits: the Background Intelligent Transfer Service for Linux."""

__version__ = "0.1.0"
