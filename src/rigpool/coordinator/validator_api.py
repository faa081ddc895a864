"""Validators over HTTP: signed score reports in, the validator table out, stakes set by the admin.

* ``POST /v1/validators/reports``: a `ValidatorReport` signed by a registered validator;
  refused with an OpenAI-style error (403 unknown validator, 401 bad signature, 409 stale
  timestamp or replayed epoch, 400 bad input) and then nothing changes.
* ``GET /v1/validators``: every validator, its stake, last epoch and validator trust.
* ``PUT /v1/admin/validators/{id}`` ``{"stake": N}`` with the ``X-Admin-Secret`` header
  (compared in constant time with `Settings.admin_secret`): register, re-weigh, or (stake 0)
  remove a validator; id ``coordinator`` sets the coordinator's own stake.

After every change the consensus reputations of the providers it touched are pushed into the
fleet index, where the router reads them.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter, Header, Request
from pydantic import BaseModel, ConfigDict, Field

from rigpool.coordinator.state import CoordinatorState
from rigpool.coordinator.validators import COORDINATOR_ID, ValidatorReport, is_validator_id
from rigpool.core.errors import BadRequest, Unauthorized

router = APIRouter()


class StakeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stake: int = Field(ge=0, le=2**63 - 1)


def push_reputations(state: CoordinatorState, providers: Iterable[str]) -> None:
    """Copy the consensus of every touched provider that is live into the router's index."""
    now = time.monotonic()
    for agent_id in providers:
        if agent_id in state.fleet:
            state.fleet.heartbeat(agent_id, now, reputation=state.reputation(agent_id))


def _require_admin(state: CoordinatorState, secret: str | None) -> None:
    expected = state.settings.admin_secret.encode()
    if secret is None or not hmac.compare_digest(secret.encode(), expected):
        raise Unauthorized(
            "missing or wrong X-Admin-Secret header", param="X-Admin-Secret", code="invalid_admin"
        )


@router.post("/v1/validators/reports")
async def post_report(report: ValidatorReport, request: Request) -> dict[str, Any]:
    state: CoordinatorState = request.app.state.coordinator
    board = state.validators
    now = time.time()
    touched = board.prune(now)
    push_reputations(state, touched)
    touched = board.submit(report, now)
    push_reputations(state, touched)
    return {
        "object": "validator_report",
        "validator": report.validator,
        "epoch": report.epoch,
        "accepted": len(report.scores),
        "reputation": {p: board.consensus(p, now) for p in sorted(report.scores)},
    }


@router.get("/v1/validators")
async def list_validators(request: Request) -> dict[str, Any]:
    """Public: validators are public keys and stakes."""
    state: CoordinatorState = request.app.state.coordinator
    now = time.time()
    push_reputations(state, state.validators.prune(now))
    return {
        "object": "list",
        "kappa": state.validators.kappa,
        "report_ttl_s": state.validators.ttl_s,
        "data": state.validators.describe(now),
    }


@router.put("/v1/admin/validators/{validator_id}")
async def put_validator(
    validator_id: str,
    body: StakeBody,
    request: Request,
    x_admin_secret: str | None = Header(default=None, max_length=512),
) -> dict[str, Any]:
    state: CoordinatorState = request.app.state.coordinator
    _require_admin(state, x_admin_secret)
    if validator_id != COORDINATOR_ID and not is_validator_id(validator_id):
        raise BadRequest(
            "a validator id is a base58 ed25519 public key (or 'coordinator')",
            param="validator_id",
        )
    push_reputations(state, state.validators.set_stake(validator_id, body.stake))
    rows = {row["id"]: row for row in state.validators.describe()}
    return rows.get(validator_id, {"id": validator_id, "stake": 0, "removed": True})
