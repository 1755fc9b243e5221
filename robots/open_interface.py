"""The iRobot Create 2 Open Interface, the part this project uses: command encoding and the sensor stream.

Serial link: 115200 baud, 8N1. Multi-byte values are big-endian. After `stream(ids)` the robot sends a frame every
15 ms: 19, N, then N bytes of (packet id, packet data)..., then a checksum byte that makes the sum of all the frame's
bytes 0 modulo 256. `StreamParser` cuts frames out of the raw byte stream and skips whatever does not check out.
"""
import struct

# Opcodes
START, SAFE, FULL, SENSORS, DRIVE_DIRECT, STREAM, QUERY_LIST, PAUSE_RESUME_STREAM, STOP = (
    128, 131, 132, 142, 145, 148, 149, 150, 173)
STREAM_HEADER = 19
FRAME_PERIOD = 0.015  # s between stream frames

# OI modes, as reported by packet 35
MODE_OFF, MODE_PASSIVE, MODE_SAFE, MODE_FULL = 0, 1, 2, 3

# Packet ids and their data formats (struct codes, big-endian)
BUMPS_AND_WHEEL_DROPS = 7  # bit0 bump right, bit1 bump left, bit2 wheel drop right, bit3 wheel drop left
CLIFF_LEFT, CLIFF_FRONT_LEFT, CLIFF_FRONT_RIGHT, CLIFF_RIGHT = 9, 10, 11, 12
DISTANCE, ANGLE = 19, 20  # mm and degrees since the previous report, signed
OI_MODE = 35
LEFT_ENCODER, RIGHT_ENCODER = 43, 44  # counts, wrapping at 16 bits
LIGHT_BUMPER = 45  # one bit per light-bump sensor, set when it sees something close
LIGHT_BUMP_SIGNALS = (46, 47, 48, 49, 50, 51)  # left, front left, center left, center right, front right, right; 0..4095
PACKET_FORMATS = {
    BUMPS_AND_WHEEL_DROPS: "B", CLIFF_LEFT: "B", CLIFF_FRONT_LEFT: "B", CLIFF_FRONT_RIGHT: "B", CLIFF_RIGHT: "B",
    DISTANCE: "h", ANGLE: "h", OI_MODE: "B", LEFT_ENCODER: "H", RIGHT_ENCODER: "H", LIGHT_BUMPER: "B",
    **{packet: "H" for packet in LIGHT_BUMP_SIGNALS},
}
BUMP_RIGHT, BUMP_LEFT, WHEEL_DROP_RIGHT, WHEEL_DROP_LEFT = 1, 2, 4, 8

# Bytes of arguments after each opcode this project sends or the emulator understands; None: a count byte says
# how many follow.
COMMAND_ARGUMENTS = {START: 0, SAFE: 0, FULL: 0, STOP: 0, DRIVE_DIRECT: 4, SENSORS: 1, PAUSE_RESUME_STREAM: 1,
                     STREAM: None, QUERY_LIST: None}
MAX_WHEEL_SPEED = 500  # mm/s, the Open Interface's range for Drive Direct


def drive_direct(left, right):
    """Drive Direct: wheel velocities in mm/s (clamped to +-500, rounded), sent right wheel first."""
    right = max(-MAX_WHEEL_SPEED, min(MAX_WHEEL_SPEED, round(float(right))))
    left = max(-MAX_WHEEL_SPEED, min(MAX_WHEEL_SPEED, round(float(left))))
    return struct.pack(">Bhh", DRIVE_DIRECT, right, left)


def stream(packets):
    return bytes([STREAM, len(packets), *packets])


def pause_stream():
    return bytes([PAUSE_RESUME_STREAM, 0])


def resume_stream():
    return bytes([PAUSE_RESUME_STREAM, 1])


def packet_format(packets):
    """The struct format of the data of `packets` in this order, ids left out."""
    try:
        return ">" + "".join(PACKET_FORMATS[p] for p in packets)
    except KeyError as e:
        raise ValueError(f"packet {e.args[0]} is not supported here") from None


def encode_frame(values):
    """A stream frame carrying {packet id: value} (what the robot sends; the emulator uses it)."""
    payload = b"".join(bytes([p]) + struct.pack(">" + PACKET_FORMATS[p], v) for p, v in values.items())
    frame = bytes([STREAM_HEADER, len(payload)]) + payload
    return frame + bytes([-sum(frame) & 0xFF])


class StreamParser:
    """Turns the byte stream after `stream(packets)` into one tuple of values per frame, in the order of `packets`.

    A frame is accepted only when its header, its length, every packet id and the checksum are what this stream
    must carry. Anything else (noise, a byte lost or flipped on the line, a stream that started mid-frame) is skipped
    one byte at a time until the next frame that checks out: the parser resynchronises by itself. `bad_frames`
    counts rejected frame candidates, `skipped_bytes` the bytes thrown away."""

    def __init__(self, packets):
        self.packets = tuple(packets)
        data_format = packet_format(self.packets)
        self._payload_length = len(self.packets) + struct.calcsize(data_format)
        self._frame_length = self._payload_length + 3
        # Packet ids sit at fixed offsets in a frame of this stream; unpack them together with the data.
        self._layout = struct.Struct(">" + "".join("B" + PACKET_FORMATS[p] for p in self.packets))
        self._buffer = bytearray()
        self.bad_frames = self.skipped_bytes = 0

    def feed(self, data):
        """Adds received bytes; returns the frames completed by them (a list of value tuples, oldest first)."""
        buffer, frames = self._buffer, []
        buffer += data
        while True:
            start = buffer.find(STREAM_HEADER)
            if start < 0:
                self.skipped_bytes += len(buffer)
                buffer.clear()
                return frames
            if start:
                self.skipped_bytes += start
                del buffer[:start]
            if len(buffer) >= 2 and buffer[1] != self._payload_length:
                self._reject()
                continue
            if len(buffer) < self._frame_length:
                return frames
            fields = self._layout.unpack_from(buffer, 2)
            if sum(buffer[:self._frame_length]) & 0xFF == 0 and fields[0::2] == self.packets:
                frames.append(fields[1::2])
                del buffer[:self._frame_length]
            else:
                self._reject()

    def _reject(self):
        self.bad_frames += 1
        self.skipped_bytes += 1
        del self._buffer[:1]
