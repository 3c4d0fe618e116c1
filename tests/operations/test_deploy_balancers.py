"""docs/deploy.md's load balancer files, run as written (ports and certificate paths aside):
nginx and HAProxy end TLS in front of daphne and pass the sync websocket through, and HAProxy
takes a draining process out by its /readyz before the process closes its sessions.

nginx and HAProxy come from Debian (`make loadbalancers`, as root); without them these tests
skip with the reason (or fail in CI, where `make test` installs them).
"""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from replication.models import Document
from tests.support.external_services import unavailable
from tests.support.server_processes import DaphneServer, free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "docs" / "deploy"
CLI = ROOT / ".venv" / "bin" / "datagate-replica"


def require_binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if found:
        return found
    unavailable(f"{name} is not installed (make loadbalancers installs it as root)")


@pytest.fixture
def certificate(tmp_path: Path) -> dict[str, Path]:
    """A self-signed certificate for 127.0.0.1, trusted by the clients through SSL_CERT_FILE."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    combined = tmp_path / "combined.pem"
    combined.write_text(cert.read_text() + key.read_text())
    return {"cert": cert, "key": key, "combined": combined}


def wait_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    import socket

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the balancer exited:\n{log.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the balancer did not listen:\n{log.read_text(errors='replace')}")


def run_balancer(command: list[str], port: int, log: Path) -> Iterator[None]:
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_port(port, process, log)
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def https_get(url: str, cert: Path) -> int:
    context = ssl.create_default_context(cafile=str(cert))
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def cli_sync(url: str, token: str, cert: Path, tmp_path: Path, doc_id: str) -> str:
    env = {
        **os.environ,
        "SSL_CERT_FILE": str(cert),
        "DATAGATE_URL": url,
        "DATAGATE_TENANT": "acme",
        "DATAGATE_COLLECTION": "notes",
        "DATAGATE_TOKEN": token,
        "DATAGATE_REPLICA_FILE": str(tmp_path / f"{doc_id}.sqlite3"),
    }
    subprocess.run([str(CLI), "put", doc_id, "via=balancer"], env=env, check=True, timeout=60)
    done = subprocess.run([str(CLI), "sync"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_nginx_ends_tls_and_passes_the_sync_websocket(
    transactional_db: Any, tmp_path: Path, member: Any, issue_token: Any, certificate: Any
) -> None:
    nginx = require_binary("nginx")
    token = issue_token(member("walt", "writer"), "read write")
    backends = [DaphneServer.start(tmp_path=tmp_path, name=f"web{i}") for i in (1, 2)]
    tls_port, http_port = free_port(), free_port()
    site = (DEPLOY / "nginx.conf").read_text()
    site = site.replace("127.0.0.1:8001", f"127.0.0.1:{backends[0].port}")
    site = site.replace("127.0.0.1:8002", f"127.0.0.1:{backends[1].port}")
    site = site.replace("listen 443 ssl", f"listen 127.0.0.1:{tls_port} ssl")
    site = site.replace("listen 80", f"listen 127.0.0.1:{http_port}")
    site = site.replace("/etc/ssl/datagate/fullchain.pem", str(certificate["cert"]))
    site = site.replace("/etc/ssl/datagate/privkey.pem", str(certificate["key"]))
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    (prefix / "datagate.conf").write_text(site)
    (prefix / "nginx.conf").write_text(
        f"daemon off;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log;\n"
        "events {}\n"
        f"http {{\n access_log off;\n client_body_temp_path {prefix}/body;\n"
        f" proxy_temp_path {prefix}/proxy;\n include {prefix}/datagate.conf;\n}}\n"
    )
    try:
        for _ in run_balancer(
            [nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
            tls_port,
            prefix / "out.log",
        ):
            base = f"https://127.0.0.1:{tls_port}"
            assert https_get(f"{base}/readyz", certificate["cert"]) == 200
            out = cli_sync(
                f"wss://127.0.0.1:{tls_port}", token, certificate["cert"], tmp_path, "n1"
            )
            assert out.startswith("pushed 1,")
            assert Document.objects.get(doc_id="n1").body == {"via": "balancer"}
    finally:
        for backend in backends:
            backend.stop()


def test_haproxy_takes_a_draining_process_out_before_it_closes(
    transactional_db: Any, tmp_path: Path, member: Any, issue_token: Any, certificate: Any
) -> None:
    haproxy = require_binary("haproxy")
    token = issue_token(member("walt", "writer"), "read write")
    draining = DaphneServer.start(
        tmp_path=tmp_path, name="web1", extra_env={"DATAGATE_DRAIN_DELAY": "8"}
    )
    staying = DaphneServer.start(tmp_path=tmp_path, name="web2")
    tls_port, http_port = free_port(), free_port()
    config = (DEPLOY / "haproxy.cfg").read_text()
    config = config.replace("maxconn 20000", "maxconn 1000")  # this machine's file limit
    config = config.replace("127.0.0.1:8001", f"127.0.0.1:{draining.port}")
    config = config.replace("127.0.0.1:8002", f"127.0.0.1:{staying.port}")
    config = config.replace("bind :80", f"bind 127.0.0.1:{http_port}")
    config = config.replace(
        "bind :443 ssl crt /etc/ssl/datagate/datagate.pem",
        f"bind 127.0.0.1:{tls_port} ssl crt {certificate['combined']}",
    )
    path = tmp_path / "haproxy.cfg"
    path.write_text(config)
    try:
        for _ in run_balancer([haproxy, "-f", str(path), "-db"], tls_port, tmp_path / "hap.log"):
            url = f"wss://127.0.0.1:{tls_port}"
            cli_sync(url, token, certificate["cert"], tmp_path, "before")
            assert draining.process is not None
            draining.process.send_signal(signal.SIGTERM)
            time.sleep(3.5)  # two failed checks a second apart take it out; it drains for 8 s
            for n in range(4):  # leastconn would pick the idle draining process if it were in
                cli_sync(url, token, certificate["cert"], tmp_path, f"during-{n}")
            assert draining.process.poll() is None  # still draining: it was taken out, not gone
    finally:
        draining.stop()
        staying.stop()
    assert Document.objects.filter(doc_id__startswith="during-").count() == 4
