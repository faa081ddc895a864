"""Coordinator <-> agent wire messages.

Compatibility rule (guarded by tests/test_protocol.py): PROTOCOL_VERSION changes only when an
existing field changes meaning or disappears. New fields always get defaults, and every decoder
ignores fields it does not know, so an older agent talks to a newer coordinator and vice versa.
A `hello` whose major version differs from ours is refused with a clear reason.

Frames are JSON objects with a `type` discriminator, one per WebSocket text message. Since 1.5
an agent may put several `token`/`done`/`error` frames (of any of its requests, in the order
they were produced) into one `batch` frame, so a stream costs one sealed message per batch
rather than one per token; it does so only when the coordinator's `welcome` says 1.5 or later.
The hot frames (`sealed`, `token`) are encoded and the `sealed` envelope decoded with orjson;
every other frame, and anything the fast path does not recognise exactly, goes through the
pydantic models below, which remain the one definition of what is valid.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError

#: major.minor — major must match between peers; minor only adds fields with defaults.
PROTOCOL_VERSION = "1.6"

#: the first version whose coordinators accept `batch` frames
BATCH_VERSION = "1.5"

#: the first version whose peers exchange countersigned receipts (`receipt_countersigned`,
#: `receipts`, `receipts_ack`): neither side sends them to an older peer
RECEIPTS_VERSION = "1.6"

#: frames bigger than this are refused by both sides before parsing (a garbage flood guard).
MAX_FRAME_BYTES = 1 << 20

#: a `done` frame carries verification data for generations up to this many tokens (prompt or
#: output); longer ones are served unverifiable, which raises the agent's check rate elsewhere.
MAX_VERIFIED_TOKENS = 16384

#: most frames one `batch` carries (its JSON is bounded by MAX_FRAME_BYTES as well)
MAX_BATCH_FRAMES = 4096

#: domain separation of the agent's receipt signature (the ledger checks the same prefix), so a
#: receipt signature can never be replayed as any other signed message of the agent.
RECEIPT_AGENT_DOMAIN = b"rigpool-receipt-v1/agent:"

#: domain separation of the coordinator's countersignature, which covers
#: RECEIPT_COORDINATOR_DOMAIN + the body's canonical JSON + b"|" + the agent's signature (the
#: ledger's `COORDINATOR_DOMAIN`; the agent checks countersignatures with it)
RECEIPT_COORDINATOR_DOMAIN = b"rigpool-receipt-v1/coordinator:"

#: most receipts one `receipts` frame carries (an agent also keeps each frame's JSON under
#: MAX_RECEIPTS_BYTES, so the sealed message stays far below MAX_FRAME_BYTES)
MAX_RECEIPTS_PER_FRAME = 256
MAX_RECEIPTS_BYTES = 256 * 1024

#: most request ids one `receipts_ack` names
MAX_ACKS_PER_FRAME = 4096


class _Frame(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class GpuInfo(_Frame):
    name: str = Field(max_length=128)
    vram_mb: int = Field(ge=0)
    emulated: bool = False
    index: int = 0
    uuid: str | None = Field(default=None, max_length=128)


class ModelOffer(_Frame):
    """A model an agent serves, with its prices (USD per million tokens)."""

    name: str = Field(min_length=1, max_length=256)
    context_length: int = Field(ge=1)
    price_in_per_mtok: float = Field(default=0.0, ge=0)
    price_out_per_mtok: float = Field(default=0.0, ge=0)


class Capabilities(_Frame):
    gpus: list[GpuInfo] = Field(default_factory=list, max_length=64)
    backend: str = Field(max_length=32)
    emulated: bool = False
    models: list[ModelOffer] = Field(default_factory=list, max_length=64)
    region: str = Field(default="local", max_length=64)
    max_concurrency: int = Field(default=4, ge=1, le=4096)
    agent_version: str = Field(default="", max_length=64)


class Hello(_Frame):
    """First frame an agent sends: who it is and what it offers, signed by its key.

    The signature covers the canonical JSON of every field except `signature` itself
    (see `protocol.signing`), so nothing in the offer can be altered in flight.
    """

    type: Literal["hello"] = "hello"
    protocol_version: str = PROTOCOL_VERSION
    agent_id: str = Field(min_length=32, max_length=64)  # base58 ed25519 public key
    nonce: str = Field(min_length=16, max_length=64)
    timestamp: float
    capabilities: Capabilities
    signature: str = Field(default="", max_length=128)  # base58 ed25519 signature


class Welcome(_Frame):
    type: Literal["welcome"] = "welcome"
    protocol_version: str = PROTOCOL_VERSION
    agent_id: str
    heartbeat_interval_s: float = 5.0
    # 1.2: hex X25519 public key of this session; when set, every later agent frame is sealed
    # (see protocol/channel.py).
    session_pubkey: str = Field(default="", max_length=64)
    # 1.6: the coordinator's identity (base58 public key), the key that countersigns its
    # receipts: an agent presents to it only the receipts it countersigned. "" when it has none.
    coordinator_id: str = Field(default="", max_length=64)


class Sealed(_Frame):
    """An agent frame after hello, authenticated by the session key (protocol/channel.py)."""

    type: Literal["sealed"] = "sealed"
    seq: int = Field(ge=1)
    mac: str = Field(min_length=32, max_length=32)
    body: str = Field(max_length=MAX_FRAME_BYTES)


def encode_sealed(frame: Sealed) -> str:
    """The wire text of a sealed frame (orjson: this runs once per message an agent sends)."""
    return seal_text(frame.seq, frame.mac, frame.body)


def seal_text(seq: int, mac: str, body: str) -> str:
    """The wire text of `Sealed(seq=seq, mac=mac, body=body)` without building the model."""
    return orjson.dumps({"type": "sealed", "seq": seq, "mac": mac, "body": body}).decode()


def decode_sealed(raw: str | bytes) -> tuple[int, str, str] | None:
    """(seq, mac, body) of a well-formed `sealed` frame, or None for anything else.

    The coordinator's fast path for the envelope of every agent message: it recognises exactly
    what `Sealer` writes (the four fields, the right types and sizes) and nothing more; every
    other text, valid or not, gets None and goes through `decode_agent_frame`, so what is
    accepted and what is refused stays defined by the pydantic models alone.
    """
    _check_size(raw)
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not dict or len(obj) != 4 or obj.get("type") != "sealed":
        return None
    seq, mac, body = obj.get("seq"), obj.get("mac"), obj.get("body")
    if type(seq) is not int or seq < 1 or type(mac) is not str or len(mac) != 32:
        return None
    if type(body) is not str or len(body) > MAX_FRAME_BYTES:
        return None
    return seq, mac, body


class Refused(_Frame):
    type: Literal["refused"] = "refused"
    reason: str
    retry: bool = False


class Heartbeat(_Frame):
    type: Literal["heartbeat"] = "heartbeat"
    active: int = Field(default=0, ge=0)
    queued: int = Field(default=0, ge=0)
    vram_free_mb: int | None = Field(default=None, ge=0)
    # 1.1: the agent is leaving; route nothing new to it.
    draining: bool = False


class Sampling(_Frame):
    max_tokens: int = Field(default=16, ge=1)
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int | None = None
    stop: list[str] = Field(default_factory=list, max_length=16)
    logprobs: bool = False
    top_logprobs: int = Field(default=0, ge=0, le=20)


class Generate(_Frame):
    type: Literal["generate"] = "generate"
    request_id: str = Field(min_length=1, max_length=128)
    model: str
    prompt: str
    messages: list[dict[str, str]] | None = None
    sampling: Sampling = Field(default_factory=Sampling)
    deadline: float | None = None  # unix time after which the result is useless


class SignReceipt(_Frame):
    """1.3: asks the agent to sign the receipt of a request it served (`attempt_id`).

    `body` is the receipt's canonical JSON; the agent checks it names the agent as provider and
    does not bill more tokens than it produced, then signs RECEIPT_AGENT_DOMAIN + body.
    """

    type: Literal["sign_receipt"] = "sign_receipt"
    attempt_id: str = Field(max_length=128)
    body: str = Field(max_length=65536)


class ReceiptSignature(_Frame):
    type: Literal["receipt_signature"] = "receipt_signature"
    attempt_id: str = Field(max_length=128)
    signature: str = Field(default="", max_length=128)
    refused: str = Field(default="", max_length=512)


class CountersignedReceipt(_Frame):
    """1.6: a receipt as it travels: the body (a JSON object), both signatures.

    The body stays a plain object, so its canonical JSON (sorted keys, no spaces) is exactly
    what was signed; `protocol/receipts.py` checks it, the ledger's `SignedReceipt` types it.
    """

    body: dict[str, Any]
    agent_signature: str = Field(max_length=128)
    coordinator_signature: str = Field(max_length=128)

    @property
    def request_id(self) -> str:
        """The body's request id ("" when it has none)."""
        rid = self.body.get("request_id")
        return rid if isinstance(rid, str) else ""


