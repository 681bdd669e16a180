from twisted.application.service import ServiceMaker

presence = ServiceMaker("presence", "presence.tap", "A WebSocket presence daemon.", "presence")
