"""Abuse of baton's HTTP/2 listener by a raw client (issue #9).

Two clients talk to a real baton:

* `H2Client` is a well-behaved client built on the `h2` state machine: it answers PINGs and
  SETTINGS and makes real gRPC calls. It proves the server still serves after an attack.
* `RawH2` is the attacker: frames built with `hyperframe` and header blocks with `hpack`
  (the libraries `h2` is made of), so none of h2's client-side checks (header validation,
  the peer's MAX_CONCURRENT_STREAMS) stand between the test and the server.

Every wait polls with a deadline; the bounds are generous for a busy 2-core machine.
"""

from __future__ import annotations

import select
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import hpack
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    PingReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.settings import SettingCodes
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)

from conftest import Baton

Address = tuple[str, int]
Headers = list[tuple[str, str]]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
# A gRPC message frame (uncompressed, length 0): HealthCheckRequest{service: ""}.
EMPTY_MESSAGE = b"\x00\x00\x00\x00\x00"
# HealthCheckResponse{status: SERVING}: field 1, varint 1.
SERVING_MESSAGE = b"\x00\x00\x00\x00\x02\x08\x01"


def grpc_request(addr: Address, path: str) -> Headers:
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", f"{addr[0]}:{addr[1]}"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]


def error_name(code: int) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return f"0x{code:x}"


def describe(frames: Iterable[Frame]) -> str:
    """A short account of what the server sent, for assertion messages."""
    frames = list(frames)
    counts = Counter(type(frame).__name__ for frame in frames)
    tail = "; ".join(describe_frame(frame) for frame in frames[-5:])
    return f"{dict(counts)}; last: {tail}"


def describe_frame(frame: Frame) -> str:
    if isinstance(frame, RstStreamFrame):
        return f"RST_STREAM(stream {frame.stream_id}, {error_name(frame.error_code)})"
    if isinstance(frame, GoAwayFrame):
        return (
            f"GOAWAY({error_name(frame.error_code)}, last_stream_id {frame.last_stream_id}, "
            f"{frame.additional_data!r})"
        )
    return f"{type(frame).__name__}(stream {frame.stream_id}, flags {sorted(frame.flags)})"


# --- the attacker: raw frames ---------------------------------------------------------


def read_available(sock: socket.socket, timeout: float) -> bytes | None:
    """What arrives within `timeout` (b"" if nothing), or None once the peer has closed."""
    readable, _, _ = select.select([sock], [], [], max(timeout, 0))
    if not readable:
        return b""
    try:
        data = sock.recv(1 << 20)
    except ConnectionResetError:
        return None
    return data or None


