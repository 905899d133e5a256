"""proxy/relay.py frees a closed connection at once, by reference counting, TLS included.

A closed endpoint used to stay in reference cycles (transport <-> protocol, peer <-> peer, the
exception's traceback) until a full GC pass, holding uvloop's and OpenSSL's buffers (about 600 KB
per TLS connection after a 600 KB upload): the sidecar grew by tens of MB per burst of connections.
"""

from __future__ import annotations

import asyncio
import gc
import ssl
import weakref

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proxy.relay import Endpoint, splice


def _server_context(tmp_path) -> ssl.SSLContext:
    import datetime

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(hours=1)).sign(key, hashes.SHA256()))
    pem = tmp_path / "cert.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
                    + cert.public_bytes(serialization.Encoding.PEM))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pem)
    return ctx


async def _scenario(tmp_path) -> None:
    loop = asyncio.get_running_loop()
    accepted: list[Endpoint] = []
    arrived = asyncio.Event()

    def tls_side() -> Endpoint:
        ep = Endpoint()
        accepted.append(ep)
        arrived.set()
        return ep

    srv = await loop.create_server(tls_side, "127.0.0.1", 0, ssl=_server_context(tmp_path))
    sink_got = bytearray()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            sink_got.extend(data)
        writer.close()

    backend = await asyncio.start_server(sink, "127.0.0.1", 0)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    gc.collect()
    gc.disable()
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", srv.sockets[0].getsockname()[1], ssl=client_ctx)
        await arrived.wait()
        a = accepted.pop()
        _, b = await loop.create_connection(Endpoint, "127.0.0.1", backend.sockets[0].getsockname()[1])
        done = splice(a, b)
        body = bytes(range(256)) * 2400  # 600 KB
        writer.write(body)
        await writer.drain()
        writer.close()
        await asyncio.wait_for(done, 10)
        assert bytes(sink_got) == body  # the control: the relay did relay
        refs = [weakref.ref(a), weakref.ref(b)]
        del a, b, done
        for _ in range(20):  # let uvloop/asyncio run their connection_lost callbacks
            await asyncio.sleep(0.01)
            if all(r() is None for r in refs):
                break
        assert [r() is None for r in refs] == [True, True], "a closed endpoint waits for the cycle collector"
    finally:
        gc.enable()
        srv.close()
        backend.close()


@pytest.mark.parametrize("loop_kind", ["uvloop", "asyncio"])
def test_closed_tls_tunnel_is_freed_without_the_cycle_collector(tmp_path, loop_kind):
    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        factory = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_scenario(tmp_path))
