"""Protocol 1.5: `batch` frames, the orjson encoders and the fast path for the sealed envelope.

The fast paths must never change what is valid: the pydantic models stay the definition, so
each fast encoder is checked against pydantic's own output, and the envelope decoder against
`decode_agent_frame` on arbitrary input.
"""

from __future__ import annotations

import json
import math
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rigpool.protocol.channel import Opener, Sealer
from rigpool.protocol.messages import (
    BATCH_VERSION,
    MAX_BATCH_FRAMES,
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    Batch,
    Done,
    Error,
    ProtocolError,
    Sealed,
    Token,
    TopLogprob,
    at_least,
    decode_agent_frame,
    decode_sealed,
    encode,
    encode_batch,
    encode_token,
    seal_text,
)

RID = "cmpl-0123456789abcdef0123456789abcdef.1"

tokens = st.builds(
    Token,
    request_id=st.text(max_size=128),
    index=st.integers(min_value=0, max_value=2**63),
    text=st.text(max_size=64),
    token_id=st.none() | st.integers(min_value=-(2**63), max_value=2**63),
    logprob=st.none() | st.floats(allow_nan=True, allow_infinity=True),
    top_logprobs=st.lists(
        st.builds(TopLogprob, text=st.text(max_size=8), logprob=st.floats(allow_nan=False)),
        max_size=3,
    ),
)


def test_batches_start_at_1_5_and_the_protocol_has_them():
    assert BATCH_VERSION == "1.5"
    assert at_least(PROTOCOL_VERSION, BATCH_VERSION)


def test_batch_round_trip_keeps_every_frame_in_order():
    frames = [Token(request_id=RID, index=i, text=f" t{i}", logprob=-0.5) for i in range(5)]
    other = Token(request_id="other.1", index=0, text="x")
    done = Done(request_id=RID, finish_reason="length", completion_tokens_claimed=5)
    wire = [encode_token(frames[0]), encode_token(other), *map(encode_token, frames[1:])]
    wire.append(encode(done))
    decoded = decode_agent_frame(encode_batch(wire))
    assert isinstance(decoded, Batch)
    assert decoded.frames == [frames[0], other, *frames[1:], done]
    # The same batch built by pydantic decodes to the same frames.
    assert decode_agent_frame(encode(decoded)) == decoded


@given(tokens)
def test_encode_token_says_what_pydantic_says(token: Token):
    fast = json.loads(encode_token(token))
    assert fast == json.loads(encode(token))
    assert _decoded(encode_token(token)) == _decoded(encode(token))


def _decoded(raw: str) -> object:
    """The frame, or the error (a non-finite top logprob is written as null by both)."""
    try:
        return decode_agent_frame(raw)
    except ProtocolError as exc:
        return str(exc)


def test_non_finite_logprobs_travel_as_null_like_pydantic_writes_them():
    token = Token(request_id=RID, index=0, text="a", logprob=-math.inf)
    assert json.loads(encode_token(token))["logprob"] is None
    assert decode_agent_frame(encode_token(token)).logprob is None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "body",
    [
        '{"type":"batch","frames":[]}',
        '{"type":"batch"}',
        '{"type":"batch","frames":[{"type":"heartbeat"}]}',
        '{"type":"batch","frames":[{"type":"batch","frames":[]}]}',
        '{"type":"batch","frames":[{"type":"token","request_id":"r","index":-1,"text":""}]}',
        '{"type":"batch","frames":{"type":"token","request_id":"r","index":0,"text":""}}',
    ],
)
def test_malformed_batches_are_protocol_errors(body):
    with pytest.raises(ProtocolError):
        decode_agent_frame(body)


def test_batches_are_bounded():
    one = encode_token(Token(request_id="r", index=0, text=""))
    assert isinstance(decode_agent_frame(encode_batch([one] * MAX_BATCH_FRAMES)), Batch)
    with pytest.raises(ProtocolError):
        decode_agent_frame(encode_batch([one] * (MAX_BATCH_FRAMES + 1)))
    with pytest.raises(ProtocolError, match="exceeds"):
        decode_agent_frame(encode_batch([one] * (MAX_FRAME_BYTES // len(one) + 1)))


def test_unknown_fields_in_a_batch_and_its_frames_are_ignored():
    raw = json.dumps(
        {
            "type": "batch",
            "frames": [{"type": "token", "request_id": "r", "index": 0, "text": "a", "new": 1}],
            "compressed": False,
        }
    )
    assert decode_agent_frame(raw) == Batch(frames=[Token(request_id="r", index=0, text="a")])


def test_a_batch_is_sealed_and_opened_like_any_frame():
    key = os.urandom(32)
    sealer, opener = Sealer(key), Opener(key)
    body = encode_batch([encode(Error(request_id=RID, message="oom", retryable=False))])
    wire = sealer.seal(body)
    parts = decode_sealed(wire)
    assert parts is not None
    assert opener.open_parts(*parts) == body
    # The envelope still parses as the pydantic Sealed frame, with the same fields.
    sealed = decode_agent_frame(wire)
    assert isinstance(sealed, Sealed) and (sealed.seq, sealed.mac, sealed.body) == parts
    with pytest.raises(ProtocolError, match="replayed"):
        opener.open_parts(*parts)
    tampered = body.replace("oom", "ok!")
    with pytest.raises(ProtocolError, match="authentication"):
        Opener(key).open_parts(parts[0], parts[1], tampered)


envelopes = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["sealed", "token", "batch", ""]) | st.integers(),
        "seq": st.integers(min_value=-3, max_value=2**70) | st.text(max_size=3) | st.floats(),
        "mac": st.text(min_size=30, max_size=34) | st.integers(),
        "body": st.text(max_size=50) | st.none() | st.integers(),
        "extra": st.integers(),
    },
)


@given(envelopes.map(json.dumps) | st.text(max_size=200) | st.binary(max_size=100))
def test_the_fast_envelope_path_accepts_only_what_pydantic_accepts(raw):
    parts = decode_sealed(raw)
    try:
        frame = decode_agent_frame(raw)
    except ProtocolError:
        frame = None
    if parts is not None:
        assert isinstance(frame, Sealed)
        assert (frame.seq, frame.mac, frame.body) == parts


@given(st.integers(min_value=1, max_value=2**62), st.text(max_size=200))
def test_every_sealed_frame_takes_the_fast_path(seq, body):
    mac = "0123456789abcdef" * 2
    wire = seal_text(seq, mac, body)
    assert decode_sealed(wire) == (seq, mac, body)
    assert decode_agent_frame(wire) == Sealed(seq=seq, mac=mac, body=body)


def test_the_fast_path_keeps_the_frame_size_limit():
    with pytest.raises(ProtocolError, match="exceeds"):
        decode_sealed("x" * (MAX_FRAME_BYTES + 1))
    assert decode_sealed('{"type": "sealed"}') is None


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("1.5", True),
        ("1.6", True),
        ("1.10", True),
        ("1.4", False),
        ("1.0", False),
        ("2.5", False),
        ("0.9", False),
        ("1", False),
        ("1.x", False),
        ("", False),
    ],
)
def test_at_least(version, expected):
    assert at_least(version, BATCH_VERSION) is expected
