"""The metrics of chapter 50 (qwen_anatomy.causal.train) against values computed by hand, with the
conventions for empty ratios: no number predicted, all wrong, a single class, no position at all."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from qwen_anatomy.causal.model import CausalOutput
from qwen_anatomy.causal.train import evaluate, normalised_probabilities, position_metrics
from qwen_anatomy.errors import UserInputError

NUM = 2
NAN = float("nan")


def _metrics(labels, pred, compat=None, conf=None, loc_y=None, scale_y=None, values=None, dist="cauchy"):
    n = len(labels)
    t = lambda x, default: torch.tensor(x if x is not None else default, dtype=torch.float32)  # noqa: E731
    return position_metrics(
        torch.tensor(labels),
        torch.tensor(pred),
        torch.tensor(compat if compat is not None else pred),
        t(conf, [0.5] * n),
        t(loc_y, [0.0] * n),
        t(scale_y, [1.0] * n),
        t(values, [0.0] * n),
        NUM,
        dist,
    )


def test_every_metric_equals_the_hand_computed_value():
    # six positions; <NUM> = 2 is the label at 0, 1, 2 and the decision at 0, 1, 3
    m = _metrics(
        labels=[2, 2, 2, 1, 0, 1],
        pred=[2, 2, 0, 2, 0, 1],
        compat=[2, 0, 2, 1, 0, 0],
        conf=[0.85, 0.75, 0.62, 0.56, 0.33, 0.95],
        loc_y=[12.0, 17.0, 0.0, 5.0, 0.0, 0.0],
        scale_y=[1.0, 0.1, 1.0, 1.0, 1.0, 1.0],
        values=[10.0, 20.0, 30.0, 0.0, 0.0, 0.0],
    )
    # TP = 2 (positions 0, 1), FP = 1 (3), FN = 1 (2)
    assert m["num_precision"] == pytest.approx(2 / 3) and m["num_recall"] == pytest.approx(2 / 3)
    assert m["num_f1"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)  # positions 0, 1, 4, 5
    assert m["compat_accuracy"] == pytest.approx(4 / 6)  # positions 0, 2, 3, 4
    # errors on the two correct numbers: |12 - 10| = 2, |17 - 20| = 3
    assert m["mae"] == pytest.approx(2.5)
    assert m["median_ae"] == pytest.approx(2.5)  # the mean of the two middle values, not the lower one
    assert m["rmse"] == pytest.approx(math.sqrt((4 + 9) / 2))
    # 95% Cauchy half-width 12.706 scale: |2| <= 12.7 in, |3| > 1.27 out, |0 - 30| > 12.7 out
    assert m["coverage95"] == pytest.approx(1 / 3)
    # bins (0.8, 0.9]: 0.85 right; (0.7, 0.8]: 0.75 right; (0.5, 0.6] and (0.6, 0.7]: 0.56 and 0.62 wrong;
    # (0.3, 0.4]: 0.33 right; (0.9, 1]: 0.95 right. ECE = (0.15 + 0.25 + 0.62 + 0.56 + 0.67 + 0.05) / 6
    assert m["ece"] == pytest.approx((0.15 + 0.25 + 0.62 + 0.56 + 0.67 + 0.05) / 6)
    assert (m["n_positions"], m["n_numbers"], m["n_numbers_predicted"]) == (6, 3, 2)


def test_two_positions_in_one_bin_are_averaged_before_the_gap():
    # both in (0.5, 0.6]: mean confidence 0.55, accuracy 1/2 -> one gap of 0.05, not 0.45 + 0.45
    m = _metrics(labels=[1, 1], pred=[1, 0], conf=[0.52, 0.58])
    assert m["ece"] == pytest.approx(0.05)


def test_normal_coverage_uses_1_96_sigma():
    m = _metrics(labels=[2, 2], pred=[2, 2], loc_y=[0.0, 0.0], values=[1.95, 1.97], dist="normal")
    assert m["coverage95"] == pytest.approx(0.5)


def test_no_number_predicted():
    m = _metrics(labels=[2, 1, 2], pred=[1, 1, 0], loc_y=[5.0, 0.0, 5.0], values=[5.0, 0.0, 100.0])
    assert (m["num_precision"], m["num_recall"], m["num_f1"]) == (0.0, 0.0, 0.0)
    assert m["n_numbers_predicted"] == 0
    assert all(math.isnan(m[k]) for k in ("mae", "median_ae", "rmse"))  # undefined, not 0
    assert m["coverage95"] == pytest.approx(0.5)  # defined: the targets exist
    assert m["accuracy"] == pytest.approx(1 / 3)


def test_all_wrong():
    m = _metrics(labels=[2, 1, 1], pred=[1, 2, 2], conf=[0.9, 0.9, 0.9])
    assert (m["num_precision"], m["num_recall"], m["num_f1"], m["accuracy"]) == (0.0, 0.0, 0.0, 0.0)
    assert math.isnan(m["mae"]) and m["ece"] == pytest.approx(0.9)


def test_a_single_class():
    # every label and every decision is <NUM>
    m = _metrics(
        labels=[2, 2, 2], pred=[2, 2, 2], conf=[1.0, 1.0, 1.0], loc_y=[1.0, 2.0, 4.0], values=[1.0, 2.0, 3.0]
    )
    assert (m["num_precision"], m["num_recall"], m["num_f1"], m["accuracy"]) == (1.0, 1.0, 1.0, 1.0)
    assert m["ece"] == 0.0 and m["mae"] == pytest.approx(1 / 3) and m["median_ae"] == 0.0
    # a single class that is not <NUM>, never predicted as one: nothing to find, nothing claimed
    m = _metrics(labels=[1, 1], pred=[1, 1])
    assert (m["num_precision"], m["num_recall"], m["num_f1"]) == (1.0, 1.0, 1.0)
    assert math.isnan(m["coverage95"]) and m["n_numbers"] == 0 and math.isnan(m["mae"])
    # the same set with one false alarm: precision 0, F1 0
    m = _metrics(labels=[1, 1], pred=[1, 2])
    assert (m["num_precision"], m["num_recall"], m["num_f1"]) == (0.0, 0.0, 0.0)


def test_no_position_is_a_clear_error():
    with pytest.raises(UserInputError, match="no position with a next token"):
        _metrics(labels=[], pred=[])
    with pytest.raises(UserInputError, match="evaluation set is empty"):
        evaluate(None, None, [])


def test_normalised_probabilities_keep_the_ranking_where_every_p_rounds_to_zero():
    margin = torch.tensor([[[-1e9, -2e9, -4e9]]])  # float32 P_k = 1/2 + arctan(t)/pi rounds to 0
    probs = 0.5 + torch.atan(margin) / math.pi
    out = CausalOutput(None, None, None, margin, None, probs, None, None, "cauchy", margin)
    assert float(probs.sum()) == 0.0
    p = normalised_probabilities(out)
    # P_k ~ 1/(pi |t_k|): proportional to 1, 1/2, 1/4
    torch.testing.assert_close(p[0, 0], torch.tensor([4 / 7, 2 / 7, 1 / 7]), rtol=1e-5, atol=0)
    soft = torch.tensor([[[0.2, 0.3, 0.5]]])
    out = CausalOutput(None, None, None, soft, None, soft, None, None, "normal")
    assert torch.equal(normalised_probabilities(out), soft)


class _StubModel(torch.nn.Module):
    """Fixed outputs at every position, to check evaluate's bookkeeping (next-token shift, padding)."""

    num_token_id = NUM
    num_class = NUM  # every token id is a class (no restricted vocabulary)

    def __init__(self, out):
        super().__init__()
        self.out = out
        self.backbone = SimpleNamespace(device=torch.device("cpu"))

    def forward(self, input_ids, numerical_values=None, attention_mask=None):
        return self.out

    def class_targets(self, input_ids, attention_mask=None):
        return input_ids