class Connection:
    """A TCP connection to baton that remembers when the server closed it."""

    def __init__(self, addr: Address) -> None:
        self.addr = addr
        self.sock = socket.create_connection(addr, timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.closed = False

    def close(self) -> None:
        self.sock.close()

    def receive(self, timeout: float) -> bytes:
        """What arrives within `timeout`; b"" if nothing, or once the server has closed."""
        if self.closed:
            return b""
        data = read_available(self.sock, timeout)
        if data is None:
            self.closed = True
            return b""
        return data


class RawH2(Connection):
    """HTTP/2 frame by frame. Received frames are kept in order in `frames`; SETTINGS are
    acknowledged, and PINGs too unless `answer_pings` is off."""

    def __init__(self, addr: Address, answer_pings: bool = True) -> None:
        super().__init__(addr)
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.answer_pings = answer_pings
        self.frames: list[Frame] = []
        # Decoded header blocks of the HEADERS frames received, by stream.
        self.headers: dict[int, list[Headers]] = {}
        self._buffer = b""

    def handshake(self) -> SettingsFrame:
        """Sends the preface and empty SETTINGS; returns the server's SETTINGS."""
        self.send_bytes(PREFACE + SettingsFrame(0).serialize())
        frame = self.wait_for(
            lambda f: isinstance(f, SettingsFrame) and "ACK" not in f.flags, 10, "server SETTINGS"
        )
        assert isinstance(frame, SettingsFrame)
        return frame

    def headers_frame(self, stream_id: int, headers: Headers, end_stream: bool = False) -> HeadersFrame:
        flags = ["END_HEADERS", *(["END_STREAM"] if end_stream else [])]
        return HeadersFrame(stream_id, self.encoder.encode(headers), flags=flags)

    def send(self, *frames: Frame) -> bool:
        return self.send_bytes(b"".join(frame.serialize() for frame in frames))

    def send_bytes(self, data: bytes) -> bool:
        """False once the server has closed the connection (what an attacker then sees)."""
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False

    def poll(self, timeout: float) -> list[Frame]:
        """Frames received within `timeout` (returns as soon as some arrive)."""
        data = self.receive(timeout)
        if not data:
            return []
        self._buffer += data
        received = []
        while len(self._buffer) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self._buffer[:9]))
            if len(self._buffer) < 9 + length:
                break
            frame.parse_body(memoryview(self._buffer[9 : 9 + length]))
            self._buffer = self._buffer[9 + length :]
            received.append(frame)
            self._on_frame(frame)
        self.frames.extend(received)
        return received

    def _on_frame(self, frame: Frame) -> None:
        if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
            self.send(SettingsFrame(0, flags=["ACK"]))
        elif isinstance(frame, PingFrame) and "ACK" not in frame.flags and self.answer_pings:
            self.send(PingFrame(0, frame.opaque_data, flags=["ACK"]))
        elif isinstance(frame, HeadersFrame):
            # Decoded in order, so the HPACK table stays in step with the server's.
            block = [(str(k), str(v)) for k, v in self.decoder.decode(frame.data, raw=False)]
            self.headers.setdefault(frame.stream_id, []).append(block)

    def wait_for(self, predicate: Callable[[Frame], bool], timeout: float, what: str) -> Frame:
        for frame in self.frames:
            if predicate(frame):
                return frame
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.closed:
            for frame in self.poll(deadline - time.monotonic()):
                if predicate(frame):
                    return frame
        state = "connection closed" if self.closed else f"not within {timeout} s"
        raise AssertionError(f"{what}: {state}; server sent {describe(self.frames)}")

    def wait_closed(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.closed and time.monotonic() < deadline:
            self.poll(deadline - time.monotonic())
        return self.closed

    def goaways(self) -> list[GoAwayFrame]:
        return [frame for frame in self.frames if isinstance(frame, GoAwayFrame)]

    def resets(self) -> list[RstStreamFrame]:
        return [frame for frame in self.frames if isinstance(frame, RstStreamFrame)]


def grpc_call(raw: RawH2, stream_id: int, path: str) -> tuple[Frame, ...]:
    """A well-formed gRPC request with one empty message: HEADERS, then DATA ending the
    client's side of the stream (a Watch then goes on streaming from the server)."""
    return (
        raw.headers_frame(stream_id, grpc_request(raw.addr, path)),
        DataFrame(stream_id, EMPTY_MESSAGE, flags=["END_STREAM"]),
    )


# --- the well-behaved client: h2 -------------------------------------------------------


@dataclass
class Reply:
    headers: dict[str, str] = field(default_factory=dict)
    data: bytes = b""
    trailers: dict[str, str] = field(default_factory=dict)


class H2Client(Connection):
    """A gRPC client on h2's connection state machine: PINGs and SETTINGS are answered by
    h2 itself whenever `pump` feeds it what the server sent."""

    def __init__(self, addr: Address) -> None:
        super().__init__(addr)
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.events: list[Event] = []
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def pump(self, timeout: float) -> list[Event]:
        data = self.receive(timeout)
        if not data:
            return []
        events = self.conn.receive_data(data)
        for event in events:
            if isinstance(event, DataReceived):
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        self.flush()
        self.events.extend(events)
        return events

    def unary(self, path: str, message: bytes, timeout: float = 15.0) -> Reply:
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, grpc_request(self.addr, path))
        self.conn.send_data(stream_id, message, end_stream=True)
        self.flush()
        reply = Reply()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.pump(deadline - time.monotonic()):
                if getattr(event, "stream_id", stream_id) != stream_id:
                    continue
                if isinstance(event, ResponseReceived):
                    reply.headers = dict(event.headers)
                elif isinstance(event, DataReceived):
                    reply.data += event.data
                elif isinstance(event, TrailersReceived):
                    reply.trailers = dict(event.headers)
                elif isinstance(event, StreamEnded):
                    return reply
                elif isinstance(event, StreamReset | ConnectionTerminated):
                    raise AssertionError(f"{path} failed: {event}")
            if self.closed:
                raise AssertionError(f"{path}: connection closed before the reply")
        raise AssertionError(f"{path}: no reply within {timeout} s")

    def check_health(self) -> None:
        reply = self.unary(HEALTH_CHECK, EMPTY_MESSAGE)
        assert reply.headers.get(":status") == "200", reply
        assert reply.trailers.get("grpc-status") == "0", reply
        assert reply.data == SERVING_MESSAGE, reply


