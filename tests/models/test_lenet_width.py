"""LeNet-300-100's width option, used for small-dense comparisons."""

import pytest

from sparsebench import models


@pytest.mark.parametrize("width, expected", [
    (300, 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10),   # the original 266,610
    (90, 784 * 90 + 90 + 90 * 30 + 30 + 30 * 10 + 10),
])
def test_lenet300_width_parameter_count(width, expected):
    model = models.create("lenet300", width=width)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_lenet300_width_must_be_positive():
    with pytest.raises(ValueError, match="width"):
        models.create("lenet300", width=0)
