"""The evidence rule (lmtut.book): an ordering holds in every seed, beyond the spread,
on enough seeds."""

import pytest

from lmtut.book import NO_DIFFERENCE, compare


def test_an_ordering_in_every_seed_beyond_the_spread_holds():
    # chapter 4's short runs
    c = compare([896, 908, 877], [975, 1131, 1071], "tied", "untied")
    assert c.holds and c.lower == "tied" and c.verdict == "tied lower than untied"
    # float64 means of integers: a rounding or two, under approx's 1e-6
    assert c.mean_difference == pytest.approx((896 + 908 + 877 - 975 - 1131 - 1071) / 3)
    assert c.spread == 1131 - 975 and c.range_difference == (908 - 1131, 896 - 975)
    assert c.sd_difference > 0 and c.relative == pytest.approx(
        c.mean_difference / ((975 + 1131 + 1071) / 3)
    )
    assert "tied lower than untied" in str(c) and "3 seeds" in str(c)
    # either order
    assert compare([975, 1131, 1071], [896, 908, 877], "untied", "tied").lower == "tied"


def test_a_seed_that_disagrees_means_no_measurable_difference():
    c = compare([100, 101, 104], [103, 104, 103])
    assert (
        not c.every_seed
        and not c.holds
        and c.lower is None
        and c.verdict == NO_DIFFERENCE
    )
    assert "not every seed agrees" in c.why()


def test_a_difference_within_the_spread_between_seeds_is_not_an_ordering():
    # A lower in every seed, by 5, but the seeds span 20
    c = compare([100, 110, 120], [105, 115, 125])
    assert c.every_seed and not c.exceeds_spread and c.verdict == NO_DIFFERENCE
    assert "within the spread" in c.why()


def test_an_effect_under_two_per_cent_needs_five_seeds():
    # 1 % lower in every seed, beyond the spread
    three = compare([99.0, 99.1, 99.2], [100.0, 100.1, 100.2])
    assert (
        three.every_seed
        and three.exceeds_spread
        and not three.enough_seeds
        and not three.holds
    )
    assert "fewer than 5 seeds" in three.why()
    five = compare(
        [99.0, 99.1, 99.2, 99.05, 99.15], [100.0, 100.1, 100.2, 100.05, 100.15]
    )
    assert five.holds and five.lower == "A"
    two = compare([50, 51], [90, 91])  # a large effect still needs three seeds
    assert not two.holds and "fewer than 3 seeds" in two.why()


def test_bad_input_says_what_is_wrong():
    with pytest.raises(ValueError, match="one result per seed"):
        compare([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="finite"):
        compare([1, float("nan"), 3], [1, 2, 3])