def check_health(addr: Address) -> None:
    """Health/Check on a fresh connection answers SERVING."""
    client = H2Client(addr)
    try:
        client.check_health()
    finally:
        client.close()


def assert_unharmed(baton: Baton) -> None:
    assert baton.alive(), f"baton exited with {baton.process.returncode}:\n{baton.log()}"
    check_health(baton.addr)


# --- 1. a flood of malformed requests ----------------------------------------------------

ERROR_RESET_LIMIT = 50


def malformed_requests(addr: Address) -> dict[str, Headers]:
    """Requests RFC 9113 §8.2.2/§8.3 calls malformed, each a stream error for the server."""
    good = grpc_request(addr, HEALTH_CHECK)
    without_path = [(k, v) for k, v in good if k != ":path"]
    return {
        "connection-specific header": [*good, ("connection", "keep-alive")],
        "te other than trailers": [*[(k, v) for k, v in good if k != "te"], ("te", "gzip")],
        "missing :path": without_path,
        "pseudo-header after a regular header": [*without_path, (":path", HEALTH_CHECK)],
    }


@pytest.mark.parametrize("batch", [0, 10], ids=["one burst", "batches of 10"])
def test_malformed_request_flood_ends_in_goaway(start_baton: Callable[..., Baton], batch: int) -> None:
    """Ten times the limit's worth of malformed requests on one connection.

    In one burst, the server reads past the limit before it writes anything, and h2 sends
    the GOAWAY alone: the RST_STREAMs it had queued for the earlier streams are dropped.
    In batches whose answers the client awaits, every malformed request up to the limit
    gets its own RST_STREAM first. Either way GOAWAY names the stream that broke the limit.
    """
    baton = start_baton(max_local_error_reset_streams=ERROR_RESET_LIMIT)
    attacker = RawH2(baton.addr)
    attacker.handshake()
    variants = list(malformed_requests(baton.addr).values())
    count = 10 * ERROR_RESET_LIMIT
    frames = [
        attacker.headers_frame(2 * i + 1, variants[i % len(variants)], end_stream=True) for i in range(count)
    ]
    if not batch:
        # The server may hang up before it has read all of it: send reports that, no more.
        attacker.send(*frames)
    for start in range(0, count, batch or count):
        if not batch or attacker.goaways() or not attacker.send(*frames[start : start + batch]):
            break
        last = frames[min(start + batch, count) - 1].stream_id
        attacker.wait_for(
            lambda f, last=last: isinstance(f, GoAwayFrame) or f.stream_id == last,
            15,
            f"an answer to the malformed request on stream {last}",
        )

    goaway = attacker.wait_for(lambda f: isinstance(f, GoAwayFrame), 20, "GOAWAY after the flood")
    assert isinstance(goaway, GoAwayFrame)
    assert attacker.wait_closed(10), f"connection still open after GOAWAY: {describe(attacker.frames)}"
    resets = attacker.resets()
    pacing = f"batches of {batch}" if batch else "one burst"
    print(
        f"malformed flood ({pacing}): "
        f"{len(resets)} RST_STREAM {dict(Counter(error_name(r.error_code) for r in resets))}, "
        f"{describe_frame(goaway)}, then closed"
    )
    assert goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM, describe_frame(goaway)
    # The limit's worth of malformed streams is tolerated, and the connection goes right
    # after it, not after the whole flood.
    limit_stream = 2 * ERROR_RESET_LIMIT + 1
    assert limit_stream <= goaway.last_stream_id <= limit_stream + 2 * 5, describe_frame(goaway)
    # Resets only for streams the GOAWAY covers, each a stream error of the malformed request.
    assert all(r.error_code == ErrorCodes.PROTOCOL_ERROR for r in resets), describe(resets)
    assert all(r.stream_id < goaway.last_stream_id for r in resets), describe(resets)
    if batch:
        assert [r.stream_id for r in resets] == list(range(1, limit_stream, 2)), describe(resets)
    # No malformed request reached a service.
    assert not attacker.headers, f"responses to malformed requests: {attacker.headers}"
    attacker.close()

    assert_unharmed(baton)


