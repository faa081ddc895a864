import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rigpool.protocol.messages import (
    MAX_ATTEST_PART_CHARS,
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    AttestChallenge,
    AttestData,
    AttestProbe,
    Capabilities,
    Generate,
    Heartbeat,
    Hello,
    ProtocolError,
    Token,
    decode_agent_frame,
    decode_coordinator_frame,
    encode,
    major,
)
from rigpool.protocol.signing import (
    Identity,
    canonical_bytes,
    load_or_create_identity,
    verify,
)


def _hello(identity: Identity) -> Hello:
    hello = Hello(
        agent_id=identity.agent_id,
        nonce="0" * 32,
        timestamp=1_700_000_000.0,
        capabilities=Capabilities(backend="emulated"),
    )
    return hello.model_copy(update={"signature": identity.sign(canonical_bytes(hello))})


def test_frames_round_trip():
    frame = Token(request_id="r1", index=3, text="hé", logprob=-0.5)
    assert decode_agent_frame(encode(frame)) == frame
    gen = Generate(request_id="r1", model="m", prompt="p")
    assert decode_coordinator_frame(encode(gen)) == gen


def test_attestation_frames_round_trip():
    challenge = AttestChallenge(challenge={"challenge_id": "c1", "seed": 7, "limit_s": 8.5})
    assert decode_coordinator_frame(encode(challenge)) == challenge
    probe = AttestProbe(challenge_id="c1", probe={"products": [3], "chunks": [[1, 2]]})
    assert decode_coordinator_frame(encode(probe)) == probe
    piece = AttestData(challenge_id="c1", round="answer", part=1, parts=3, data="x" * 100)
    assert decode_agent_frame(encode(piece)) == piece
    error = AttestData(challenge_id="c1", round="reply", error="cannot hold the buffer")
    assert decode_agent_frame(encode(error)) == error
    # A full piece of base64 data stays under the frame limit (sealing adds little: no escapes).
    full = AttestData(challenge_id="c1", round="answer", data="A" * MAX_ATTEST_PART_CHARS)
    assert len(encode(full)) < MAX_FRAME_BYTES
    with pytest.raises(ProtocolError):
        decode_agent_frame(encode(full).replace('"answer"', '"guess"'))


def test_unknown_fields_are_ignored_so_newer_peers_stay_compatible():
    # The compatibility rule: a newer minor version may add fields; older decoders ignore them.
    raw = json.dumps({"type": "heartbeat", "active": 2, "gpu_temperature_c": 71})
    assert decode_agent_frame(raw) == Heartbeat(active=2)


def test_old_frames_without_new_fields_still_decode():
    # Fields added after 1.0 must have defaults: a bare 1.0 heartbeat still parses.
    assert decode_agent_frame('{"type": "heartbeat"}') == Heartbeat()


def test_protocol_version_is_major_minor():
    assert major(PROTOCOL_VERSION) == PROTOCOL_VERSION.split(".")[0]
    assert major("1.7") == "1"


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "not json",
        "[]",
        '{"type": "nope"}',
        '{"type": "token", "request_id": "r"}',
        '{"type": "token", "request_id": "r", "index": -1, "text": ""}',
        b"\xff\xfe",
    ],
)
def test_garbage_is_a_protocol_error(raw):
    with pytest.raises(ProtocolError):
        decode_agent_frame(raw)


def test_oversized_frames_are_refused_before_parsing():
    with pytest.raises(ProtocolError, match="exceeds"):
        decode_agent_frame("x" * (MAX_FRAME_BYTES + 1))


@given(st.binary(max_size=512) | st.text(max_size=512))
def test_decoder_never_raises_anything_but_protocol_error(raw):
    with contextlib.suppress(ProtocolError):
        decode_agent_frame(raw)


def test_hello_signature_covers_every_field():
    identity = Identity.generate()
    hello = _hello(identity)
    assert verify(hello.agent_id, canonical_bytes(hello), hello.signature)
    tampered = hello.model_copy(update={"capabilities": Capabilities(backend="transformers")})
    assert not verify(tampered.agent_id, canonical_bytes(tampered), tampered.signature)
    other = Identity.generate()
    assert not verify(other.agent_id, canonical_bytes(hello), hello.signature)
    assert not verify("not-base58-!!", canonical_bytes(hello), hello.signature)


def test_identity_file_is_solana_keypair_format(tmp_path):
    path = tmp_path / "id.json"
    identity, created = load_or_create_identity(path)
    assert created
    data = json.loads(path.read_text())
    assert isinstance(data, list) and len(data) == 64 and all(0 <= b < 256 for b in data)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    again, created = load_or_create_identity(path)
    assert not created and again.agent_id == identity.agent_id


def test_identity_file_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2, 3]")
    with pytest.raises(ValueError, match="64"):
        load_or_create_identity(bad)
    bad.write_text("{oops")
    with pytest.raises(ValueError, match="Solana keypair"):
        load_or_create_identity(bad)
    mismatched = tmp_path / "mismatch.json"
    a, b = Identity.generate(), Identity.generate()
    mismatched.write_text(json.dumps(list(a.keypair_bytes()[:32] + b.keypair_bytes()[32:])))
    with pytest.raises(ValueError, match="does not match"):
        load_or_create_identity(mismatched)
