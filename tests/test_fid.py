"""FID: zero on itself, the closed form for shifted Gaussians, clean-fid vs torchmetrics, the Inception file checks; the class-spread figures."""
import numpy as np
import pytest
import torch

from eval.features import INCEPTION_FILES, DomainClassifier, class_spread, class_total_variation, extract, find_inception
from eval.fid import Stats, cached_stats, class_mix_weights, fid, fid_torchmetrics, save_stats, stats_of, weighted_stats_of
from teachers.errors import ConfigError


def test_fid_of_a_set_against_itself_is_exactly_zero():
    feats = np.random.default_rng(0).normal(size=(2000, 16))
    assert fid(stats_of(feats), stats_of(feats)) == 0.0


def test_fid_of_gaussians_matches_the_closed_form():
    """Diagonal covariances: ||mu_a - mu_b||^2 + sum (s_a + s_b - 2 sqrt(s_a s_b))."""
    rng = np.random.default_rng(1)
    mu_a, mu_b = rng.normal(size=8), rng.normal(size=8)
    var_a, var_b = rng.uniform(0.5, 2, size=8), rng.uniform(0.5, 2, size=8)
    closed = ((mu_a - mu_b) ** 2).sum() + (var_a + var_b - 2 * np.sqrt(var_a * var_b)).sum()
    assert fid(Stats(mu_a, np.diag(var_a), 0), Stats(mu_b, np.diag(var_b), 0)) == pytest.approx(closed, rel=1e-6)


def test_fid_of_a_shifted_set_is_the_squared_shift():
    feats = np.random.default_rng(2).normal(size=(3000, 8))
    shift = np.linspace(-1, 1, 8)
    assert fid(stats_of(feats), stats_of(feats + shift)) == pytest.approx((shift**2).sum(), rel=1e-4)


def test_clean_fid_and_torchmetrics_agree_on_the_same_features():
    extractor = DomainClassifier().eval()
    images_a = torch.rand(400, 1, 28, 28) * 2 - 1
    images_b = (torch.rand(400, 1, 28, 28) * 2 - 1) * 0.7 + 0.1
    features_a, features_b = extract(extractor, images_a), extract(extractor, images_b)
    ours = fid(stats_of(features_a), stats_of(features_b))
    theirs = fid_torchmetrics(features_a, features_b)
    assert ours > 0 and abs(ours - theirs) / ours < 1e-3


def test_torchmetrics_fid_makes_no_collective_call_inside_a_process_group(monkeypatch):
    """A torchrun run evaluates on the main process alone: a collective there waits for (or fails on) the others."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        def no_collectives(*args, **kwargs):
            raise AssertionError("a collective call during a one-process evaluation")

        for name in ("barrier", "all_gather", "all_reduce"):
            monkeypatch.setattr(dist, name, no_collectives)
        features = extract(DomainClassifier().eval(), torch.rand(20, 1, 28, 28) * 2 - 1)
        assert fid_torchmetrics(features, features * 0.5) > 0
    finally:
        monkeypatch.undo()
        dist.destroy_process_group()


def test_reference_statistics_are_computed_once(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return stats_of(np.random.default_rng(3).normal(size=(100, 4)))

    first, second = cached_stats(tmp_path / "ref", compute), cached_stats(tmp_path / "ref", compute)
    assert len(calls) == 1 and np.array_equal(first.sigma, second.sigma)


def test_reference_statistics_written_by_two_processes_at_once_keep_the_first(tmp_path):
    """Parallel sweep runs share the cache: another run completes the folder while this one computes its own."""
    path, theirs = tmp_path / "ref", stats_of(np.random.default_rng(4).normal(size=(100, 4)))

    def compute_while_another_run_finishes():
        save_stats(theirs, path)
        return stats_of(np.random.default_rng(5).normal(size=(100, 4)))

    ours = cached_stats(path, compute_while_another_run_finishes)
    assert np.array_equal(ours.sigma, theirs.sigma) and sorted(p.name for p in tmp_path.iterdir()) == ["ref"]


@pytest.mark.parametrize("backend", list(INCEPTION_FILES))
def test_missing_inception_weights_name_the_file(tmp_path, backend):
    with pytest.raises(ConfigError, match=INCEPTION_FILES[backend][0].replace(".", r"\.") + ".*eval.feature_extractor=domain"):
        find_inception(backend, str(tmp_path / INCEPTION_FILES[backend][0]))


def test_inception_weights_with_the_wrong_hash_are_refused(tmp_path):
    fake = tmp_path / INCEPTION_FILES["torchmetrics"][0]
    fake.write_bytes(b"not the inception weights")
    with pytest.raises(ConfigError, match="not the expected Inception weights"):
        find_inception("torchmetrics", str(fake))
    with pytest.raises(ConfigError, match="not the expected Inception weights"):
        find_inception("clean-fid", str(fake), sha256="0123abcd")


def test_class_total_variation_known_answers():
    assert class_total_variation([3, 1], [6, 2]) == 0  # the same spread at another sample count
    assert class_total_variation([5, 0], [0, 7]) == 1  # disjoint
    assert class_total_variation([1, 1], [2, 0]) == pytest.approx(0.5)


def test_class_spread_counts_the_argmax_and_averages_the_top_probability():
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]], dtype=torch.float64)
    counts, top = class_spread(probs)
    assert counts == [2, 1, 0] and top == pytest.approx((0.9 + 0.7 + 0.6) / 3)


def test_weighted_stats_with_uniform_weights_are_the_plain_ones():
    feats = np.random.default_rng(6).normal(size=(50, 3))
    ours, plain = weighted_stats_of(feats, np.full(50, 7.0)), stats_of(feats)
    np.testing.assert_allclose(ours.mu, plain.mu, rtol=1e-12)
    np.testing.assert_allclose(ours.sigma, plain.sigma, rtol=1e-12)


def test_class_mix_weights_give_each_class_its_target_share():
    labels = np.array([0, 0, 0, 1, 2, 2])
    w = class_mix_weights(labels, np.array([0.2, 0.5, 0.3]))
    shares = np.bincount(labels, weights=w) / w.sum()
    np.testing.assert_allclose(shares, [0.2, 0.5, 0.3])
    # Two classes re-weighted from 3:1 to 1:1 move the weighted mean to the middle of the class means.
    feats = np.array([[0.0], [0.0], [0.0], [4.0]])
    assert weighted_stats_of(feats, class_mix_weights(np.array([0, 0, 0, 1]), np.array([0.5, 0.5]))).mu[0] == pytest.approx(2.0)
