"""retrain.tta in the experiment YAML: the number of test-time views of retrain's test evaluation (1 = off)."""

from __future__ import annotations

import pytest

from trainables.errors import UserError


def test_retrain_tta_defaults_off_and_takes_one_to_eight(make_experiment):
    assert make_experiment("plain").retrain.tta == 1
    assert make_experiment("tta", retrain={"seeds": 2, "tta": 8}).retrain.tta == 8


@pytest.mark.parametrize("value", [0, 9, "many"])
def test_bad_retrain_tta_is_one_line_naming_the_key(make_experiment, value):
    with pytest.raises(UserError) as error:
        make_experiment("bad", retrain={"seeds": 2, "tta": value})
    message = str(error.value)
    assert "retrain.tta" in message and "\n" not in message
