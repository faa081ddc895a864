"""`rigpool evidence list|export|verify`: records listed from the DB, exported, re-verified."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from typer.testing import CliRunner

from rigpool.cli.main import app
from rigpool.coordinator.db import open_database
from rigpool.coordinator.verify_link import store_evidence
from rigpool.protocol.signing import Identity
from rigpool.trust.evidence import (
    EvidenceRecord,
    inference_evidence,
    metering_evidence,
    provider_statement,
)
from rigpool.trust.metering import MeterReading
from rigpool.trust.simulate import CLAIMED_MODEL as MODEL_NAME
from rigpool.trust.verification import Sampling
from trustsupport import served


def run(*args: str):
    return CliRunner().invoke(app, ["evidence", *args])


def flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


def metering_record(request_id: str = "r9", claimed: int = 40) -> EvidenceRecord:
    provider, coordinator = Identity.generate(), Identity.generate()
    reading = MeterReading(request_id, provider.agent_id, MODEL_NAME, 12, claimed, 12, 20)
    statement = provider_statement(
        request_id=request_id,
        model=MODEL_NAME,
        prompt_ids=[],
        output_ids=list(range(20)),
        sampling=Sampling(),
        prompt_tokens=12,
        completion_tokens=claimed,
    )
    return metering_evidence(
        reading=reading,
        provider_signature=provider.sign(statement),
        coordinator=coordinator,
        output_ids=list(range(20)),
    )


def write(tmp_path: Path, record: EvidenceRecord | str, name: str = "record.json") -> str:
    path = tmp_path / name
    path.write_text(record if isinstance(record, str) else record.to_json())
    return str(path)


def test_cheating_providers_record_holds(cheat_record, trust_models, tmp_path):
    result = run(
        "verify", write(tmp_path, cheat_record), "--model", f"{MODEL_NAME}={trust_models.claimed}"
    )
    out = flat(result.output)
    assert result.exit_code == 0, result.output
    assert "HOLDS" in out and "DOES NOT HOLD" not in out
    for shown in (cheat_record.provider, cheat_record.validator, cheat_record.record_hash):
        assert shown in out
    assert "inference" in out and "req-0" in out
    failed = [c["name"] for c in cheat_record.result["checks"] if not c["passed"]]
    assert failed and all(name in out for name in failed)  # the re-run checks' table


def test_model_found_through_model_dir_and_json(cheat_record, trust_models, tmp_path):
    named = tmp_path / MODEL_NAME
    named.symlink_to(trust_models.claimed, target_is_directory=True)
    result = run("verify", write(tmp_path, cheat_record), "--model-dir", str(named), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["holds"] is True and data["verdict"] == "HOLDS" and data["reasons"] == []
    assert data["record_hash"] == cheat_record.record_hash and data["kind"] == "inference"
    assert any(not c["passed"] for c in data["checks"])


def test_model_found_through_the_registry(cheat_record, trust_models, tmp_path):
    url = "sqlite:///" + str(tmp_path / "c.db")
    db = open_database(url)
    with db.begin() as session:  # register_model wants a tokenizer; the row is what matters
        from rigpool.coordinator.tables import Model

        session.add(
            Model(
                name=MODEL_NAME,
                path=str(trust_models.claimed),
                context_length=128,
                created=datetime.now(UTC).replace(tzinfo=None),
            )
        )
    result = run("verify", write(tmp_path, cheat_record), "--db", url)
    assert result.exit_code == 0, result.output
    assert "HOLDS" in result.stdout


def test_tampered_record_does_not_hold(cheat_record, trust_models, tmp_path):
    data = json.loads(cheat_record.to_json())
    data["body"]["output_ids"][0] = (data["body"]["output_ids"][0] + 1) % 1000
    file = write(tmp_path, json.dumps(data))
    result = run("verify", file, "--model", f"{MODEL_NAME}={trust_models.claimed}")
    out = flat(result.output)
    assert result.exit_code == 1, result.output
    assert "DOES NOT HOLD" in out
    assert "provider signature does not cover this output" in out
    assert "validator signature does not match the record" in out


def test_framed_honest_output_does_not_hold(trust_models, validator, tmp_path):
    provider, framer = Identity.generate(), Identity.generate()
    claim, signature = served("honest", trust_models, provider, seed=3)
    result = validator.check(claim)
    record = inference_evidence(
        provider=provider.agent_id,
        request_id="req-3",
        claim=claim,
        result=dataclasses.replace(result, passed=False),
        provider_signature=signature,
        validator=framer,
    )
    cli = run("verify", write(tmp_path, record), "--model", f"{MODEL_NAME}={trust_models.claimed}")
    out = flat(cli.output)
    assert cli.exit_code == 1, cli.output
    assert "DOES NOT HOLD" in out and "does not reproduce" in out


def test_metering_record_needs_no_model(tmp_path):
    result = run("verify", write(tmp_path, metering_record()))
    assert result.exit_code == 0, result.output
    assert "HOLDS" in result.stdout and "metering" in result.stdout
    agreeing = run("verify", write(tmp_path, metering_record(claimed=20), "agree.json"))
    assert agreeing.exit_code == 1
    assert "DOES NOT HOLD" in agreeing.stdout and "to prove" in flat(agreeing.output)


def test_metering_verify_does_not_import_torch(tmp_path):
    file = write(tmp_path, metering_record())
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from rigpool.cli.main import app\n"
        f"r = CliRunner().invoke(app, ['evidence', 'verify', {file!r}])\n"
        "assert r.exit_code == 0, r.output\n"
        "assert 'torch' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_missing_model_is_a_clear_error(cheat_record, tmp_path):
    result = run("verify", write(tmp_path, cheat_record), "--model-dir", str(tmp_path))
    out = flat(result.output)
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)  # an error message, not a traceback
    assert f"--model {MODEL_NAME}=FOLDER" in out and repr(MODEL_NAME) in out
    assert "--model-dir" in out and "--db" in out


def test_bad_files_are_clear_errors(tmp_path):
    cases = {
        "not JSON": "this is { not json",
        "not an evidence record": json.dumps({"hello": "world"}),
        "expected a JSON object": json.dumps([1, 2, 3]),
    }
    for i, (message, text) in enumerate(cases.items()):
        result = run("verify", write(tmp_path, text, f"bad{i}.json"))
        assert result.exit_code == 1
        assert isinstance(result.exception, SystemExit)
        assert message in flat(result.output)
    bad_option = run("verify", write(tmp_path, metering_record()), "--model", "no-equals-sign")
    assert bad_option.exit_code == 1 and "NAME=FOLDER" in flat(bad_option.output)
    missing = run("verify", str(tmp_path / "nowhere.json"))
    assert missing.exit_code == 1 and "cannot read" in flat(missing.output)


def _insert(url: str, record: EvidenceRecord, created: datetime) -> None:
    store_evidence(open_database(url), record, created)


def test_list_and_export_against_a_database(cheat_record, tmp_path):
    url = "sqlite:///" + str(tmp_path / "c.db")
    open_database(url)
    meter = metering_record("r-meter")
    t0 = datetime(2025, 1, 2, 3, 4, 5)
    _insert(url, cheat_record, t0)
    _insert(url, meter, t0 + timedelta(minutes=1))

    listed = run("list", "--db", url)
    assert listed.exit_code == 0, listed.output
    assert (
        cheat_record.record_hash[:12] in listed.stdout and meter.record_hash[:12] in listed.stdout
    )
    assert listed.stdout.index(meter.record_hash[:12]) < listed.stdout.index(
        cheat_record.record_hash[:12]
    )  # newest first

    rows = json.loads(run("list", "--db", url, "--json").stdout)
    assert [r["record_hash"] for r in rows] == [meter.record_hash, cheat_record.record_hash]
    failed = {c["name"] for c in cheat_record.result["checks"] if not c["passed"]}
    assert set(rows[1]["failed"]) == failed and rows[0]["failed"] == ["token counts"]
    assert rows[1]["provider"] == cheat_record.provider and rows[1]["request_id"] == "req-0"

    only = json.loads(run("list", "--db", url, "--provider", meter.provider, "--json").stdout)
    assert [r["record_hash"] for r in only] == [meter.record_hash]

    out = tmp_path / "exported.json"
    done = run("export", cheat_record.record_hash[:10], "--db", url, "--out", str(out))
    assert done.exit_code == 0, done.output
    assert out.read_text() == cheat_record.to_json()
    assert EvidenceRecord.from_json(out.read_text()).record_hash == cheat_record.record_hash

    to_stdout = run("export", meter.record_hash[:8].upper(), "--db", url)
    assert to_stdout.exit_code == 0, to_stdout.output
    assert to_stdout.stdout == meter.to_json() + "\n"
    assert run("verify", str(out), "--model", f"{MODEL_NAME}=/nowhere").exit_code == 1


def test_export_prefix_errors(tmp_path):
    url = "sqlite:///" + str(tmp_path / "c.db")
    records = [metering_record(f"r{i}") for i in range(20)]  # 20 hashes: two share a first digit
    for i, record in enumerate(records):
        _insert(url, record, datetime(2025, 1, 1) + timedelta(seconds=i))
    firsts = [r.record_hash[0] for r in records]
    shared = next(c for c in firsts if firsts.count(c) > 1)

    ambiguous = run("export", shared, "--db", url)
    assert ambiguous.exit_code == 1 and "ambiguous" in flat(ambiguous.output)
    unknown = run("export", "0" * 64, "--db", url)
    assert unknown.exit_code == 1 and "no evidence record" in flat(unknown.output)
    not_hex = run("export", "xyz", "--db", url)
    assert not_hex.exit_code == 1 and "not a record hash" in flat(not_hex.output)
    no_db = run("export", shared, "--db", "sqlite:///" + str(tmp_path / "missing.db"))
    assert no_db.exit_code == 1 and "no coordinator database" in flat(no_db.output)
    assert not (tmp_path / "missing.db").exists()


def test_empty_list(tmp_path):
    url = "sqlite:///" + str(tmp_path / "c.db")
    open_database(url)
    result = run("list", "--db", url)
    assert result.exit_code == 0 and "no evidence records" in result.stdout
    assert json.loads(run("list", "--db", url, "--json").stdout) == []
