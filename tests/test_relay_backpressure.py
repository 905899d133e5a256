"""proxy/relay.py on real sockets: a tunnel never buffers more than its high-water mark when the far
side stops reading, and delivers every byte once it reads again."""

from __future__ import annotations

import asyncio
import hashlib

from proxy.relay import WRITE_HIGH, Endpoint, splice

TOTAL = 48 * 1024 * 1024


async def test_tunnel_backpressure_bounds_memory_and_loses_nothing():
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[Endpoint] = loop.create_future()

    def relay_side() -> Endpoint:
        ep = Endpoint()
        if not accepted.done():
            accepted.set_result(ep)
        return ep

    relay_srv = await loop.create_server(relay_side, "127.0.0.1", 0)
    got = hashlib.sha256()
    n_got = 0
    far_reader: asyncio.Future[asyncio.StreamReader] = loop.create_future()

    async def far(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        far_reader.set_result(reader)
        await asyncio.sleep(3600)

    far_srv = await asyncio.start_server(far, "127.0.0.1", 0, limit=64 * 1024)
    _, client_w = await asyncio.open_connection("127.0.0.1", relay_srv.sockets[0].getsockname()[1])
    a = await accepted
    _, b = await loop.create_connection(Endpoint, "127.0.0.1", far_srv.sockets[0].getsockname()[1])
    done = splice(a, b)

    block = bytes(range(256)) * 4096  # 1 MiB
    sent = hashlib.sha256()

    async def produce() -> None:
        for _ in range(TOTAL // len(block)):
            client_w.write(block)
            sent.update(block)
            await client_w.drain()
        client_w.close()

    producer = asyncio.create_task(produce())
    reader = await far_reader
    # The far side reads nothing for a while: the relay must stop reading from the client.
    for _ in range(200):
        await asyncio.sleep(0.01)
        if a._reading_paused:
            break
    assert a._reading_paused, "back-pressure never reached the source"
    assert b.transport.get_write_buffer_size() <= WRITE_HIGH + len(block) * 2
    assert not producer.done(), "the client is held back, not buffered into the relay's memory"

    while n_got < TOTAL:
        chunk = await reader.read(1 << 20)
        assert chunk
        got.update(chunk)
        n_got += len(chunk)
    await producer
    assert n_got == TOTAL and got.digest() == sent.digest()
    b.close()
    await asyncio.wait_for(done, 10)
    relay_srv.close()
    far_srv.close()
