"""End to end: real processes on loopback (`rigpool up`), the official openai client."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest

from rigpool.devnet.localnet import TOY_MODEL_NAME, free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rigpool_up(tmp_path_factory, toy_model):
    port, key = free_port(), "rp-e2e-key-0123456789"
    workdir = tmp_path_factory.mktemp("up")
    log = (workdir / "up.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rigpool", "up", "--port", str(port), "--api-key", key,
         "--providers", "4", "--workdir", str(workdir / "state")],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, (workdir / "up.log").read_text()
        if b"Ctrl-C stops everything" in (workdir / "up.log").read_bytes():
            break
        time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("rigpool up did not come up:\n" + (workdir / "up.log").read_text())
    yield base, key, proc, workdir
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    log.close()


def test_openai_client_lists_models_and_streams_with_usage(rigpool_up):
    base, key, _proc, _ = rigpool_up
    client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
    assert TOY_MODEL_NAME in [m.id for m in client.models.list()]
    stream = client.chat.completions.create(
        model=TOY_MODEL_NAME,
        messages=[{"role": "user", "content": "Hello, rigpool!"}],
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert any(c.choices and c.choices[0].delta.content for c in chunks)
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0


def test_providers_lists_every_agent_with_its_gpu(rigpool_up):
    base, _key, _proc, _ = rigpool_up
    data = httpx.get(base + "/v1/providers").json()["data"]
    assert len(data) == 4 and all(p["state"] == "online" for p in data)
    emulated = sorted(p["gpus"][0]["name"] for p in data if p["emulated"])
    assert emulated == ["A100 80GB", "RTX 3060 8GB", "RTX 4090"]
    real = [p for p in data if not p["emulated"]]
    assert len(real) == 1 and real[0]["backend"] == "transformers"


def test_requests_spread_over_providers_and_cli_table(rigpool_up):
    base, key, _proc, _ = rigpool_up
    client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
    seen = set()
    for i in range(24):
        reply = client.completions.create(model=TOY_MODEL_NAME, prompt=f"n{i}", max_tokens=3)
        seen.add(reply.system_fingerprint)
    assert len(seen) >= 2
    out = subprocess.run(
        [sys.executable, "-m", "rigpool", "providers", "--coordinator", base],
        capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "RTX 4090" in out.stdout and "online" in out.stdout


def test_ctrl_c_stops_every_process(rigpool_up):
    base, _key, proc, workdir = rigpool_up
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0
    with pytest.raises(httpx.HTTPError):
        httpx.get(base + "/healthz", timeout=2)
    # No agent survives its network.
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(workdir / "state") not in ps


def test_demo_runs_and_reports(tmp_path):
    report = tmp_path / "report.json"
    out = subprocess.run(
        [sys.executable, "-m", "rigpool", "demo", "--requests", "12", "--concurrency", "4",
         "--max-tokens", "8", "--report", str(report)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "time to first token" in out.stdout and "requests per provider" in out.stdout
    import json

    summary = json.loads(report.read_text())["summary"]
    assert summary["ok"] == 12 and summary["errors"] == 0
