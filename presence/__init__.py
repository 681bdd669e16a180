"""presence: a WebSocket presence daemon on Twisted and Autobahn."""

__version__ = "0.1.0"
