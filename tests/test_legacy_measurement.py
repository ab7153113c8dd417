"""The legacy MeasurementTools facade on numpy, torch and DataArray inputs."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
import xarray as xr

from ndt_store._dims import FEATURE, HEAD, KEY, LABEL, QUERY, SAMPLE
from ndt_store.legacy.measurement import MeasurementTools as MT

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(scale=2.0, size=(3, 4, 5, 6))
PROBS = np.exp(LOGITS) / np.exp(LOGITS).sum(-1, keepdims=True)
ACT = np.maximum(RNG.normal(size=(10, 4)), 0.0)
LABELS = np.array([0, 2, 2, 0, 3, 0, 2, 3, 3, 0])  # class 1 has no sample


def ref_entropy(p: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(-1)


def study_attention_entropy(x: np.ndarray) -> float:
    """The study's numpy path: softmax of the input, then entropy with log(p + 1e-10)."""
    e = np.exp(x - x.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True)
    return float(np.mean(-np.sum(p * np.log(p + 1e-10), axis=-1)))


def numpy_reference() -> dict[str, object]:
    head = ref_entropy(PROBS).mean(axis=(0, 2))
    b, a = PROBS.ravel(), (PROBS + 0.1 * LOGITS).ravel()
    d = a - b
    means = np.zeros((4, 4))
    for c in (0, 2, 3):
        means[:, c] = ACT[LABELS == c].mean(0)
    return {
        "entropy": ref_entropy(PROBS).mean(),
        "spec": {
            "mean_entropy": head.mean(),
            "min_entropy": head.min(),
            "max_entropy": head.max(),
            "entropy_std": head.std(),
            "specialization_index": head.max() - head.min(),
        },
        "change": {
            "l2_norm": np.linalg.norm(d),
            "relative_change": np.linalg.norm(d) / np.linalg.norm(b),
            "max_change": np.abs(d).max(),
            "mean_change": np.abs(d).mean(),
            "cosine_similarity": b @ a / np.linalg.norm(a) / np.linalg.norm(b),
        },
        "sparsity": 1.0 - np.mean(np.abs(ACT) > 0.3),
        "selectivity": means,
    }


def check_all(convert) -> None:
    ref = numpy_reference()
    ent = MT.attention_entropy(convert(PROBS))
    assert isinstance(ent, float) and ent == pytest.approx(ref["entropy"], rel=1e-12)
    spec = MT.attention_specialization(convert(PROBS))
    assert list(spec) == list(ref["spec"])
    for key, value in ref["spec"].items():
        assert isinstance(spec[key], float) and spec[key] == pytest.approx(value, rel=1e-12)
    change = MT.weight_change_magnitude(convert(PROBS), convert(PROBS + 0.1 * LOGITS))
    assert list(change) == list(ref["change"])
    for key, value in ref["change"].items():
        assert change[key] == pytest.approx(value, rel=1e-12), key
    cos = MT.cosine_similarity(convert(PROBS), convert(PROBS + 0.1 * LOGITS))
    assert cos == pytest.approx(ref["change"]["cosine_similarity"], rel=1e-12)
    assert MT.activation_sparsity(convert(ACT), threshold=0.3) == pytest.approx(ref["sparsity"])
    sel = MT.activation_selectivity(convert(ACT), convert(LABELS))
    assert isinstance(sel, np.ndarray) and sel.shape == (4, 4)
    np.testing.assert_allclose(sel, ref["selectivity"], rtol=1e-12)


def test_numpy_inputs() -> None:
    check_all(np.asarray)


def test_list_inputs_and_zero_norm() -> None:
    assert MT.cosine_similarity([0.0, 0.0], [1.0, 2.0]) == 0.0
    assert MT.cosine_similarity([[1.0, 0.0]], [[0.0, 1.0]]) == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        change = MT.weight_change_magnitude(np.zeros(3), np.ones(3))
        unchanged = MT.weight_change_magnitude(np.zeros(3), np.zeros(3))
    assert change["relative_change"] == math.inf and unchanged["relative_change"] == 0.0


def test_torch_inputs() -> None:
    torch = pytest.importorskip("torch")

    def to_tensor(x: np.ndarray):
        return torch.tensor(x, requires_grad=x.dtype.kind == "f")

    check_all(to_tensor)
    assert isinstance(MT.attention_entropy(torch.tensor(PROBS, dtype=torch.float32)), float)


def test_dataarray_inputs_use_their_dims() -> None:
    attn = xr.DataArray(PROBS.transpose(3, 0, 1, 2), dims=(KEY, SAMPLE, HEAD, QUERY))
    assert MT.attention_entropy(attn) == pytest.approx(numpy_reference()["entropy"], rel=1e-12)
    act = xr.DataArray(ACT, dims=(SAMPLE, FEATURE))
    sel = MT.activation_selectivity(act, LABELS)
    np.testing.assert_allclose(sel, numpy_reference()["selectivity"], rtol=1e-12)
    assert LABEL not in act.coords  # the caller's array is not modified


def test_probabilities_not_softmaxed_unlike_the_study() -> None:
    one_hot = np.zeros((1, 1, 4, 4))
    one_hot[..., np.arange(4), np.arange(4)] = 1.0
    assert MT.attention_entropy(one_hot) == 0.0
    # the study's behaviour, available on request for pre-softmax scores
    assert MT.attention_entropy(LOGITS, from_logits=True) == pytest.approx(
        study_attention_entropy(LOGITS), abs=1e-8
    )
    assert study_attention_entropy(one_hot) > 0.7 * math.log(4)  # why it was changed
    spec = MT.attention_specialization(LOGITS, from_logits=True)
    assert spec["mean_entropy"] == pytest.approx(study_attention_entropy(LOGITS), abs=1e-8)


def test_works_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from ndt_store.legacy.measurement import MeasurementTools as MT\n"
        "p = np.full((1, 2, 3, 4), 0.25)\n"
        "assert abs(MT.attention_entropy(p) - np.log(4)) < 1e-12\n"
        "assert MT.activation_selectivity(np.ones((2, 1)), [0, 1]).shape == (1, 2)\n"
        "assert 'torch' not in {m.split('.')[0] for m in sys.modules if sys.modules[m]}\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
