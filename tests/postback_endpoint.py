"""A user's postback endpoint for the tests: an HTTPS server on loopback, its certificate
signed by a CA made at test time (the ``cryptography`` package), recording every request
it reads; it can answer slowly or with errors for its first requests."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["Authority", "Request", "Endpoint"]


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class Authority:
    """A certificate authority in ``folder``: ``ca_file`` is its certificate (PEM), what a
    client trusts; ``issue`` makes a server certificate for some host names."""

    def __init__(self, folder: Path, name: str):
        self.folder, self.name = folder, name
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        self.ca_file = folder / f"{name}-ca.pem"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, label: str, hosts: list[str]) -> tuple[Path, Path]:
        """A server certificate for ``hosts`` (names or IP addresses): (cert file, key file)."""
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        cert_file = self.folder / f"{self.name}-{label}.pem"
        key_file = self.folder / f"{self.name}-{label}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(_pem_key(key))
        return cert_file, key_file


@dataclass(frozen=True)
class Request:
    """A request the endpoint read, and the status it answered."""

    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    received: float  # time.time()


class Endpoint:
    """An HTTPS server on a free loopback port with the certificate ``cert``/``key``. Its
    first ``failing`` requests are answered ``status``; its first ``slow`` ones 200 with a
    body that never ends, a byte every 0.2 s, for ``delay`` seconds or until
    ``release()``; every later one is answered 200 at once. A
    connection whose TLS handshake fails (the client refused the certificate) counts in
    ``refused`` and is closed."""

    def __init__(
        self,
        cert: Path,
        key: Path,
        *,
        failing: int = 0,
        status: int = 500,
        slow: int = 0,
        delay: float = 0.0,
    ):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.lock = threading.Lock()
        self.requests: list[Request] = []
        self.refused = 0
        self.failing, self.status, self.slow, self.delay = failing, status, slow, delay
        self.released = threading.Event()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real endpoints

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with endpoint.lock:
                    seen = len(endpoint.requests)
                    status = endpoint.status if seen < endpoint.failing else 200
                    wait = endpoint.delay if seen < endpoint.slow else 0.0
                    endpoint.requests.append(
                        Request(self.path, dict(self.headers), body, status, time.time())
                    )
                if wait:
                    self.send_response(200)
                    self.send_header("Content-Length", "1000000")
                    self.end_headers()
                    deadline = time.monotonic() + wait
                    while not endpoint.released.wait(0.2) and time.monotonic() < deadline:
                        self.wfile.write(b" ")
                        self.wfile.flush()
                    self.close_connection = True
                    return
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def finish_request(self, request, client_address):  # in the request's thread
                try:
                    tls = context.wrap_socket(request, server_side=True)
                except OSError:  # ssl.SSLError among them
                    with endpoint.lock:
                        endpoint.refused += 1
                    return
                try:
                    super().finish_request(tls, client_address)
                finally:
                    tls.close()

            def handle_error(self, request, client_address):
                pass  # a client that gave up on a slow answer: a broken pipe

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, host: str = "127.0.0.1") -> str:
        return f"https://{host}:{self.port}/hooks/orders"

    def seen(self) -> list[Request]:
        with self.lock:
            return list(self.requests)

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()
