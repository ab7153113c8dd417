"""Activation sparsity and class selectivity: analytic cases, numpy reference, dask."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from test_measures_common import BACKENDS, is_lazy, no_compute, to_backend

from ndt_store._dims import CLASS, FEATURE, LABEL, SAMPLE, STEP
from ndt_store._kernels import activations as ka
from ndt_store.errors import InputError
from ndt_store.measures.activations import activation_selectivity, activation_sparsity


def activations(seed: int = 0, labels=(0, 1, 2, 1, 0, 2, 2, 1)) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    a = np.maximum(rng.normal(size=(3, len(labels), 5)), 0.0)
    return xr.DataArray(
        a,
        dims=(STEP, SAMPLE, FEATURE),
        coords={STEP: [0, 5, 10], LABEL: (SAMPLE, np.asarray(labels))},
    )


def ref_class_means(a: np.ndarray, labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Loop over classes in plain numpy: (step, feature, class), NaN for an empty class."""
    out = np.full((*a.shape[:1], a.shape[2], len(classes)), np.nan)
    for j, c in enumerate(classes):
        if np.any(labels == c):
            out[..., j] = a[:, labels == c].mean(axis=1)
    return out


def ref_index(means: np.ndarray) -> np.ndarray:
    hi = means.max(-1)
    rest = (means.sum(-1) - hi) / (means.shape[-1] - 1)
    with np.errstate(all="ignore"):
        return np.where(hi == rest, 0.0, (hi - rest) / (hi + rest))


# --- sparsity -----------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_sparsity_analytic_and_keeps_step(backend: str) -> None:
    a = np.zeros((2, 2, 4))
    a[0] = [[0.0, 0.1, -0.1, 0.2], [-5.0, 0.05, 1.0, 0.0]]  # 0.1 itself counts as sparse
    a[1] = 1.0
    act = to_backend(xr.DataArray(a, dims=(STEP, SAMPLE, FEATURE)), backend)
    with no_compute():
        out = activation_sparsity(act)
    assert is_lazy(out) == (backend == "dask")
    assert out.name == "activation_sparsity" and out.dims == (STEP,)
    np.testing.assert_allclose(out.values, [5 / 8, 0.0])
    np.testing.assert_allclose(activation_sparsity(act, threshold=2.0).values, [7 / 8, 1.0])
    per_unit = activation_sparsity(act, dims=SAMPLE)
    assert per_unit.dims == (STEP, FEATURE)


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2), elements=st.floats(-2, 2)),
    st.floats(0, 2),
)
def test_sparsity_property_matches_legacy_formula(a: np.ndarray, threshold: float) -> None:
    out = activation_sparsity(xr.DataArray(a, dims=(SAMPLE, FEATURE)), threshold=threshold)
    assert float(out) == pytest.approx(1.0 - float(np.mean(np.abs(a) > threshold)), abs=1e-12)


# --- selectivity --------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_selectivity_matches_loop_reference(backend: str) -> None:
    act = activations()
    with no_compute():
        ds = activation_selectivity(to_backend(act, backend))
    assert is_lazy(ds[["class_mean", "selectivity_index"]]) == (backend == "dask")
    assert ds["class_mean"].dims == (STEP, FEATURE, CLASS)
    assert ds["selectivity_index"].dims == (STEP, FEATURE)
    assert ds[CLASS].values.tolist() == [0, 1, 2]
    assert ds["class_count"].values.tolist() == [2, 3, 3]
    labels = act[LABEL].values
    means = ref_class_means(act.values, labels, np.array([0, 1, 2]))
    np.testing.assert_allclose(ds["class_mean"].values, means, rtol=1e-12)
    np.testing.assert_allclose(ds["selectivity_index"].values, ref_index(means), rtol=1e-12)


def test_selectivity_analytic_index() -> None:
    # unit 0 fires only for class 1, unit 1 equally for all, unit 2 dead, unit 3 (3, 1, 1)
    a = np.array([[0.0, 2.0, 0.0, 3.0], [4.0, 2.0, 0.0, 1.0], [0.0, 2.0, 0.0, 1.0]])
    act = xr.DataArray(a, dims=(SAMPLE, FEATURE), coords={LABEL: (SAMPLE, [0, 1, 2])})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = activation_selectivity(act)
    np.testing.assert_allclose(ds["selectivity_index"].values, [1.0, 0.0, 0.0, 0.5])


def test_selectivity_classes_option_and_fill() -> None:
    act = activations(labels=(0, 0, 3, 3, 3, 0, 3, 3))
    ds = activation_selectivity(act, classes=[0, 1, 2, 3])
    assert ds["class_count"].values.tolist() == [3, 0, 0, 5]
    assert np.isnan(ds["class_mean"].sel({CLASS: [1, 2]})).all()
    means = ref_class_means(act.values, act[LABEL].values, np.array([0, 3]))
    np.testing.assert_allclose(ds["selectivity_index"].values, ref_index(means), rtol=1e-12)
    filled = activation_selectivity(act, classes=[0, 1, 2, 3], fill_empty=0.0)
    assert (filled["class_mean"].sel({CLASS: [1, 2]}) == 0.0).all()


