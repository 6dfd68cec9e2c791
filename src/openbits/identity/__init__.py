"""Who a caller is, and the file broker that does every local file operation as that user."""

from .broker import FileBroker
from ..model.identity import Identity
from .localfiles import FileStat, LocalFiles
from ..peer import PeerCred, peer_credentials

__all__ = ["FileBroker", "FileStat", "Identity", "LocalFiles", "PeerCred", "peer_credentials"]
