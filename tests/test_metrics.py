"""metrics.merge_metrics: one merge of micro-batch metrics into step metrics, by kind."""

from __future__ import annotations

import math

import pytest

from tao_lab.metrics import merge_metrics, metric_kind


def test_counts_are_summed_not_averaged():
    m = merge_metrics([{"loss/tokens": 10.0, "shaping/gated_tokens": 3.0, "shaping/sign_flips": 1.0},
                       {"loss/tokens": 30.0, "shaping/gated_tokens": 0.0, "shaping/sign_flips": 2.0}])
    assert (m["loss/tokens"], m["shaping/gated_tokens"], m["shaping/sign_flips"]) == (40.0, 3.0, 3.0)


def test_extremes_are_reduced_to_the_extreme_of_the_parts():
    m = merge_metrics([{"loss/ratio_max": 1.5, "shaping/ratio_gated_min": 0.9, "loss/tokens": 1.0},
                       {"loss/ratio_max": 1.1, "shaping/ratio_gated_min": 0.7, "loss/tokens": 100.0}])
    assert m["loss/ratio_max"] == 1.5 and m["shaping/ratio_gated_min"] == 0.7


def test_a_mean_is_weighted_by_the_tokens_that_entered_it_and_nan_parts_are_left_out():
    parts = [{"shaping/entropy_gated_mean": 2.0, "shaping/gated_tokens": 1.0, "shaping/tokens": 10.0},
             {"shaping/entropy_gated_mean": 5.0, "shaping/gated_tokens": 3.0, "shaping/tokens": 4.0},
             {"shaping/entropy_gated_mean": math.nan, "shaping/gated_tokens": 0.0, "shaping/tokens": 50.0}]
    assert merge_metrics(parts)["shaping/entropy_gated_mean"] == pytest.approx((2 * 1 + 5 * 3) / 4)


def test_loss_means_are_weighted_by_loss_tokens():
    m = merge_metrics([{"loss/clip_high": 0.5, "loss/tokens": 2.0}, {"loss/clip_high": 0.0, "loss/tokens": 6.0}])
    assert m["loss/clip_high"] == pytest.approx(0.125)


def test_a_mean_with_no_part_that_has_tokens_is_nan():
    m = merge_metrics([{"shaping/ratio_gated_mean": math.nan, "shaping/ratio_gated_n": 0.0}])
    assert math.isnan(m["shaping/ratio_gated_mean"]) and m["shaping/ratio_gated_n"] == 0.0


def test_every_metric_has_exactly_one_declared_kind():
    assert [metric_kind(k) for k in ("loss/tokens", "loss/ratio_max", "adv/min", "loss/ratio_mean")] == \
        ["sum", "max", "min", "mean"]
