"""TimingModel pieces with no home in the other test files."""


def test_small_service_noise_draws_the_same_values_one_at_a_time():
    """Small draws go value by value (no GIL release per draw, see TimingModel.service_noise) and give
    exactly the values of one sized draw, so every seeded result stays the same."""
    import numpy as np

    from dtlab.timing import SMALL_DRAW, TimingModel
    tm = TimingModel()
    s = tm.service_sigma
    for size in (0, 1, 3, 10, SMALL_DRAW, SMALL_DRAW + 1, 500):
        for seed in (0, 7):
            got = tm.service_noise(np.random.default_rng(seed), size)
            want = np.random.default_rng(seed).lognormal(-0.5 * s * s, s, size)
            assert got.shape == (size,) and np.array_equal(got, want), (size, seed)
    both = np.random.default_rng(1)
    a = tm.service_noise(both, 4)
    b = tm.service_noise(both, 4)                     # the stream moves on as with sized draws
    ref = np.random.default_rng(1).lognormal(-0.5 * s * s, s, 8)
    assert np.array_equal(np.concatenate([a, b]), ref)
