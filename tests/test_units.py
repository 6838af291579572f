import pytest

from farsync.units import parse_bandwidth, parse_duration, parse_flops


@pytest.mark.parametrize(
    "text,bps", [("1Gbps", 1e9), ("100Mbps", 1e8), ("10 Gbit/s", 1e10), ("125MB/s", 1e9), ("2.5e3kbps", 2.5e6), (5e8, 5e8)]
)
def test_bandwidth(text, bps):
    assert parse_bandwidth(text) == pytest.approx(bps)


@pytest.mark.parametrize("bad", ["1 Gbpx", "fast", "", "-1Gbps", "0Mbps", "1G"])
def test_bad_bandwidth(bad):
    with pytest.raises(ValueError, match="bandwidth"):
        parse_bandwidth(bad)


def test_duration_and_flops():
    assert parse_duration("10ms") == pytest.approx(0.01)
    assert parse_duration("50us") == pytest.approx(5e-5)
    assert parse_duration("2") == 2.0
    assert parse_flops("100TFLOPS") == pytest.approx(1e14)
    with pytest.raises(ValueError, match="duration"):
        parse_duration("10 parsecs")
    with pytest.raises(ValueError, match="FLOP"):
        parse_flops("12 GHz")