class ReceiptCountersigned(_Frame):
    """1.6, coordinator -> agent: the receipt the agent signed (`attempt_id`), countersigned.

    Sent right after the coordinator countersigns it, before the capture it proves is durable:
    the agent keeps it in its journal until a `receipts_ack` names it.
    """

    type: Literal["receipt_countersigned"] = "receipt_countersigned"
    attempt_id: str = Field(default="", max_length=128)
    receipt: CountersignedReceipt


class Receipts(_Frame):
    """1.6, agent -> coordinator: countersigned receipts the agent holds and that were not acked.

    Sent after each `welcome` of a 1.6 coordinator, for the receipts that coordinator
    countersigned; the coordinator answers with `receipts_ack`.
    """

    type: Literal["receipts"] = "receipts"
    receipts: list[CountersignedReceipt] = Field(min_length=1, max_length=MAX_RECEIPTS_PER_FRAME)


class ReceiptRefusal(_Frame):
    """A presented receipt the coordinator will never accept, and why."""

    request_id: str = Field(max_length=128)
    reason: str = Field(max_length=512)


class ReceiptsAck(_Frame):
    """1.6, coordinator -> agent: what became of receipts (presented, or handed out earlier).

    `durable`: in the coordinator's ledger (the capture, or the charge, and the receipt are
    committed): the agent forgets them. `refused`: never acceptable here (a bad signature,
    another provider, another coordinator, no such hold): the agent forgets them too, and logs
    why. A presented receipt named in neither (the writer is busy or stopped, the consumer's
    balance is short) stays with the agent for the next connection. `note` says why nothing
    could be recorded at all (e.g. billing is off).
    """

    type: Literal["receipts_ack"] = "receipts_ack"
    durable: list[str] = Field(default_factory=list, max_length=MAX_ACKS_PER_FRAME)
    refused: list[ReceiptRefusal] = Field(default_factory=list, max_length=MAX_RECEIPTS_PER_FRAME)
    note: str = Field(default="", max_length=512)


