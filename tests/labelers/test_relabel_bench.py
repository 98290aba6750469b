"""The scene benchmark's own pieces: the sweep grid, the head's concatenated features, ours' CLI arguments."""
import numpy as np
import pytest
import typer

from benchmarks.bench_relabel import TARGET_RECALL, corner_windows, head_features, parse_sweep
from benchmarks.bench_relabel_configs import OURS


def test_sweep_grid_parses_pairs_and_names_a_malformed_one():
    assert parse_sweep("0.6:off, 0.7:0.8") == [(0.6, None), (0.7, 0.8)]
    assert parse_sweep("") == []
    with pytest.raises(typer.BadParameter, match="'0.7-0.8'"):
        parse_sweep("0.6:off,0.7-0.8")


def test_concat_features_are_the_whole_mean_then_the_four_2x2_windows_by_hand():
    maps = np.arange(2 * 1 * 3 * 3, dtype=np.float32).reshape(2, 1, 3, 3)  # one channel, cells 0..8 (+9)
    features = head_features(maps, "concat")
    # image 0: whole mean 4; windows (0,1,3,4) 2, (1,2,4,5) 3, (3,4,6,7) 5, (4,5,7,8) 6
    assert features[0].tolist() == [4.0, 2.0, 3.0, 5.0, 6.0]
    assert head_features(maps, "whole")[:, 0].tolist() == [4.0, 13.0]
    with pytest.raises(ValueError, match="unknown head features 'crops'"):
        head_features(maps, "crops")


def test_corner_windows_are_two_thirds_of_any_map_by_hand():
    maps = np.arange(2 * 1 * 7 * 7, dtype=np.float32).reshape(2, 1, 7, 7)  # cells 0..48: value = 7 y + x
    regions = corner_windows(maps)
    # 5x5 windows at (0,0), (0,2), (2,0), (2,2): their means are the centre cells 16, 18, 30, 32
    assert regions[0][:, 0].tolist() == [24.0, 16.0, 18.0, 30.0, 32.0]
    small = corner_windows(np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3))  # 2x2 windows on a 3x3 map
    assert small[0][:, 0].tolist() == [4.0, 2.0, 3.0, 5.0, 6.0]


def test_the_configs_bench_runs_ours_with_the_benchmark_settings():
    assert OURS[OURS.index("--label") + 1] == "learned" and "--keep-original" not in OURS
    assert ("--target-recall" in OURS) == (TARGET_RECALL is not None)