@pytest.mark.parametrize("variant", sorted(malformed_requests(("127.0.0.1", 1))))
def test_each_malformed_request_is_reset_with_protocol_error(
    start_baton: Callable[..., Baton], variant: str
) -> None:
    """The flood's ingredients one by one: each is a stream error, the connection lives on."""
    baton = start_baton()
    attacker = RawH2(baton.addr)
    attacker.handshake()
    attacker.send(attacker.headers_frame(1, malformed_requests(baton.addr)[variant], end_stream=True))
    reset = attacker.wait_for(lambda f: isinstance(f, RstStreamFrame), 10, f"RST_STREAM for {variant}")
    assert isinstance(reset, RstStreamFrame)
    assert (reset.stream_id, error_name(reset.error_code)) == (1, "PROTOCOL_ERROR")
    # The same connection still serves a well-formed call.
    attacker.send(*grpc_call(attacker, 3, HEALTH_CHECK))
    attacker.wait_for(lambda f: isinstance(f, DataFrame) and f.stream_id == 3, 10, "Health/Check reply")
    assert attacker.headers[3][0][0] == (":status", "200")
    assert not attacker.goaways(), describe(attacker.frames)
    attacker.close()


def undecodable_requests(addr: Address) -> dict[str, Headers]:
    """Header blocks h2's HPACK decoder rejects outright: a connection error, not a stream one."""
    good = grpc_request(addr, HEALTH_CHECK)
    return {
        "uppercase header name": [*good, ("X-Abuse", "1")],
        "unknown pseudo-header": [*good, (":abuse", "1")],
        "space in a header name": [*good, ("x abuse", "1")],
    }


@pytest.mark.parametrize("variant", sorted(undecodable_requests(("127.0.0.1", 1))))
def test_undecodable_request_ends_the_connection_at_once(
    start_baton: Callable[..., Baton], variant: str
) -> None:
    """A flood of these is over at its first request: GOAWAY PROTOCOL_ERROR, then close."""
    baton = start_baton(max_local_error_reset_streams=ERROR_RESET_LIMIT)
    attacker = RawH2(baton.addr)
    attacker.handshake()
    request = undecodable_requests(baton.addr)[variant]
    attacker.send(*[attacker.headers_frame(2 * i + 1, request, end_stream=True) for i in range(10)])
    goaway = attacker.wait_for(lambda f: isinstance(f, GoAwayFrame), 10, f"GOAWAY for {variant}")
    assert isinstance(goaway, GoAwayFrame)
    print(f"{variant}: {describe_frame(goaway)}")
    assert (error_name(goaway.error_code), goaway.last_stream_id) == ("PROTOCOL_ERROR", 0)
    assert attacker.wait_closed(10), f"connection still open after GOAWAY: {describe(attacker.frames)}"
    assert not attacker.headers, f"responses to undecodable requests: {attacker.headers}"
    attacker.close()
    assert_unharmed(baton)