class Cancel(_Frame):
    type: Literal["cancel"] = "cancel"
    request_id: str


class TopLogprob(_Frame):
    text: str
    logprob: float


class Token(_Frame):
    """One streamed piece of a generation; `index` counts from 0 per request, without gaps."""

    type: Literal["token"] = "token"
    request_id: str = Field(max_length=128)
    index: int = Field(ge=0)
    text: str = Field(max_length=4096)
    token_id: int | None = None
    logprob: float | None = None
    top_logprobs: list[TopLogprob] = Field(default_factory=list, max_length=20)


def encode_token(frame: Token) -> str:
    """`encode(frame)` for the frame an agent sends most, without pydantic's serializer."""
    return orjson.dumps(
        {
            "type": "token",
            "request_id": frame.request_id,
            "index": frame.index,
            "text": frame.text,
            "token_id": frame.token_id,
            "logprob": frame.logprob,
            "top_logprobs": [{"text": t.text, "logprob": t.logprob} for t in frame.top_logprobs],
        }
    ).decode()


class Done(_Frame):
    type: Literal["done"] = "done"
    request_id: str = Field(max_length=128)
    finish_reason: Literal["stop", "length"] = "stop"
    # The agent's own count: logged and compared, never billed (the gateway counts itself).
    completion_tokens_claimed: int = Field(default=0, ge=0)
    # 1.4, verification data (backends that run the model themselves fill these; see
    # docs/trust.md). The prompt and output token ids the agent used, the log-probability of
    # each output token under the distribution it was drawn from (-1e9 for -inf), TOPLOC
    # commitments (base64, 258 bytes per 32 tokens), and the agent's ed25519 signature (base58)
    # over `trust.evidence.provider_statement` of all of it: what a validator re-checks and what
    # evidence against this agent must carry.
    prompt_ids: list[int] | None = Field(default=None, max_length=MAX_VERIFIED_TOKENS)
    output_ids: list[int] | None = Field(default=None, max_length=MAX_VERIFIED_TOKENS)
    logprobs: list[float] | None = Field(default=None, max_length=MAX_VERIFIED_TOKENS)
    commitments: list[str] | None = Field(default=None, max_length=MAX_VERIFIED_TOKENS // 32 + 1)
    statement_signature: str = Field(default="", max_length=128)


class Error(_Frame):
    type: Literal["error"] = "error"
    request_id: str = Field(max_length=128)
    message: str = Field(max_length=2048)
    retryable: bool = True


StreamFrame = Annotated[Token | Done | Error, Field(discriminator="type")]


class Batch(_Frame):
    """1.5, agent -> coordinator: several stream frames in one (sealed) message.

    The frames of each request keep their order (indices without gaps, `done` or `error`
    last), so the coordinator handles a batch exactly as the same frames sent one by one; a
    batch only saves the per-message costs (a WebSocket message, an envelope, a MAC, a wake-up
    of the request's reader). Built by `encode_batch` from already encoded frames.
    """

    type: Literal["batch"] = "batch"
    frames: list[StreamFrame] = Field(min_length=1, max_length=MAX_BATCH_FRAMES)


def encode_batch(frames: list[str]) -> str:
    """A `batch` frame from the wire texts of `token`/`done`/`error` frames (not re-encoded)."""
    return '{"type":"batch","frames":[' + ",".join(frames) + "]}"


#: largest `AttestData.data` piece: with the frame's own fields and the JSON escaping of the
#: sealed envelope it stays well under MAX_FRAME_BYTES (attestation answers run to megabytes)
MAX_ATTEST_PART_CHARS = 512 * 1024


class AttestChallenge(_Frame):
    """1.4, coordinator -> agent: an attestation challenge (`trust.attestation.Challenge` fields).

    The agent runs it on its device and answers with `attest_data` frames (round "reply");
    see docs/trust.md, "Attestation".
    """

    type: Literal["attest_challenge"] = "attest_challenge"
    challenge: dict[str, Any]


class AttestProbe(_Frame):
    """1.4, coordinator -> agent: round 2, what to open from the buffer still held (`Probe`)."""

    type: Literal["attest_probe"] = "attest_probe"
    challenge_id: str = Field(max_length=64)
    probe: dict[str, Any]


class AttestData(_Frame):
    """1.4, agent -> coordinator: one piece of a reply or probe answer, or why there is none.

    A round's answer (`trust.attestation_wire` JSON) is split into `parts` pieces that the
    coordinator joins in `part` order; `error` set (with `parts` 1 and empty `data`) means the
    agent could not do the work (no torch, not enough memory, past the deadline).
    """

    type: Literal["attest_data"] = "attest_data"
    challenge_id: str = Field(max_length=64)
    round: Literal["reply", "answer"]
    part: int = Field(default=0, ge=0)
    parts: int = Field(default=1, ge=1, le=4096)
    data: str = Field(default="", max_length=MAX_ATTEST_PART_CHARS)
    error: str = Field(default="", max_length=2048)


#: every frame an agent sends, and every frame a coordinator sends (the decoders' return types)
AnyAgentFrame = (
    Hello
    | Heartbeat
    | Token
    | Done
    | Error
    | Batch
    | Sealed
    | ReceiptSignature
    | AttestData
    | Receipts
)
AnyCoordinatorFrame = (
    Welcome
    | Refused
    | Generate
    | Cancel
    | SignReceipt
    | AttestChallenge
    | AttestProbe
    | ReceiptCountersigned
    | ReceiptsAck
)
AgentFrame = Annotated[AnyAgentFrame, Field(discriminator="type")]
CoordinatorFrame = Annotated[AnyCoordinatorFrame, Field(discriminator="type")]


class _AgentFrameRoot(RootModel[AgentFrame]):
    pass


class _CoordinatorFrameRoot(RootModel[CoordinatorFrame]):
    pass


class ProtocolError(ValueError):
    """A frame that is too big, not JSON, or not a frame we know."""


def _check_size(raw: str | bytes) -> None:
    if len(raw) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {len(raw)} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")


def decode_agent_frame(
    raw: str | bytes,
) -> AnyAgentFrame:
    """Parse a frame sent by an agent; raises ProtocolError on anything malformed."""
    _check_size(raw)
    try:
        return _AgentFrameRoot.model_validate_json(raw).root
    except ValidationError as exc:
        raise ProtocolError(_summarise(exc)) from None


def decode_coordinator_frame(
    raw: str | bytes,
) -> AnyCoordinatorFrame:
    """Parse a frame sent by the coordinator; raises ProtocolError on anything malformed."""
    _check_size(raw)
    try:
        return _CoordinatorFrameRoot.model_validate_json(raw).root
    except ValidationError as exc:
        raise ProtocolError(_summarise(exc)) from None


def encode(frame: BaseModel) -> str:
    """Serialise a frame for the wire."""
    return frame.model_dump_json()


def major(version: str) -> str:
    """The major part of a protocol version ("1.3" -> "1")."""
    return version.split(".", 1)[0]


def at_least(version: str, wanted: str) -> bool:
    """Whether a peer's `version` (major.minor) is `wanted` or newer within the same major.

    Anything that does not parse as major.minor counts as older: the peer gets the frames
    every 1.x version understands.
    """
    try:
        have = tuple(int(p) for p in version.split(".")[:2])
        need = tuple(int(p) for p in wanted.split(".")[:2])
    except ValueError:
        return False
    return len(have) == 2 and have[0] == need[0] and have >= need


def _summarise(exc: ValidationError) -> str:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid"}
    where = ".".join(str(p) for p in first.get("loc", ())) or "frame"
    return f"invalid frame at {where}: {first.get('msg')} ({len(errors)} error(s))"