def test_selectivity_with_lazy_label_coordinate_reads_only_labels() -> None:
    act = activations().chunk({SAMPLE: 4})  # chunk() makes the label coordinate lazy too
    ds = activation_selectivity(act)
    assert is_lazy(ds[["class_mean", "selectivity_index"]])
    expected = activation_selectivity(activations())
    xr.testing.assert_allclose(ds.compute(), expected)


def test_selectivity_single_class_and_errors() -> None:
    act = activations(labels=(4,) * 8)
    assert np.isnan(activation_selectivity(act)["selectivity_index"]).all()
    with pytest.raises(InputError, match="coordinate 'label'"):
        activation_selectivity(act.drop_vars(LABEL))


def test_selectivity_chunk_invariant_and_float32() -> None:
    act = activations(seed=1).astype(np.float32)
    expected = activation_selectivity(act)
    assert expected["class_mean"].dtype == np.float32
    for chunks in ({SAMPLE: 3}, {STEP: 1, FEATURE: 2}):
        got = activation_selectivity(act.chunk(chunks)).compute()
        xr.testing.assert_allclose(got, expected, rtol=1e-5)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(2, 12).flatmap(
        lambda n: st.tuples(
            hnp.arrays(np.float64, (n, 3), elements=st.floats(0, 10)),
            hnp.arrays(np.int64, n, elements=st.integers(0, 3)),
        )
    )
)
def test_selectivity_property(data: tuple[np.ndarray, np.ndarray]) -> None:
    a, labels = data
    act = xr.DataArray(a, dims=(SAMPLE, FEATURE), coords={LABEL: (SAMPLE, labels)})
    ds = activation_selectivity(act)
    classes = np.unique(labels)
    means = ref_class_means(a[None], labels, classes)[0]
    np.testing.assert_allclose(ds["class_mean"].values, means, rtol=1e-9, atol=1e-12)
    if len(classes) >= 2:
        np.testing.assert_allclose(ds["selectivity_index"].values, ref_index(means), atol=1e-9)
        assert np.all(np.abs(ds["selectivity_index"].values) <= 1.0 + 1e-12)


def test_kernel_one_hot_ignores_unknown_labels() -> None:
    assert ka.one_hot(np.array([5, 1]), np.array([0, 1])).tolist() == [[0.0, 0.0], [0.0, 1.0]]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("per_token", [False, True])
def test_selectivity_tokens_as_samples(backend: str, per_token: bool) -> None:
    rng = np.random.default_rng(11)
    steps, seqs, positions, feats = 2, 5, 7, 3
    values = np.abs(rng.normal(size=(steps, seqs, positions, feats)))
    if per_token:  # e.g. next-token targets
        labels = rng.integers(0, 3, size=(seqs, positions))
        coord = ((SAMPLE, "position"), labels)
    else:  # one label per sequence, repeated over its positions
        labels = np.repeat(rng.integers(0, 3, size=(seqs, 1)), positions, axis=1)
        coord = (SAMPLE, labels[:, 0])
    act = xr.DataArray(
        values, dims=(STEP, SAMPLE, "position", FEATURE), coords={LABEL: coord, STEP: [0, 9]}
    )
    lazy = to_backend(act, backend)
    with no_compute():
        out = activation_selectivity(lazy, samples=(SAMPLE, "position"))
    assert is_lazy(out["class_mean"]) == (backend == "dask")
    tokens = values.reshape(steps, seqs * positions, feats)
    flat = labels.reshape(-1)
    classes = np.unique(flat)
    expected = np.stack([tokens[:, flat == c].mean(axis=1) for c in classes], axis=-1)
    np.testing.assert_allclose(out["class_mean"].values, expected, rtol=1e-12)
    np.testing.assert_array_equal(out["class_count"].values, [(flat == c).sum() for c in classes])
    mu_max = expected.max(-1)
    mu_rest = (expected.sum(-1) - mu_max) / (len(classes) - 1)
    np.testing.assert_allclose(
        out["selectivity_index"].values, (mu_max - mu_rest) / (mu_max + mu_rest), rtol=1e-12
    )
    assert out["selectivity_index"].dims == (STEP, FEATURE)


def test_selectivity_tokens_needs_label_on_sample_dims() -> None:
    act = xr.DataArray(np.ones((2, 3, 4)), dims=(SAMPLE, "position", FEATURE))
    with pytest.raises(InputError, match="coordinate 'label' on some of the sample dims"):
        activation_selectivity(act, samples=(SAMPLE, "position"))