# --- 2. more concurrent streams than advertised ------------------------------------------

STREAM_LIMIT = 10


def open_watch(attacker: RawH2, stream_id: int) -> None:
    attacker.send(*grpc_call(attacker, stream_id, HEALTH_WATCH))


def wait_watching(attacker: RawH2, stream_id: int) -> None:
    """The Watch on `stream_id` answered 200 and its first SERVING message."""
    attacker.wait_for(
        lambda f: isinstance(f, DataFrame) and f.stream_id == stream_id and f.data == SERVING_MESSAGE,
        15,
        f"Health/Watch on stream {stream_id} streaming",
    )
    assert attacker.headers[stream_id][0][0] == (":status", "200")


def test_stream_past_max_concurrent_streams_is_refused(start_baton: Callable[..., Baton]) -> None:
    baton = start_baton(max_concurrent_streams=STREAM_LIMIT)
    attacker = RawH2(baton.addr)
    settings = attacker.handshake()
    assert settings.settings.get(SettingCodes.MAX_CONCURRENT_STREAMS) == STREAM_LIMIT, settings

    held = [2 * i + 1 for i in range(STREAM_LIMIT)]
    for stream_id in held:
        open_watch(attacker, stream_id)
    for stream_id in held:
        wait_watching(attacker, stream_id)

    # One more than advertised: h2 (the Python library) would refuse to send it; we do not.
    extra = held[-1] + 2
    open_watch(attacker, extra)
    reset = attacker.wait_for(
        lambda f: isinstance(f, RstStreamFrame) and f.stream_id == extra, 15, "reset of the extra stream"
    )
    assert isinstance(reset, RstStreamFrame)
    print(f"stream {STREAM_LIMIT + 1} of {STREAM_LIMIT}: {describe_frame(reset)}")
    assert reset.error_code == ErrorCodes.REFUSED_STREAM, describe_frame(reset)
    assert extra not in attacker.headers, "the extra stream was answered"
    # The refusal costs the attacker that stream only: the held ones and the connection live on.
    assert [r for r in attacker.resets() if r.stream_id != extra] == [], describe(attacker.frames)
    assert not attacker.goaways(), describe(attacker.frames)

    # Closing one held stream makes room for exactly one more.
    attacker.send(RstStreamFrame(held[0], error_code=ErrorCodes.CANCEL))
    replacement = extra + 2
    open_watch(attacker, replacement)
    wait_watching(attacker, replacement)
    refused_again = replacement + 2
    open_watch(attacker, refused_again)
    reset = attacker.wait_for(
        lambda f: isinstance(f, RstStreamFrame) and f.stream_id == refused_again, 15, "reset past the limit"
    )
    assert isinstance(reset, RstStreamFrame)
    assert reset.error_code == ErrorCodes.REFUSED_STREAM, describe_frame(reset)
    assert not attacker.goaways(), describe(attacker.frames)
    attacker.close()
    assert_unharmed(baton)


# --- 3. idle connections -----------------------------------------------------------------

HANDSHAKE_TIMEOUT = 1.0
KEEPALIVE_INTERVAL = 1.0
KEEPALIVE_TIMEOUT = 2.0
IDLE_SETTINGS = {
    "handshake_timeout": f"{HANDSHAKE_TIMEOUT:g}s",
    "keepalive_interval": f"{KEEPALIVE_INTERVAL:g}s",
    "keepalive_timeout": f"{KEEPALIVE_TIMEOUT:g}s",
}


