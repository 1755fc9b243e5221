"""The Open Interface codec: command bytes as the Create 2 documentation gives them, and the stream parser's
framing, checksum and resynchronisation."""
import random
import struct

import pytest

from robots import open_interface as oi

PACKETS = (oi.BUMPS_AND_WHEEL_DROPS, oi.DISTANCE, oi.OI_MODE, *oi.LIGHT_BUMP_SIGNALS)


def frame(bumps=0, distance=0, mode=oi.MODE_SAFE, light=(0, 0, 0, 0, 0, 0)):
    return oi.encode_frame(dict(zip(PACKETS, (bumps, distance, mode, *light))))


def test_drive_direct_is_right_wheel_first_signed_big_endian_and_clamped():
    assert oi.drive_direct(left=-100, right=150) == bytes([145, 0x00, 0x96, 0xFF, 0x9C])
    assert oi.drive_direct(left=1000, right=-1000) == bytes([145, 0xFE, 0x0C, 0x01, 0xF4])  # +-500 mm/s
    assert oi.drive_direct(left=12.6, right=-0.4) == struct.pack(">Bhh", 145, 0, 13)


def test_stream_commands():
    assert oi.stream([7, 19, 46]) == bytes([148, 3, 7, 19, 46])
    assert oi.pause_stream() == bytes([150, 0]) and oi.resume_stream() == bytes([150, 1])


def test_a_frame_sums_to_zero_and_carries_ids_and_values():
    data = frame(bumps=3, distance=-7, light=(1, 2, 3, 4000, 5, 6))
    assert data[0] == 19 and data[1] == len(data) - 3 and sum(data) % 256 == 0
    assert data[2:4] == bytes([7, 3]) and data[4:7] == bytes([19, 0xFF, 0xF9])


def test_parser_reads_frames_fed_in_any_pieces():
    frames = [frame(distance=d, light=(abs(d), 0, 0, 0, 0, 4095)) for d in (-3, 0, 5, 300)]
    stream = b"".join(frames)
    for chunk in (1, 2, 7, len(stream)):
        parser = oi.StreamParser(PACKETS)
        got = []
        for i in range(0, len(stream), chunk):
            got += parser.feed(stream[i:i + chunk])
        assert [f[1] for f in got] == [-3, 0, 5, 300] and got[-1][-1] == 4095
        assert parser.bad_frames == parser.skipped_bytes == 0


def test_parser_skips_a_corrupted_frame_and_resynchronises():
    good = [frame(distance=d) for d in range(1, 6)]
    bad = bytearray(good[2])
    bad[5] ^= 0x04  # one bit flipped on the line
    parser = oi.StreamParser(PACKETS)
    got = parser.feed(good[0] + good[1] + bytes(bad) + good[3] + good[4])
    assert [f[1] for f in got] == [1, 2, 4, 5]
    assert parser.bad_frames >= 1


def test_parser_resynchronises_after_noise_full_of_header_bytes():
    parser = oi.StreamParser(PACKETS)
    noise = bytes([19, 19, 0, 19, len(frame()) - 3, 7, 1, 19])  # false starts, one with the right length
    got = parser.feed(noise + frame(distance=9) + noise[:3] + frame(distance=10))
    assert [f[1] for f in got] == [9, 10]


def test_parser_rejects_a_frame_with_good_checksum_but_wrong_packet_ids():
    parser = oi.StreamParser(PACKETS)
    other = bytearray(frame())
    other[2] = 8  # packet 8 where 7 belongs, and a checksum that fits
    other[-1] = (other[-1] - 1) % 256
    assert sum(other) % 256 == 0
    assert parser.feed(bytes(other)) == [] and parser.bad_frames >= 1
    assert [f[1] for f in parser.feed(frame(distance=4))] == [4]


def test_parser_survives_random_garbage_between_frames():
    rng = random.Random(0)
    parser = oi.StreamParser(PACKETS)
    got = []
    for d in range(200):
        garbage = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 12)))
        got += parser.feed(garbage + frame(distance=d))
    values = [f[1] for f in got]
    # Garbage can swallow the frame right after it only if it ends in a false start that eats the header; the
    # parser then finds the next one. Everything it returns is a real frame, in order.
    assert values == sorted(set(values)) and len(values) > 190


def test_unknown_packet_is_refused():
    with pytest.raises(ValueError, match="packet 99"):
        oi.StreamParser([7, 99])
