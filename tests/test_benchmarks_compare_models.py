"""benchmarks/compare_models.py: the CAS budget that --time-limit-min leaves, and the lesion-stratified thinning."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
compare_models = pytest.importorskip("compare_models")


@pytest.mark.parametrize("seconds_left, requested, expected", [
    (10_000, 200, 200),  # plenty of time: the steps asked for
    (90 + 9 * 100 * 0.5, 200, 100),  # 9 classifiers at 0.5 s/step after 90 s of loading: 100 steps each
    (0, 200, compare_models.MIN_CAS_STEPS),  # out of time: never below the floor
    (0, 6, 6),  # nor raised to it when fewer were asked for
])
def test_cas_steps_fit_the_time_left(seconds_left, requested, expected):
    assert compare_models.cas_steps_within(seconds_left, 9, 0.5, requested) == expected


def test_thinning_keeps_whole_lesions_and_both_classes():
    from skinaug.data.scan import Sample

    samples = [Sample(Path(f"{i}.jpg"), f"img{i}", i % 2, f"lesion{i // 2}") for i in range(40)]
    kept = compare_models.thin(samples, 10, seed=0)
    lesions = {s.group for s in kept}
    assert 6 <= len(kept) <= 14
    assert {s.label for s in kept} == {0, 1}
    assert all(sum(s.group == lesion for s in kept) == 2 for lesion in lesions)  # a lesion's images stay together
