"""The extender over mutual TLS (what kube-scheduler's ``tlsConfig`` can do), on a real `dtlab serve`.

Certificates come from the openssl CLI: a CA, a server certificate for 127.0.0.1, a client
certificate it signed, and a rogue client certificate from another CA. Only the signed client
gets an answer; the plain port no longer serves the extender; bad input is still a 400.
"""
import http.client
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from tests.heavy import require
from tests.netutil import free_port, stop_group, wait_for

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "examples" / "cluster-hetero.yaml"
EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def issue(d: Path, name: str, ca: str, ext: str) -> None:
    openssl("req", *EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    (d / f"{name}.ext").write_text(ext + "\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d)


def make_pki(d: Path) -> Path:
    """CA + server cert for 127.0.0.1 + client cert ``scheduler`` it signed + ``rogue`` from another CA."""
    for ca in ("ca", "rogue-ca"):
        openssl("req", "-x509", *EC, "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-days", "2",
                "-subj", f"/CN={ca}", cwd=d)
    issue(d, "server", "ca", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth")
    issue(d, "scheduler", "ca", "extendedKeyUsage=clientAuth")
    issue(d, "rogue", "rogue-ca", "extendedKeyUsage=clientAuth")
    return d


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    require(shutil.which("openssl") is not None, "the openssl CLI is needed to make test certificates")
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def server(pki, tmp_path_factory):
    port, tls_port = free_port(), free_port()
    log = tmp_path_factory.mktemp("mtls") / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != "DTLAB_EXTENDER_SECRET"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dtlab.cli", "serve", "--cluster", str(CLUSTER), "--port", str(port), "--extender",
             "--extender-tls-cert", str(pki / "server.crt"), "--extender-tls-key", str(pki / "server.key"),
             "--extender-client-ca", str(pki / "ca.crt"), "--extender-port", str(tls_port)],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)

    def up():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200

    try:
        wait_for(up, 60, "dtlab serve /healthz", procs=[("dtlab serve", proc)])
        yield {"port": port, "tls_port": tls_port}
    finally:
        stop_group(proc)
    assert proc.returncode == 0 or proc.returncode == -signal.SIGTERM, log.read_text()[-2000:]


def tls_call(pki: Path, port: int, body: bytes, client: str | None):
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if client:
        ctx.load_cert_chain(str(pki / f"{client}.crt"), str(pki / f"{client}.key"))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        conn.request("POST", "/extender/filter", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


ARGS = json.dumps({"Pod": {"metadata": {"name": "p"}}, "NodeNames": ["cloud-0", "edge-a-0"]}).encode()


def test_signed_client_certificate_is_served(pki, server):
    status, data = tls_call(pki, server["tls_port"], ARGS, "scheduler")
    assert status == 200 and set(data["NodeNames"]) | set(data["FailedNodes"]) == {"cloud-0", "edge-a-0"}
    status, data = tls_call(pki, server["tls_port"], b'{"Pod": {}, "NodeNames": "x"}', "scheduler")
    assert status == 400 and "NodeNames" in data["Error"]


@pytest.mark.parametrize("client", [None, "rogue"])
def test_no_or_foreign_client_certificate_never_reaches_the_app(pki, server, client):
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
        tls_call(pki, server["tls_port"], ARGS, client)
    status, _ = tls_call(pki, server["tls_port"], ARGS, "scheduler")  # still serving
    assert status == 200


def test_plain_port_does_not_serve_the_extender(server):
    conn = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=5)
    conn.request("POST", "/extender/filter", body=ARGS, headers={"Content-Type": "application/json"})
    assert conn.getresponse().status == 404


def test_body_over_the_limit_is_413_json_over_tls(pki, server):
    """The mutual-TLS listener (stdlib server, not the main front) refuses a body announced over the limit
    from its Content-Length alone, with the extender's JSON error."""
    import socket
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "scheduler.crt"), str(pki / "scheduler.key"))
    with socket.create_connection(("127.0.0.1", server["tls_port"]), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        sock.sendall(b"POST /extender/filter HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1200000\r\n\r\n")
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        data = json.loads(resp.read())
    assert resp.status == 413 and data["Error"], (resp.status, data)
    status, _ = tls_call(pki, server["tls_port"], ARGS, "scheduler")  # still serving
    assert status == 200
