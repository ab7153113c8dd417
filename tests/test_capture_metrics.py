"""The torch dimensionality metrics against the numpy kernels, and the online jump trigger."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

torch = pytest.importorskip("torch")

from ndt_store import _dims as D  # noqa: E402
from ndt_store._kernels import dimensionality as kd  # noqa: E402
from ndt_store._kernels.dynamics import zscore, zscore_jumps  # noqa: E402
from ndt_store.capture.metrics import activation_metrics  # noqa: E402
from ndt_store.capture.trigger import Budget, JumpSnapshots, JumpTrigger  # noqa: E402
from ndt_store.errors import InputError  # noqa: E402


def kernel_metrics(a: np.ndarray, as_published: bool = False) -> np.ndarray:
    return np.array(kd.dimensionality_metrics(a.reshape(a.shape[0], -1), as_published=as_published))


@settings(max_examples=40, deadline=None)
@given(
    arrays(
        np.float64,
        st.tuples(st.integers(1, 12), st.integers(1, 12)),
        elements=st.floats(-100, 100, allow_nan=False, width=64),
    ),
    st.booleans(),
)
def test_metrics_match_numpy_kernels(a: np.ndarray, as_published: bool) -> None:
    got = activation_metrics([torch.from_numpy(a)], as_published=as_published)[0].numpy()
    want = kernel_metrics(a, as_published)
    # effective rank is a count: compare exactly unless a cumulative share sits on 0.9
    np.testing.assert_allclose(got[[0, 1, 3]], want[[0, 1, 3]], rtol=1e-7, atol=1e-9)
    s = np.linalg.svd(a, compute_uv=False)
    share = np.cumsum(s**2) / max(np.sum(s**2), 1e-300)
    if not np.any(np.abs(share - 0.9) < 1e-9):
        assert got[2] == want[2]


def test_metrics_analytic_cases() -> None:
    eye = torch.eye(5, dtype=torch.float64)
    np.testing.assert_allclose(activation_metrics([eye])[0].numpy(), [5, 5, 5, 5], rtol=1e-8)
    rank1 = torch.ones(4, 6, dtype=torch.float64)
    got = activation_metrics([rank1])[0].numpy()
    assert got[0] == pytest.approx(1.0) and got[2] == 1.0 and got[3] == pytest.approx(1.0)
    zero = activation_metrics([torch.zeros(3, 4)])[0].numpy()
    assert zero[0] == 0 and zero[2] == 0 and zero[3] == 0
    # conv-shaped activations are flattened per sample, float32 within float32 precision
    x = torch.randn(6, 3, 4, 4)
    np.testing.assert_allclose(
        activation_metrics([x])[0].numpy(),
        kernel_metrics(x.numpy().astype(np.float64)),
        rtol=1e-4,
    )


def test_metrics_order_is_phase1_order() -> None:
    assert D.PHASE1_METRICS == (
        "stable_rank",
        "participation_ratio",
        "effective_rank_90",
        "nuclear_norm_ratio",
    )


# --- online trigger -----------------------------------------------------------------
def test_online_z_equals_offline_rule_on_the_window() -> None:
    rng = np.random.default_rng(1)
    x = np.cumsum(rng.standard_normal(60))
    window = 10
    trig = JumpTrigger(window=window, threshold=2.0)
    for i, value in enumerate(x):
        trig.update(i, {"a": value})
        z = trig.z_scores()["a"]
        if i < window:
            assert np.isnan(z)
            continue
        seg = x[i - window : i + 1]
        # the offline published rule applied to the trailing window, at its last velocity
        _, z_off, *_ = zscore_jumps(seg, threshold=2.0)
        assert z == pytest.approx(z_off[-1], rel=1e-12)
        v = np.diff(seg)
        assert z == pytest.approx(abs(v[-1] - v.mean()) / v.std(), rel=1e-12)
        assert z == pytest.approx(zscore(v)[-1], rel=1e-12)


def test_trigger_fires_once_on_planted_step_and_respects_cooldown() -> None:
    x = np.r_[np.linspace(0, 1, 30), np.linspace(1, 2, 30) + 5.0]
    trig = JumpTrigger(window=20, cooldown=5)
    fired = [j for i, v in enumerate(x) if (j := trig.update(10 * i, {"l": v}))]
    assert [j.step for j in fired] == [300]
    assert fired[0].previous_step == 290 and fired[0].layers == ("l",)
    with pytest.raises(InputError):
        JumpTrigger(window=1)


def _planted(n: int, jumps: list[int], size: float = 5.0) -> np.ndarray:
    # quadratic ramp: linear velocities, whose z-score never exceeds sqrt(3) < 2
    x = (np.arange(n) / n) ** 2
    for j in jumps:
        x[j:] += size
    return x


def test_ring_buffer_before_during_after_and_budget() -> None:
    out: list[tuple[int, str, int]] = []
    snap = {"weights": {"w": np.zeros(100, np.float32)}}  # 400 bytes
    js = JumpSnapshots(
        lambda s, sn, info: out.append((s, info["role"], info["jump_step"])),
        trigger=JumpTrigger(window=10),
        budget=Budget(max_count=4),
        before=2,
        after=3,
    )
    x = _planted(80, [30, 60])
    for i, v in enumerate(x):
        js.observe(i, {"fc": v}, snap)
    js.close()
    # first jump: before = 2 records back, during = the jump record, after = 3 later
    assert out == [(28, "before", 30), (30, "during", 30), (33, "after", 30)]
    # the second jump did not fit (3 more > 4): skipped, budget respected
    assert [j.step for j in js.jumps] == [30, 60]
    assert [j.step for j in js.skipped] == [60]
    assert js.budget.used_count == 3 and js.budget.used_bytes == 1200


def test_budget_in_bytes_and_no_duplicate_steps() -> None:
    out: list[int] = []
    snap = {"a": np.zeros(25, np.float64)}  # 200 bytes
    js = JumpSnapshots(
        lambda s, sn, info: out.append(s),
        trigger=JumpTrigger(window=10),
        budget=Budget(max_bytes=1300),
    )
    js.mark_stored([29])  # e.g. a scheduled snapshot already there
    x = _planted(120, [30, 60, 90])
    for i, v in enumerate(x):
        js.observe(i, {"fc": v}, snap)
    js.close()
    assert out[:2] == [30, 32]  # 29 was stored already: only during + after
    assert 59 in out and 60 in out and 62 in out
    assert js.budget.used_bytes <= 1300 and js.budget.used_bytes == 200 * len(out)
    assert [j.step for j in js.skipped] == [90]
    assert len(out) == len(set(out))


def test_non_finite_activations_give_nan_metrics_not_a_failed_recording():
    from ndt_store.capture.metrics import gram_singular_values

    good = torch.eye(3, dtype=torch.float32)
    bad = torch.full((3, 3), float("nan"))
    s_good, s_bad = gram_singular_values([good, bad])
    assert torch.isnan(s_bad).all()
    expected = np.linalg.svd(good.numpy().astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(s_good.numpy(), expected, atol=1e-12)
