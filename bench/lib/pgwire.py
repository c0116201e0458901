"""A minimal PostgreSQL v3 client for the benchmarks: startup,
SCRAM-SHA-256 / md5 / cleartext authentication, simple queries.

No dependencies beyond the standard library. The protocol logic (messages,
the SCRAM exchange) is separate from the I/O, so the same code serves the
blocking probes of bench/run and the 10,000 asyncio connections of
bench/idle_clients.

Passwords are only ever handed to the SCRAM/md5 computations; nothing here
prints or logs them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import socket
import struct
import time

PROTOCOL_V3 = 196608

AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12


class PgError(Exception):
    """An ErrorResponse from the server, or a protocol problem."""

    def __init__(self, message: str, sqlstate: str = ""):
        super().__init__(f"{sqlstate + ': ' if sqlstate else ''}{message}")
        self.sqlstate = sqlstate


# ---------------------------------------------------------------- encoding


def startup_message(user: str, database: str, **params: str) -> bytes:
    body = struct.pack("!i", PROTOCOL_V3)
    for key, value in (("user", user), ("database", database), *params.items()):
        body += key.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


def message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def query_message(sql: str) -> bytes:
    return message(b"Q", sql.encode() + b"\0")


TERMINATE = message(b"X", b"")


def parse_error(body: bytes) -> PgError:
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return PgError(fields.get("M", "error"), fields.get("C", ""))


class MessageReader:
    """Splits a byte stream into (kind, body) messages."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> None:
        self.buf += data

    def next(self):
        if len(self.buf) < 5:
            return None
        (length,) = struct.unpack_from("!i", self.buf, 1)
        if length < 4 or length > 1 << 24:
            raise PgError(f"bad message length {length}")
        if len(self.buf) < 1 + length:
            return None
        kind = bytes(self.buf[0:1])
        body = bytes(self.buf[5 : 1 + length])
        del self.buf[: 1 + length]
        return kind, body


# ---------------------------------------------------------------- SCRAM

# SaltedPassword depends only on (password, salt, iterations); thousands of
# connections of one user would otherwise redo the same 4096 PBKDF2 rounds.
# This only saves client CPU: the server-side work is unchanged.
_SALTED_CACHE: dict = {}


def _salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    key = (hashlib.sha256(password.encode()).digest(), salt, iterations)
    cached = _SALTED_CACHE.get(key)
    if cached is None:
        cached = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
        _SALTED_CACHE[key] = cached
    return cached


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


