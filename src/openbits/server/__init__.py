"""openbits-server: the server half of the BITS upload protocol (the IIS extension's job on Windows).

    from openbits.server import ServerSettings, make_upload_app, BitsAppRunner

    app = make_upload_app(ServerSettings.for_root("/srv/uploads"))
    runner = BitsAppRunner(app)   # aiohttp's default runner rejects the BITS_POST verb
"""

from .app import make_upload_app
from .packets import REPLY_QUERY
from .settings import NotificationType, ServerSettings, VirtualDirectory, load_settings
from .wire import BitsAppRunner

__all__ = [
    "REPLY_QUERY",
    "BitsAppRunner",
    "NotificationType",
    "ServerSettings",
    "VirtualDirectory",
    "load_settings",
    "make_upload_app",
]
