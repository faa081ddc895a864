"""Trust: attestation, verified inference, metering checks, reputation and evidence.

trust/ hands the scheduler a score and the ledger evidence; it never imports the coordinator,
the gateway or the agent (the agent imports it). Pure modules (numpy and the standard library
only, safe for the coordinator):

    attestation   challenge sizing from the perf model, verification, CC seam
    toploc        TOPLOC hidden-state commitments (arXiv 2501.16007)
    verification  verdicts on a provider's output (logprobs, top-k, greedy, TOPLOC, token stats)
    sampling      per-provider check rate (Beta belief) and the stake deterrence requires
    metering      agent token claims vs the gateway's count
    reputation    per-provider score and Yuma-style stake-weighted clipping across validators
    evidence      signed, re-verifiable evidence records and slash recommendations

Torch modules (agent and validator side):

    attestation_agent  runs a challenge on CUDA or CPU and answers the probe
    torchops           teacher-forced pass, reference decoding loop with commitments
    simulate           honest and cheating providers on tiny real models (tests, bench)
"""