class ScramClient:
    """SCRAM-SHA-256 without channel binding, as libpq does it (RFC 5802/7677)."""

    MECHANISM = "SCRAM-SHA-256"

    def __init__(self, password: str):
        self.password = password
        self.nonce = base64.b64encode(os.urandom(18)).decode()
        self.first_bare = f"n=,r={self.nonce}"
        self.server_signature = b""

    def initial_response(self) -> bytes:
        data = ("n,," + self.first_bare).encode()
        return message(
            b"p", self.MECHANISM.encode() + b"\0" + struct.pack("!i", len(data)) + data
        )

    def final_response(self, server_first: bytes) -> bytes:
        text = server_first.decode()
        attrs = dict(item.split("=", 1) for item in text.split(","))
        nonce, salt, iterations = attrs["r"], base64.b64decode(attrs["s"]), int(attrs["i"])
        if not nonce.startswith(self.nonce):
            raise PgError("SCRAM: server nonce does not extend the client nonce")
        salted = _salted_password(self.password, salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={nonce}"
        auth_message = f"{self.first_bare},{text},{without_proof}".encode()
        signature = _hmac(stored_key, auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        server_key = _hmac(salted, b"Server Key")
        self.server_signature = _hmac(server_key, auth_message)
        final = f"{without_proof},p={base64.b64encode(proof).decode()}".encode()
        return message(b"p", final)

    def check_final(self, server_final: bytes) -> None:
        attrs = dict(item.split("=", 1) for item in server_final.decode().split(","))
        if "e" in attrs:
            raise PgError(f"SCRAM: server error {attrs['e']}")
        if base64.b64decode(attrs.get("v", "")) != self.server_signature:
            raise PgError("SCRAM: wrong server signature")


class Handshake:
    """The startup/authentication state machine, I/O-free.

    feed(kind, body) returns bytes to send (possibly empty). Flags:
    `authenticated` once AuthenticationOk arrived, `ready` at the first
    ReadyForQuery ("welcomed": the proxy had a server connection for us).
    """

    def __init__(self, user: str, password: str):
        self.user = user
        self.password = password
        self.scram: ScramClient | None = None
        self.authenticated = False
        self.ready = False
        self.params: dict = {}
        self.backend_pid = None

    def feed(self, kind: bytes, body: bytes) -> bytes:
        if kind == b"E":
            raise parse_error(body)
        if kind == b"R":
            (code,) = struct.unpack_from("!i", body)
            if code == AUTH_OK:
                self.authenticated = True
                return b""
            if code == AUTH_CLEARTEXT:
                return message(b"p", self.password.encode() + b"\0")
            if code == AUTH_MD5:
                salt = body[4:8]
                inner = hashlib.md5((self.password + self.user).encode()).hexdigest()
                outer = hashlib.md5(inner.encode() + salt).hexdigest()
                return message(b"p", ("md5" + outer).encode() + b"\0")
            if code == AUTH_SASL:
                mechanisms = [m.decode() for m in body[4:].split(b"\0") if m]
                if ScramClient.MECHANISM not in mechanisms:
                    raise PgError(f"no supported SASL mechanism in {mechanisms}")
                self.scram = ScramClient(self.password)
                return self.scram.initial_response()
            if code == AUTH_SASL_CONTINUE and self.scram:
                return self.scram.final_response(body[4:])
            if code == AUTH_SASL_FINAL and self.scram:
                self.scram.check_final(body[4:])
                return b""
            raise PgError(f"unsupported authentication request {code}")
        if kind == b"S":
            name, value = body.split(b"\0")[:2]
            self.params[name.decode()] = value.decode()
        elif kind == b"K":
            (self.backend_pid,) = struct.unpack_from("!i", body)
        elif kind == b"Z":
            self.ready = True
        return b""


# ---------------------------------------------------------------- blocking


class Conn:
    """A blocking connection with deadlines on everything."""

    def __init__(self, host: str, port: int, user: str, password: str,
                 database: str = "postgres", timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.reader = MessageReader()
        self.handshake = Handshake(user, password)
        self.sock.sendall(startup_message(user, database, application_name="pghalo-bench"))
        deadline = time.monotonic() + timeout
        while not self.handshake.ready:
            kind, body = self._recv(deadline)
            reply = self.handshake.feed(kind, body)
            if reply:
                self.sock.sendall(reply)

    def _recv(self, deadline: float):
        while True:
            msg = self.reader.next()
            if msg is not None:
                return msg
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from the server in time")
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            if not data:
                raise PgError("server closed the connection")
            self.reader.feed(data)

    def query(self, sql: str, timeout: float = 10.0) -> list:
        """Runs a simple query; returns rows of text values (None for NULL)."""
        return self.query_with_columns(sql, timeout)[1]

    def query_with_columns(self, sql: str, timeout: float = 10.0) -> tuple[list[str], list]:
        """Runs a simple query; returns its column names and its rows."""
        self.sock.sendall(query_message(sql))
        deadline = time.monotonic() + timeout
        columns: list[str] = []
        rows, error = [], None
        while True:
            kind, body = self._recv(deadline)
            if kind == b"T":
                (count,) = struct.unpack_from("!h", body)
                pos = 2
                for _ in range(count):
                    end = body.index(b"\0", pos)
                    columns.append(body[pos:end].decode())
                    pos = end + 1 + 18  # table oid, attnum, type oid, typlen, typmod, format
            elif kind == b"D":
                (count,) = struct.unpack_from("!h", body)
                pos, row = 2, []
                for _ in range(count):
                    (length,) = struct.unpack_from("!i", body, pos)
                    pos += 4
                    if length < 0:
                        row.append(None)
                    else:
                        row.append(body[pos : pos + length].decode())
                        pos += length
                rows.append(row)
            elif kind == b"E":
                error = parse_error(body)
            elif kind == b"Z":
                if error:
                    raise error
                return columns, rows

    def close(self) -> None:
        try:
            self.sock.sendall(TERMINATE)
        except OSError:
            pass
        self.sock.close()
