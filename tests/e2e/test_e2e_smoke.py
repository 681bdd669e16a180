import asyncio
import json

import pytest
import websockets

from tests.support.daemon import Daemon

pytestmark = pytest.mark.e2e


def test_connect_heartbeat_disconnect(daemon: Daemon) -> None:
    async def flow() -> None:
        async with websockets.connect(daemon.ws_url + "?userId=alice") as ws:
            connect = json.loads(await ws.recv())
            assert connect["type"] == "CONNECT" and connect["userId"] == "alice"
            await ws.send(json.dumps({"type": "HEARTBEAT", "timestamp": "x"}))
            assert json.loads(await ws.recv())["type"] == "HEARTBEAT_ACK"
            await ws.send(json.dumps({"type": "DISCONNECT"}))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000

    asyncio.run(flow())
    status, health = daemon.get_json("/health")
    assert status == 200 and health["status"] == "OK"
