from rigpool.trust.metering import MeteringPolicy, MeterReading, billable_tokens, compare, summarize


def reading(claimed: int, counted: int, agent: str = "a1", rid: str = "r1") -> MeterReading:
    return MeterReading(rid, agent, "m", 10, claimed, 10, counted)


def test_honest_counts_within_one_token_agree():
    assert compare(reading(21, 20)) is None  # the agent counts the final EOS


def test_inflated_count_is_a_mismatch():
    mismatch = compare(reading(30, 20))
    assert mismatch is not None and mismatch.inflated
    assert mismatch.completion_delta == 10
    assert "gateway counted" in mismatch.reason


def test_billing_uses_the_gateway_count_only():
    assert billable_tokens(reading(1000, 20)) == (10, 20)


def test_relative_tolerance():
    policy = MeteringPolicy(abs_tolerance=0, rel_tolerance=0.1)
    assert compare(reading(105, 100), policy) is None
    assert compare(reading(115, 100), policy) is not None


def test_summary_per_agent():
    readings = [reading(20, 20, "honest", f"h{i}") for i in range(5)]
    readings += [reading(40, 20, "liar", f"l{i}") for i in range(5)]
    s = summarize(readings)
    assert s["honest"].mismatches == 0 and s["honest"].inflation == 0.0
    assert s["liar"].mismatches == 5 and s["liar"].inflation > 0.5
