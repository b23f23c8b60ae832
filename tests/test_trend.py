"""Mann-Kendall trend test on rising, flat, falling, noisy and degenerate series."""

import math
import random

import pytest

from ops.trend import FALLING, FLAT, RISING, TOO_SHORT, mann_kendall


def test_monotone_rising_is_rising_with_small_p():
    t = mann_kendall([0.1 * i for i in range(20)])
    assert t.direction == RISING
    assert t.p_value < 1e-6
    assert t.slope == pytest.approx(0.1)


def test_monotone_falling():
    t = mann_kendall([5 - i for i in range(10)])
    assert t.direction == FALLING and t.slope == pytest.approx(-1.0)


def test_constant_series_is_flat_with_p_one():
    t = mann_kendall([0.5] * 12)
    assert t.direction == FLAT
    assert t.p_value == pytest.approx(1.0)
    assert t.slope == 0.0


def test_noisy_rising_reward_is_detected():
    rng = random.Random(0)
    ys = [0.3 + 0.01 * i + rng.gauss(0, 0.05) for i in range(60)]
    t = mann_kendall(ys)
    assert t.direction == RISING and t.p_value < 0.01
    assert 0.005 < t.slope < 0.015


def test_pure_noise_is_flat():
    rng = random.Random(1)
    flats = sum(mann_kendall([rng.gauss(0, 1) for _ in range(40)]).direction == FLAT for _ in range(50))
    assert flats >= 45          # alpha = 0.05: about 2-3 false positives in 50 expected


def test_two_points_are_not_a_trend():
    t = mann_kendall([0.1, 0.9])
    assert t.direction == TOO_SHORT and t.p_value is None
    assert "too short" in t.describe()


def test_nan_and_none_are_dropped_and_xs_order_the_series():
    t = mann_kendall([3.0, None, 1.0, float("nan"), 2.0, 4.0, 5.0], xs=[3, 9, 1, 8, 2, 4, 5])
    assert t.n == 5 and t.direction == RISING


def test_known_p_value_matches_textbook():
    # n=10 strictly rising: S=45, var=125, z=(45-1)/sqrt(125)=3.9355, p=8.3e-5
    t = mann_kendall(list(range(10)))
    assert t.s == 45
    assert t.z == pytest.approx(44 / math.sqrt(125))
    assert t.p_value == pytest.approx(math.erfc(t.z / math.sqrt(2)))


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="xs has 2 points"):
        mann_kendall([1, 2, 3], xs=[1, 2])
