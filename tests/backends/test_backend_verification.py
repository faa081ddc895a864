"""The transformers backend's verification data passes (or fails) the trust layer's validator.

Uses the peaked trust test models (`rigpool.trust.simulate`): the untrained toy model is
near-uniform, which would make every statistic meaningless.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from rigpool.agent.backends.base import Finish, GenerationRequest, SamplingParams, TokenChunk
from rigpool.agent.backends.transformers_backend import TransformersBackend
from rigpool.trust.simulate import CLAIMED_MODEL, ModelSet
from rigpool.trust.torchops import generate, teacher_force
from rigpool.trust.validator import Validator
from rigpool.trust.verification import ProviderClaim, Sampling

PROMPTS = (
    "Tell me about the lighthouse.",
    "<|bos|><|user|>\nWhere does the river go?<|eos|>\n<|assistant|>\n",
)
GREEDY: dict[str, Any] = {"temperature": 0.0}
SAMPLED: dict[str, Any] = {"temperature": 1.0, "seed": 1234}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _backend(folder: Any, dtype: str = "float32") -> TransformersBackend:
    return TransformersBackend(str(folder), device="cpu", dtype=dtype, served_name=CLAIMED_MODEL)


@pytest.fixture(scope="module")
def claimed(trust_models: ModelSet) -> TransformersBackend:
    return _backend(trust_models.claimed)


def _generate(
    backend: TransformersBackend, prompt: str, max_tokens: int = 64, **sampling: Any
) -> tuple[list[TokenChunk], Finish]:
    request = GenerationRequest(
        request_id="v",
        model=CLAIMED_MODEL,
        prompt=prompt,
        sampling=SamplingParams(max_tokens=max_tokens, **sampling),
    )

    async def collect() -> list[Any]:
        return [item async for item in backend.generate(request)]

    *chunks, finish = asyncio.run(collect())
    assert isinstance(finish, Finish)
    return chunks, finish


def _claim(finish: Finish, max_tokens: int = 64, **sampling: Any) -> ProviderClaim:
    assert finish.prompt_ids is not None and finish.output_ids is not None
    return ProviderClaim(
        model=CLAIMED_MODEL,
        prompt_ids=finish.prompt_ids,
        output_ids=finish.output_ids,
        sampling=Sampling(
            temperature=sampling.get("temperature", 1.0),
            top_p=sampling.get("top_p", 1.0),
            max_tokens=max_tokens,
            seed=sampling.get("seed"),
        ),
        logprobs=finish.logprobs,
        commitments=finish.commitments,
    )


@pytest.mark.parametrize("sampling", [GREEDY, SAMPLED, {**SAMPLED, "top_p": 0.9}])
def test_same_commitments_as_the_reference_loop(
    claimed: TransformersBackend, validator: Validator, sampling: dict[str, Any]
) -> None:
    _, finish = _generate(claimed, PROMPTS[0], max_tokens=40, **sampling)
    claim = _claim(finish, max_tokens=40, **sampling)
    reference = generate(
        validator.model, list(claim.prompt_ids), claim.sampling, eos_ids=claimed._eos_ids
    )
    assert list(claim.output_ids) == reference.output_ids
    assert claim.commitments is not None
    assert list(claim.commitments) == reference.commitments  # bit for bit
    assert claim.logprobs == pytest.approx(reference.logprobs, abs=1e-5)


def test_hidden_state_is_the_final_norm_output_despite_logits_to_keep(
    claimed: TransformersBackend,
) -> None:
    import torch

    assert claimed._extra_kwargs.get("logits_to_keep") == 1
    model = claimed._model
    ids = claimed._encode(PROMPTS[1])
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids]), use_cache=True, **claimed._extra_kwargs)
        row = out.hidden_states[-1][0, -1]
        assert out.logits.shape[1] == 1
        assert out.hidden_states[-1].shape[1] == len(ids)  # every position, not just the kept one
        torch.testing.assert_close(model.lm_head(row), out.logits[0, -1])
        final = model.model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
        torch.testing.assert_close(row, final)
    # what the validator reads at the position that chose the first output token
    first = int(out.logits[0, -1].argmax())
    forced = teacher_force(model, ids, [first], Sampling(temperature=0.0))
    torch.testing.assert_close(row, torch.from_numpy(forced.hidden[0]))


@pytest.mark.parametrize("sampling", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
@pytest.mark.parametrize("prompt", PROMPTS, ids=["plain", "chat"])
def test_honest_fp32_claim_passes(
    claimed: TransformersBackend, validator: Validator, prompt: str, sampling: dict[str, Any]
) -> None:
    _, finish = _generate(claimed, prompt, **sampling)
    assert finish.commitments is not None and len(finish.commitments) == 2  # 64 tokens
    result = validator.check(_claim(finish, **sampling))
    assert result.passed, result.reasons


@pytest.mark.parametrize("sampling", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_honest_bf16_serving_passes_the_fp32_validator(
    trust_models: ModelSet, validator: Validator, sampling: dict[str, Any]
) -> None:
    bf16 = _backend(trust_models.claimed, dtype="bfloat16")
    for prompt in PROMPTS:
        _, finish = _generate(bf16, prompt, **sampling)
        result = validator.check(_claim(finish, **sampling))
        assert result.passed, result.reasons


@pytest.mark.parametrize("sampling", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_smaller_model_under_the_claimed_name_fails(
    trust_models: ModelSet, validator: Validator, sampling: dict[str, Any]
) -> None:
    cheat = _backend(trust_models.smaller)
    assert cheat.models()[0].name == CLAIMED_MODEL
    _, finish = _generate(cheat, PROMPTS[0], **sampling)
    result = validator.check(_claim(finish, **sampling))
    assert not result.passed
    failed = {c.name for c in result.failed}
    # the commitments alone give it away, as do the logprobs
    assert {"toploc_exponent", "toploc_mantissa_mean", "logprob_mean_abs"} <= failed, failed


def test_claim_without_commitments_is_still_checked(
    trust_models: ModelSet, validator: Validator
) -> None:
    backend = TransformersBackend(
        str(trust_models.claimed), device="cpu", served_name=CLAIMED_MODEL, commitments=False
    )
    _, finish = _generate(backend, PROMPTS[0], **SAMPLED)
    assert finish.commitments is None
    result = validator.check(_claim(finish, **SAMPLED))
    assert result.passed, result.reasons
    assert not any(c.name.startswith("toploc") for c in result.checks)