def test_evaluate_reads_the_next_token_and_skips_padding():
    # two texts; ids (V = 4, <NUM> = 2): [0, 2, 1] and [3, 2, pad]; the valid positions are (0, 0) ->
    # label 2 (value 7), (0, 1) -> label 1, (1, 0) -> label 2 (value 9); (1, 1) is before padding
    batch = {
        "input_ids": torch.tensor([[0, 2, 1], [3, 2, 0]]),
        "numerical_values": torch.tensor([[0.0, 7.0, 0.0], [0.0, 9.0, 0.0]]),
        "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]),
    }
    numtok = SimpleNamespace(batch=lambda texts, max_length: batch)
    probs = torch.tensor(
        [
            [[0.1, 0.05, 0.75, 0.1], [0.1, 0.55, 0.25, 0.1], [0.25] * 4],
            [[0.1, 0.45, 0.35, 0.1], [0.1, 0.1, 0.7, 0.1], [0.25] * 4],
        ]
    )
    loc_y = torch.tensor([[8.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    out = CausalOutput(None, None, None, probs.log(), None, probs, loc_y, torch.ones(2, 3), "normal")
    m = evaluate(_StubModel(out), numtok, ["a", "b"], batch_size=2)
    # decisions 2, 1, 1 against labels 2, 1, 2: TP 1, FN 1, FP 0
    assert m["accuracy"] == pytest.approx(2 / 3) and m["n_positions"] == 3
    assert (m["num_precision"], m["num_recall"]) == (1.0, 0.5) and m["num_f1"] == pytest.approx(2 / 3)
    assert m["mae"] == pytest.approx(1.0)  # |8 - 7| on the one correct number
    assert m["coverage95"] == pytest.approx(0.5)  # |8 - 7| <= 1.96 in; |0 - 9| out
    # confidences 0.75 (right), 0.55 (right), 0.45 (wrong): bins (0.7, 0.8], (0.5, 0.6], (0.4, 0.5]
    assert m["ece"] == pytest.approx((0.25 + 0.45 + 0.45) / 3)


def test_the_command_line_prints_an_undefined_metric_as_such():
    from qwen_anatomy.commands.causal import _metric

    assert _metric(NAN, ".3g") == "undefined" and _metric(2.5, ".3g") == "2.5"
