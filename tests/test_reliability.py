"""Reliability: non-finite losses, mixed precision, distribution, interruption, fuzzed bad input."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import mlp_backbone

import domadapt as da


class Exploding(da.Strategy):
    """A loss term that turns -inf half-way through training."""

    log_names = ("boom_loss",)
    uses_target = False

    def loss(self, step):
        feature_term = 0.0 * keras.ops.mean(step.source_features)
        return {"boom_loss": keras.ops.where(step.progress >= 0.5, keras.ops.log(0.0), 0.0) + feature_term}


def test_a_nonfinite_loss_term_stops_training_naming_the_term_and_step(moons):
    source_x, source_y, _, _ = moons
    keras.utils.set_random_seed(0)
    adapter = da.DomainAdapter(mlp_backbone(), num_classes=2, strategies=[Exploding()])
    adapter.compile(optimizer=keras.optimizers.SGD(0.01))
    # 256 images, batch 32: 8 steps per epoch, 16 planned; progress reaches 0.5 at the 9th step.
    with pytest.raises(da.callbacks.NonFiniteLossError,
                       match=r"'boom_loss' became non-finite .* at optimizer step 9 \(epoch 2, batch 1\)"):
        adapter.fit(source=(source_x[:256], source_y[:256]), epochs=2, batch_size=32, verbose=0)
    assert all(np.isfinite(w).all() for w in adapter.get_weights())


def test_a_nan_image_deep_in_a_dataset_is_a_value_error_not_a_silent_nan(moons):
    source_x, source_y, target_x, _ = moons
    images = source_x[:256].copy()
    images[200] = np.nan  # not in the first element, which is checked before training
    source = tf.data.Dataset.from_tensor_slices((images, source_y[:256])).batch(32)
    adapter = da.DomainAdapter(mlp_backbone(), num_classes=2, strategies=[da.MMD()])
    adapter.compile(optimizer=keras.optimizers.SGD(0.01))
    with pytest.raises(ValueError, match="`source` has an image with NaN or inf"):
        adapter.fit(source=source, target=target_x, epochs=1, verbose=0, shuffle=False)


def test_nonfinite_guard_can_be_turned_off(moons):
    source_x, source_y, _, _ = moons
    adapter = da.DomainAdapter(mlp_backbone(), num_classes=2, strategies=[Exploding()])
    adapter.compile(optimizer=keras.optimizers.SGD(0.01))
    history = adapter.fit(source=(source_x[:64], source_y[:64]), epochs=2, batch_size=32, verbose=0,
                          stop_on_nonfinite=False)
    assert not np.isfinite(history.history["loss"][-1])


def test_mirrored_strategy_on_two_cpus_matches_one_device_for_every_strategy():
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent / "scripts" / "distributed_check.py"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, env=env)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stderr[-3000:]
    results = json.loads(lines[-1][len("RESULT "):])
    assert "AFFINE bn_mode='domain_affine' trains on one device per worker only" in run.stdout, run.stdout[-2000:]
    assert len(results) == 9
    # bn_mode="domain" with synchronized BatchNormalization: target (exported) and source
    # moving statistics, re-estimated after fit, agree with one device's.
    assert results["batchnorm_domain"]["statistics_gap"] < 1e-4, results["batchnorm_domain"]
    # Source-only has no guard resetting them: the health counts cover the whole fit, once.
    assert results["source-only"]["health"] == [512.0, 512.0], results["source-only"]
    for name, result in results.items():
        assert result["replicas"] == 2, name
        assert result["moved"] > 0.05, name  # training did move the weights
        # Same global batch: batch statistics (MMD, CORAL, CDAN weights) are gathered
        # across replicas, so the runs agree to float rounding.
        assert result["relative_gap"] < 1e-4, (name, result)
        assert result["loss"][0] == pytest.approx(result["loss"][1], rel=1e-4), name


@pytest.fixture
def policy(request):
    keras.mixed_precision.set_global_policy(request.param)
    try:
        yield request.param
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"], indirect=True)
def test_mixed_precision_trains_every_loss_without_nan(moons, policy):
    source_x, source_y, target_x, target_y = moons
    keras.utils.set_random_seed(0)
    strategies = [
        da.GradientReversal(hidden_units=(32,), dropout=0.0), da.MMD(), da.CORAL(), da.EntropyMinimization(0.1),
        da.ConditionalAdversarial(hidden_units=(32,), dropout=0.0, random_dim=64),
    ]
    adapter = da.DomainAdapter(mlp_backbone(), num_classes=2, strategies=strategies)
    adapter.compile(optimizer=keras.optimizers.Adam(3e-3), metrics=["accuracy"])
    assert adapter.feature_extractor.output.dtype == policy.split("_")[1]  # the backbone does compute in low precision
    if policy == "mixed_float16":
        assert isinstance(adapter.optimizer, keras.optimizers.LossScaleOptimizer)
    history = adapter.fit(source=(source_x, source_y), target=target_x, epochs=8, batch_size=64, verbose=0, seed=0)
    for name, values in history.history.items():
        assert np.all(np.isfinite(values)), name
    assert {"mmd_loss", "coral_loss", "domain_loss", "entropy_loss"} <= set(history.history)
    assert history.history["accuracy"][-1] > 0.8
    assert all(v.dtype == "float32" for v in adapter.trainable_variables)
    # The reversed gradient reached the backbone through loss scaling: it moved and stayed finite.
    assert all(np.isfinite(np.asarray(v)).all() for v in adapter.trainable_variables)
    if policy == "mixed_float16":
        assert np.isfinite(float(adapter.optimizer.dynamic_scale))


def test_batch_statistic_losses_are_float32_for_half_precision_features():
    from domadapt import ops

    rng = np.random.default_rng(0)
    source = keras.ops.convert_to_tensor((rng.normal(size=(64, 8)) * 200).astype("float16"))
    target = keras.ops.convert_to_tensor((rng.normal(size=(64, 8)) * 200 + 50).astype("float16"))
    reference_source = keras.ops.cast(source, "float32")
    reference_target = keras.ops.cast(target, "float32")
    for function in (ops.mmd, ops.coral):
        value = function(source, target)
        assert value.dtype == "float32"
        # Squared distances of 200-scale features overflow float16 (max 65504); float32 does not.
        assert np.isfinite(float(value))
        assert float(value) == pytest.approx(float(function(reference_source, reference_target)), rel=1e-5)


def test_a_run_killed_mid_epoch_resumes_with_backup_and_restore_to_the_same_result(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = str(Path(__file__).parent / "scripts" / "resume_check.py")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}

    def run(*arguments):
        return subprocess.run([sys.executable, script, str(tmp_path), *arguments], capture_output=True, text=True,
                              timeout=300, env=env)

    full = run("full")
    assert full.returncode == 0, full.stderr[-3000:]
    killed = run("backup", "15")  # 10 steps per epoch: dies in the middle of the second epoch
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert json.loads((tmp_path / "backup" / "training_metadata.json").read_text())["epoch"] == 1
    resumed = run("backup")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    expected, got = np.load(tmp_path / "full.npz"), np.load(tmp_path / "backup.npz")
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-6)
    expected_log, got_log = json.loads((tmp_path / "full.json").read_text()), json.loads((tmp_path / "backup.json").read_text())
    assert got_log["iterations"] == expected_log["iterations"] == 40
    assert list(got_log["epochs"]) == ["1", "2", "3"]  # the resumed run redid epoch 2 and went on
    for epoch, logs in got_log["epochs"].items():
        # Progress-dependent lambda and gradual unfreezing resumed at the right point.
        for name, value in logs.items():
            assert value == pytest.approx(expected_log["epochs"][epoch][name], rel=1e-5), (epoch, name)


def test_multi_worker_mirrored_strategy_with_two_local_workers_matches_one_device(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent / "scripts" / "multiworker_check.py"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=600,
                         env=env)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, run.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["codes"] == [0, 0, 0], run.stderr[-3000:]
    assert result["gap_between_workers"] < 1e-6  # the workers hold one model
    assert result["gap_to_single"] < 1e-4 * result["scale"]  # GRL + MMD + CORAL + entropy on the global batch
    assert result["loss"][0] == pytest.approx(result["loss"][1], rel=1e-4)