def seconds_until_closed(sock: socket.socket, timeout: float) -> float | None:
    """Reads (and drops) what arrives until EOF; seconds from now until then, None if still
    open after `timeout`."""
    start = time.monotonic()
    deadline = start + timeout
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], max(deadline - time.monotonic(), 0))
        if readable:
            try:
                if not sock.recv(65536):
                    return time.monotonic() - start
            except ConnectionResetError:
                return time.monotonic() - start
    return None


@pytest.mark.parametrize("sent", [b"", PREFACE[:16]], ids=["nothing", "half a preface"])
def test_connection_without_preface_is_closed_after_handshake_timeout(
    start_baton: Callable[..., Baton], sent: bytes
) -> None:
    baton = start_baton(**IDLE_SETTINGS)
    # Several at once: the timeout must hold for each connection, not only for the first.
    start = time.monotonic()
    sockets = [socket.create_connection(baton.addr, timeout=10) for _ in range(5)]
    for sock in sockets:
        if sent:
            sock.sendall(sent)
    limit = 10 * HANDSHAKE_TIMEOUT
    closed_at = []
    for sock in sockets:
        waited = seconds_until_closed(sock, max(limit - (time.monotonic() - start), 0))
        closed_at.append(None if waited is None else round(time.monotonic() - start, 3))
        sock.close()
    print(f"preface-less connections ({sent!r}) closed after {closed_at} s")
    assert None not in closed_at, f"still open {limit} s after connecting: {closed_at}"
    first = min(t for t in closed_at if t is not None)
    assert first >= 0.5 * HANDSHAKE_TIMEOUT, f"closed before the handshake timeout: {closed_at}"
    assert_unharmed(baton)


