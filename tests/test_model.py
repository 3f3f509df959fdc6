"""CVDM: training lowers the loss, every term is logged and finite, save/load round trip."""

import numpy as np
import pytest
import tensorflow as tf

from cvdm_tf.config import Config
from cvdm_tf.errors import InputError
from cvdm_tf.model import CVDM, LOSS_TERMS, build_model, computing_in, ema_weights, make_optimizer
from cvdm_tf.sampler import Sampler

TINY = dict(base_filters=8, depth=2, tau_base_filters=4, tau_depth=2, time_units=8, norm="group")


def tiny_config(**model):
    return Config().replace(model={**TINY, **model}, train={"learning_rate": 2e-3, "ema_momentum": 0.9},
                            sampler={"steps": 20})


def fixed_batch(seed=0, n=8, size=16):
    rng = np.random.default_rng(seed)
    y = rng.normal(size=(n, size, size, 2)).astype("float32")
    x = np.tanh(y[..., :1] - 0.5 * y[..., 1:]).astype("float32")
    return y, x


@pytest.fixture(scope="module")
def trained():
    """A tiny CVDM trained for 200 steps on one fixed batch (shared by the tests below)."""
    config = tiny_config()
    model = build_model(config)
    model.compile(optimizer=make_optimizer(config.train))
    y, x = fixed_batch()
    first = {k: float(v) for k, v in model.test_step((y, x)).items()}
    for m in model.metrics:
        m.reset_state()
    history = model.fit(tf.data.Dataset.from_tensors((y, x)).repeat(), steps_per_epoch=100, epochs=2, verbose=0)
    return model, first, history.history


def test_training_lowers_the_total_loss_and_logs_every_term(trained):
    model, first, history = trained
    for name in ("loss",) + LOSS_TERMS:
        assert name in history, name
        assert all(np.isfinite(history[name])), name
    assert history["loss"][-1] < 0.6 * first["loss"]
    assert history["diffusion"][-1] < first["diffusion"]


@pytest.mark.parametrize("kind", ["learned-global", "linear", "cosine"])
def test_every_schedule_kind_trains(kind):
    config = tiny_config(schedule=kind)
    model = build_model(config)
    model.compile(optimizer=make_optimizer(config.train))
    y, x = fixed_batch()
    logs = model.fit(tf.data.Dataset.from_tensors((y, x)).repeat(), steps_per_epoch=5, epochs=1, verbose=0)
    assert all(np.isfinite(v[-1]) for v in logs.history.values())


def test_zero_mean_diffusion_trains_its_mean_network():
    config = tiny_config(mean="network")
    model = build_model(config)
    model.compile(optimizer=make_optimizer(config.train))
    y, x = fixed_batch()
    history = model.fit(tf.data.Dataset.from_tensors((y, x)).repeat(), steps_per_epoch=15, epochs=2, verbose=0)
    assert history.history["mean"][-1] < history.history["mean"][0]
    out = Sampler(model)(y[:1], steps=5, samples=2)
    assert out["mean"].shape == (1, 16, 16, 1)


@pytest.mark.parametrize("mean_loss, error", [("l2", np.square), ("l1", np.abs)])
def test_the_mean_networks_loss_is_its_l2_or_l1_error(mean_loss, error):
    config = tiny_config(mean="network", mean_loss=mean_loss)
    model = build_model(config)
    y, x = fixed_batch()
    expected = error(np.asarray(x) - model.mean_net(y).numpy()).mean()
    np.testing.assert_allclose(float(model.loss_terms(y, x)["mean"]), expected, rtol=1e-5)


def test_condition_mean_diffusion_models_the_residual_around_the_last_channel():
    config = tiny_config(mean="condition", residual_scale=4.0)
    model = build_model(config)
    y, x = fixed_batch()
    np.testing.assert_array_equal(model.prior_mean(y).numpy(), y[..., -1:])
    residual, _ = model.residual_target(x, y)
    np.testing.assert_allclose(residual.numpy(), (x - y[..., -1:]) * 4.0, rtol=1e-6)


