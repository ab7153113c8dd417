"""Debiased (unbiased-HSIC) CKA, its permutation null and bootstrap interval, tokens as samples.

The reference is the unbiased HSIC estimator written from Song et al. (2012),
"Feature selection via dependence maximization", JMLR 13, eq. (5), with plain
loops-free numpy on the raw (uncentered) Gram matrices:

    HSIC_1 = 1/(n(n-3)) [ tr(K̃L̃) + 1ᵀK̃1 1ᵀL̃1 / ((n-1)(n-2)) - 2/(n-2) 1ᵀK̃L̃1 ]

with K̃, L̃ the Gram matrices whose diagonals are set to 0.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy import stats
from test_measures_common import BACKENDS, is_lazy, no_compute, to_backend

from ndt_store._dims import FEATURE, LAYER, SAMPLE, STEP
from ndt_store._kernels import similarity as ks
from ndt_store.errors import InputError
from ndt_store.measures.similarity import DEBIASED_BELOW, cka_test, linear_cka


def song_hsic(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741 - the paper's names
    n = k.shape[0]
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    one = np.ones(n)
    return float(
        (
            np.trace(kt @ lt)
            + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * (one @ kt @ lt @ one)
        )
        / (n * (n - 3))
    )


def ref_debiased_cka(x: np.ndarray, y: np.ndarray) -> float:
    k, l = x @ x.T, y @ y.T  # noqa: E741
    return song_hsic(k, l) / np.sqrt(song_hsic(k, k) * song_hsic(l, l))


@pytest.mark.parametrize(("n", "p", "q"), [(40, 5, 7), (8, 30, 20), (6, 3, 2)])
def test_kernel_matches_song_reference_both_paths(n: int, p: int, q: int) -> None:
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, p)) + 2.0  # uncentered: the estimator is translation invariant
    y = x[:, :1] * rng.normal(size=(1, q)) + rng.normal(size=(n, q)) - 1.0
    got = float(ks.linear_cka(x, y, debiased=True))
    assert got == pytest.approx(ref_debiased_cka(x, y), rel=1e-9, abs=1e-12)


def test_independent_representations_mean_zero_while_biased_is_not() -> None:
    rng = np.random.default_rng(0)
    n, p, q, draws = 32, 64, 48, 200
    x = rng.normal(size=(draws, n, p))
    y = rng.normal(size=(draws, n, q))
    debiased = ks.linear_cka(x, y, debiased=True)
    biased = ks.linear_cka(x, y)
    assert abs(debiased.mean()) < 0.02
    assert biased.mean() > 0.5  # the biased estimator reads high at n = 32
    assert biased.min() > 0.3
    spot = [ref_debiased_cka(x[i], y[i]) for i in range(3)]
    np.testing.assert_allclose(debiased[:3], spot, rtol=1e-9)


def test_permutation_pvalues_uniform_under_the_null() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 20, 6))  # 300 independent null tests, batched
    y = rng.normal(size=(300, 20, 5))
    _, pvalues = ks.cka_permutation_test(x, y, debiased=True, permutations=199, seed=2)
    assert pvalues.min() >= 1 / 200 and pvalues.max() <= 1.0
    # discrete p-values on the grid k/200: compare with a uniform, KS distance
    assert stats.kstest(pvalues, "uniform").statistic < 0.08
    assert 0.02 <= np.mean(pvalues <= 0.05) <= 0.09  # the level holds
    _, biased_p = ks.cka_permutation_test(x, y, permutations=199, seed=2)
    assert stats.kstest(biased_p, "uniform").statistic < 0.08  # valid for either estimator


def test_permutation_detects_a_relation_and_batches_over_layer_and_steps() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, 24, 8))
    y = x @ rng.normal(size=(8, 5)) + 0.5 * rng.normal(size=(2, 3, 24, 5))
    y[1, 2] = rng.normal(size=(24, 5))  # one unrelated (layer, pair)
    cka, p = ks.cka_permutation_test(x, y, debiased=True, permutations=99)
    assert cka.shape == p.shape == (2, 3)
    np.testing.assert_allclose(cka, ks.linear_cka(x, y, debiased=True))
    mask = np.ones((2, 3), bool)
    mask[1, 2] = False
    assert (p[mask] == 0.01).all() and p[1, 2] > 0.05
    single = ks.cka_permutation_test(x[0, 1], y[0, 1], debiased=True, permutations=99)
    assert single[1] == p[0, 1]


def test_bootstrap_interval_not_rebiased_and_covers() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(60, 32, 40))
    y = rng.normal(size=(60, 32, 40))
    boot = ks.cka_bootstrap(x, y, debiased=True, resamples=200, seed=5)
    assert boot.shape == (60, 200)
    # duplicates' self-similarity left out: resamples of unrelated data stay near 0
    assert abs(boot.mean()) < 0.03
    related = x[:, :, :10] @ rng.normal(size=(10, 12)) + rng.normal(size=(60, 32, 12))
    est = ks.linear_cka(x, related, debiased=True)
    boot = ks.cka_bootstrap(x, related, debiased=True, resamples=200, seed=5)
    low, high = np.quantile(boot, [0.025, 0.975], axis=-1)
    assert np.mean((low <= est) & (est <= high)) > 0.9
    assert (high - low).min() > 0


def test_labeled_estimator_choice_and_attrs() -> None:
    rng = np.random.default_rng(6)
    x = xr.DataArray(rng.normal(size=(32, 50)), dims=(SAMPLE, FEATURE))
    y = xr.DataArray(rng.normal(size=(32, 40)), dims=(SAMPLE, FEATURE))
    auto = linear_cka(x, y)
    assert auto.attrs["estimator"] == "debiased"  # few samples
    assert float(auto) == pytest.approx(ref_debiased_cka(x.values, y.values), rel=1e-9)
    biased = linear_cka(x, y, estimator="biased")
    assert biased.attrs["estimator"] == "biased" and float(biased) > 0.4
    big = xr.DataArray(rng.normal(size=(DEBIASED_BELOW, 3)), dims=(SAMPLE, FEATURE))
    assert linear_cka(big, big).attrs["estimator"] == "biased"
    with pytest.raises(InputError, match="estimator must be"):
        linear_cka(x, y, estimator="unbiased")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="at least 4 samples"):
        linear_cka(x[:3], y[:3], estimator="debiased")


def test_tokens_as_samples() -> None:
    rng = np.random.default_rng(7)
    act = xr.DataArray(
        rng.normal(size=(2, 4, 16, 6)), dims=(STEP, SAMPLE, "position", FEATURE),
        coords={STEP: [0, 10]},
    )  # fmt: skip
    x, y = act.sel({STEP: 0}), act.sel({STEP: 10})
    out = linear_cka(x, y, samples=(SAMPLE, "position"))
    tokens = [a.values.reshape(64, 6) for a in (x, y)]
    assert float(out) == pytest.approx(ref_debiased_cka(*tokens), rel=1e-9)
    seq = linear_cka(x, y)  # sequences as samples: position joins the features
    assert float(seq) == pytest.approx(
        ref_debiased_cka(x.values.reshape(4, 96), y.values.reshape(4, 96)), rel=1e-9
    )
    transposed = y.transpose("position", FEATURE, SAMPLE)  # order of dims does not matter
    assert float(linear_cka(x, transposed, samples=(SAMPLE, "position"), feature_dims=FEATURE)) == (
        pytest.approx(float(out), rel=1e-9)
    )
    with pytest.raises(InputError, match="lacks sample dims"):
        linear_cka(x, y.isel(position=0), samples=(SAMPLE, "position"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_cka_test_batched_labeled(backend: str) -> None:
    rng = np.random.default_rng(8)
    base = rng.normal(size=(3, 24, 6))
    act = xr.DataArray(
        np.stack([base, base @ rng.normal(size=(6, 6)) + rng.normal(size=(3, 24, 6))]),
        dims=(STEP, LAYER, SAMPLE, FEATURE), coords={STEP: [0, 5], LAYER: ["a", "b", "c"]},
    )  # fmt: skip
    x = to_backend(act.sel({STEP: 0}), backend)
    y = to_backend(act.sel({STEP: 5}), backend)
    with no_compute():
        out = cka_test(x, y, permutations=99, resamples=100)
    assert is_lazy(out.linear_cka) == (backend == "dask")
    out = out.compute()
    assert set(out.data_vars) == {"linear_cka", "p_value", "ci_low", "ci_high"}
    assert out.linear_cka.dims == (LAYER,)
    np.testing.assert_allclose(out.linear_cka, linear_cka(x, y).values)
    _, p = ks.cka_permutation_test(
        act.values[0], act.values[1], debiased=True, permutations=99, seed=0
    )
    np.testing.assert_allclose(out.p_value, p)
    assert (out.ci_low <= out.ci_high).all() and out.attrs["estimator"] == "debiased"
    with pytest.raises(InputError, match="confidence"):
        cka_test(x, y, confidence=1.5)
    with pytest.raises(InputError, match="permutations"):
        cka_test(x, y, permutations=0)