def test_connection_speaking_another_protocol_is_closed(start_baton: Callable[..., Baton]) -> None:
    """Bytes that cannot start the preface (here a TLS ClientHello's first bytes) are not
    waited on: hyper refuses them at once, well inside the handshake timeout."""
    baton = start_baton(**IDLE_SETTINGS)
    sock = socket.create_connection(baton.addr, timeout=10)
    sock.sendall(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03")
    waited = seconds_until_closed(sock, 10 * HANDSHAKE_TIMEOUT)
    sock.close()
    print(f"non-HTTP/2 connection closed after {waited} s")
    assert waited is not None, "a connection speaking another protocol stayed open"
    assert_unharmed(baton)


def test_client_that_sent_its_preface_outlives_handshake_timeout(
    start_baton: Callable[..., Baton],
) -> None:
    """Control: the handshake timeout ends preface-less connections only."""
    baton = start_baton(**IDLE_SETTINGS)
    client = H2Client(baton.addr)
    deadline = time.monotonic() + 3 * HANDSHAKE_TIMEOUT
    while time.monotonic() < deadline and not client.closed:
        client.pump(deadline - time.monotonic())
    assert not client.closed, "the server closed a connection that had sent its preface"
    client.check_health()
    client.close()


def test_connection_not_answering_pings_is_closed(start_baton: Callable[..., Baton]) -> None:
    baton = start_baton(**IDLE_SETTINGS)
    silent = RawH2(baton.addr, answer_pings=False)
    silent.handshake()
    silent.send(*grpc_call(silent, 1, HEALTH_CHECK))
    silent.wait_for(lambda f: isinstance(f, DataFrame) and f.stream_id == 1, 10, "Health/Check reply")
    # From here on the client sends nothing at all: no PING is acknowledged.
    start = time.monotonic()
    limit = 5 * (KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT)
    closed = silent.wait_closed(limit)
    elapsed = time.monotonic() - start
    pings = [f for f in silent.frames if isinstance(f, PingFrame) and "ACK" not in f.flags]
    print(f"silent client: {len(pings)} PING(s), closed after {elapsed:.2f} s; {describe(silent.frames)}")
    assert closed, f"still open after {limit} s; server sent {describe(silent.frames)}"
    assert pings, f"closed without a PING first: {describe(silent.frames)}"
    # Not before one interval has passed and the PING has had its time to be answered.
    assert elapsed >= 0.8 * KEEPALIVE_TIMEOUT, f"closed after only {elapsed:.2f} s"
    silent.close()
    assert_unharmed(baton)


def test_connection_answering_pings_stays_open(start_baton: Callable[..., Baton]) -> None:
    """Control: an idle client that acknowledges PINGs keeps its connection."""
    baton = start_baton(**IDLE_SETTINGS)
    client = H2Client(baton.addr)
    client.check_health()
    deadline = time.monotonic() + 3 * (KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT)
    while time.monotonic() < deadline and not client.closed:
        client.pump(deadline - time.monotonic())
    pings = [e for e in client.events if isinstance(e, PingReceived)]
    terminated = [e for e in client.events if isinstance(e, ConnectionTerminated)]
    print(f"answering client: {len(pings)} PING(s) answered, open={not client.closed}")
    assert not client.closed and not terminated, f"closed: {terminated}"
    assert len(pings) >= 2, f"expected keepalive PINGs, got {len(pings)}"
    client.check_health()
    client.close()


# --- 4. rapid reset (CVE-2023-44487) -----------------------------------------------------

RAPID_RESET_STREAMS = 10_000
RAPID_RESET_BATCH = 100
# h2's default for hyper: remotely reset streams not yet accepted by the server, at most.
PENDING_ACCEPT_RESET_LIMIT = 20


@pytest.mark.parametrize("batch", [0, RAPID_RESET_BATCH], ids=["one burst", "batches until GOAWAY"])
def test_rapid_reset_ends_in_goaway(start_baton: Callable[..., Baton], batch: int) -> None:
    """10,000 streams opened and at once cancelled (HEADERS then RST_STREAM CANCEL): the
    server must cut the connection after a few, not keep starting work for the attacker.
    Nothing in `[server]` configures this: it is hyper's and h2's default, kept so."""
    baton = start_baton()
    attacker = RawH2(baton.addr)
    attacker.handshake()
    request = grpc_request(baton.addr, HEALTH_CHECK)
    step = batch or RAPID_RESET_STREAMS
    start = time.monotonic()
    sent = 0
    while sent < RAPID_RESET_STREAMS and not attacker.goaways():
        frames: list[Frame] = []
        for stream_id in range(2 * sent + 1, 2 * (sent + step) + 1, 2):
            frames.append(attacker.headers_frame(stream_id, request))
            frames.append(RstStreamFrame(stream_id, error_code=ErrorCodes.CANCEL))
        if not attacker.send(*frames):
            break  # the server has hung up
        sent += step
        attacker.poll(0)

    goaway = attacker.wait_for(lambda f: isinstance(f, GoAwayFrame), 20, "GOAWAY after rapid resets")
    assert isinstance(goaway, GoAwayFrame)
    took = time.monotonic() - start
    closed = attacker.wait_closed(10)
    pacing = f"batches of {batch}" if batch else "one burst"
    print(
        f"rapid reset ({pacing}): {sent} HEADERS+RST_STREAM "
        f"pairs written, {len(attacker.headers)} answered, {describe_frame(goaway)} after "
        f"{took:.3f} s; closed={closed}"
    )
    assert goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM, describe_frame(goaway)
    # The server stopped after a handful of streams, not after the attacker's 10,000.
    assert goaway.last_stream_id <= 2 * 10 * PENDING_ACCEPT_RESET_LIMIT, describe_frame(goaway)
    assert closed, f"connection still open after GOAWAY: {describe(attacker.frames)}"
    attacker.close()
    assert_unharmed(baton)