def test_condition_plus_network_mean_is_the_estimate_corrected_by_the_network():
    """The mean network learns the correction to the condition's estimate (as the regression baseline does), and
    its loss is the error of the corrected estimate."""
    config = tiny_config(mean="condition+network")
    model = build_model(config)
    y, x = fixed_batch()
    rng = np.random.default_rng(1)
    for weight in model.mean_net.weights:  # its output layer starts at zero: make the correction non-zero
        weight.assign(0.1 * rng.normal(size=weight.shape).astype("float32"))
    correction = model.mean_net(y).numpy()
    assert np.abs(correction).max() > 1e-2
    np.testing.assert_allclose(model.prior_mean(y).numpy(), y[..., -1:] + correction, rtol=1e-5, atol=1e-6)
    expected = np.square(x - y[..., -1:] - correction).mean()
    np.testing.assert_allclose(float(model.loss_terms(y, x)["mean"]), expected, rtol=1e-5)


def test_per_network_clipping_keeps_the_mean_networks_gradient_from_the_diffusions_norm():
    """train.gradient_clip_per_network: the mean network's gradients are clipped on their own norm, not scaled
    down with the diffusion's (as one global norm would: 1 / 100 here), and the optimizer clips nothing more."""
    config = tiny_config(mean="network").replace(train={"gradient_clip_per_network": True})
    model = build_model(config)
    assert model.clip_per_network == 1.0 and make_optimizer(config.train, model).global_clipnorm is None
    assert make_optimizer(config.train).global_clipnorm == 1.0
    variables = model.trainable_variables
    mean_ids = {id(v) for v in model.mean_net.trainable_variables}
    gradients = [tf.fill(v.shape, 0.001 if id(v) in mean_ids else 100.0) for v in variables]
    clipped = model.clip_per_network_norm(gradients, variables)
    mean_norm = tf.linalg.global_norm([g for g, v in zip(clipped, variables) if id(v) in mean_ids])
    rest_norm = tf.linalg.global_norm([g for g, v in zip(clipped, variables) if id(v) not in mean_ids])
    expected = tf.linalg.global_norm([g for g, v in zip(gradients, variables) if id(v) in mean_ids])
    np.testing.assert_allclose(float(mean_norm), float(expected), rtol=1e-6)  # under the clip: untouched
    np.testing.assert_allclose(float(rest_norm), 1.0, rtol=1e-5)
    with pytest.raises(InputError, match="not with mixed_float16"):
        config.replace(train={"precision": "mixed_float16"})


def test_gradients_stay_finite_when_gamma_underflows():
    """tau * rho(1) far above 87 makes gamma(1) exactly 0 in float32: no gradient may become NaN."""
    config = tiny_config(schedule="learned-global")
    model = build_model(config)
    model.schedule.tau_raw.assign([30.0])  # tau ~ 30, magnitude ~ 300
    y, x = fixed_batch()
    with tf.GradientTape() as tape:
        terms = model.loss_terms(y, x)
        loss = sum(terms.values())
    gradients = tape.gradient(loss, model.trainable_variables)
    assert np.isfinite(float(loss))
    assert all(np.isfinite(g.numpy()).all() for g in gradients if g is not None)


def test_sampler_contract(trained):
    model = trained[0]
    y, _ = fixed_batch()
    sampler = Sampler(model)
    out = sampler(y[:2], steps=10, samples=3, seed=7)
    assert out["mean"].shape == out["std"].shape == out["schedule"].shape == (2, 16, 16, 1)
    assert out["samples"].shape == (2, 3, 16, 16, 1)
    for value in out.values():
        assert np.all(np.isfinite(value.numpy()))
    assert float(tf.reduce_mean(out["std"])) > 0
    again = sampler(y[:2], steps=10, samples=3, seed=7)
    np.testing.assert_array_equal(out["mean"].numpy(), again["mean"].numpy())
    other = sampler(y[:2], steps=10, samples=3, seed=8)
    assert not np.array_equal(out["mean"].numpy(), other["mean"].numpy())
    ddim = sampler(y[:2], steps=10, samples=1, seed=7, method="ddim")
    assert np.all(np.isfinite(ddim["mean"].numpy()))


def test_bfloat16_sampling_computes_in_bfloat16_and_stays_close_to_float32(trained):
    """`Sampler(precision="bfloat16")`: the denoiser's convolutions run in bfloat16 on the same weights (the
    deterministic DDIM samples differ from float32's, by bfloat16 round-off only), and the model's own layers keep
    their float32 policy afterwards."""
    model = trained[0]
    y, _ = fixed_batch()
    inputs = tf.concat([y[:2, ..., :1], y[:2], tf.fill([2, 16, 16, 1], 0.5)], axis=-1)
    with computing_in(model.denoiser, "mixed_bfloat16"):
        low = model.denoiser(inputs)
        assert low.dtype == tf.bfloat16
    high = model.denoiser(inputs)
    assert high.dtype == tf.float32
    assert {layer.dtype_policy.name for layer in model.denoiser._flatten_layers()} == {"float32"}
    gap = np.abs(tf.cast(low, tf.float32).numpy() - high.numpy()).max() / np.abs(high.numpy()).max()
    assert 0 < gap < 0.05  # bfloat16 keeps 8 bits of mantissa: a few 2^-8 after a handful of layers

    a = Sampler(model)(y[:2], steps=10, samples=1, seed=3, method="ddim")["mean"].numpy()
    b = Sampler(model, precision="bfloat16")(y[:2], steps=10, samples=1, seed=3, method="ddim")["mean"].numpy()
    assert not np.array_equal(a, b)
    np.testing.assert_allclose(b, a, atol=0.05 * np.abs(a).max())
    with pytest.raises(ValueError, match="precision"):
        Sampler(model, precision="float16")


def test_trained_at_16_samples_any_size(trained):
    model = trained[0]
    rng = np.random.default_rng(1)
    for shape in ((1, 48, 32, 2), (1, 13, 21, 2)):  # divisible by 2**depth, and not
        out = Sampler(model)(rng.normal(size=shape).astype("float32"), steps=5, samples=2)
        assert out["mean"].shape == shape[:3] + (1,)
        assert np.all(np.isfinite(out["mean"].numpy()))


def test_saved_model_reloads_with_same_sampler_output(trained, tmp_path):
    import keras

    model = trained[0]
    path = tmp_path / "cvdm.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    assert isinstance(reloaded, CVDM)
    assert reloaded.model_config == model.model_config
    y, _ = fixed_batch()
    a = Sampler(model)(y[:2], steps=8, samples=2, seed=3)
    b = Sampler(reloaded)(y[:2], steps=8, samples=2, seed=3)
    np.testing.assert_allclose(a["mean"].numpy(), b["mean"].numpy(), atol=1e-6)
    np.testing.assert_allclose(a["schedule"].numpy(), b["schedule"].numpy(), rtol=1e-6)


def test_ema_weights_swap_in_and_back(trained):
    model = trained[0]
    y, x = fixed_batch()
    model.train_on_batch(y, x)  # fit() ends on the averages; one more step moves the raw weights away from them
    before = [v.numpy().copy() for v in model.trainable_variables]
    with ema_weights(model):
        during = [v.numpy().copy() for v in model.trainable_variables]
    after = [v.numpy() for v in model.trainable_variables]
    assert any(not np.allclose(a, b) for a, b in zip(before, during))
    assert all(np.array_equal(a, b) for a, b in zip(before, after))


def test_stratified_t_puts_one_example_in_each_stratum_and_keeps_t_uniform():
    """`loss.t_sampling = "stratified"` (VDM's low-discrepancy draw): with the examples' keys, the B t of a batch
    fall one in each [b / B, (b + 1) / B) and depend only on the keys; over batches each position's t is still
    U[0, 1) (Kolmogorov-Smirnov), so the loss estimate stays unbiased."""
    from scipy import stats

    from cvdm_tf.config import LossConfig

    model = CVDM(Config().replace(model=TINY).model, LossConfig(t_sampling="stratified"))
    x0 = tf.zeros([8, 4, 4, 1])
    firsts, lasts = [], []
    for batch in range(300):
        seeds = tf.constant([[batch, i] for i in range(8)], tf.int64)
        t = model.draw_noise(x0, seeds)[0].numpy().ravel()
        assert sorted(np.floor(t * 8).astype(int)) == list(range(8))
        firsts.append(t[0]), lasts.append(t[-1])
    np.testing.assert_array_equal(model.draw_noise(x0, seeds)[0].numpy().ravel(), t)
    assert stats.kstest(firsts, "uniform").pvalue > 1e-3
    assert stats.kstest(lasts, "uniform").pvalue > 1e-3
    iid = CVDM(Config().replace(model=TINY).model).draw_noise(x0, seeds)[0].numpy().ravel()
    np.testing.assert_allclose(iid[0], t[0])  # the offset is the first example's own i.i.d. draw
