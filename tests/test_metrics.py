"""Sample-quality metrics: agreement with plain NumPy/SciPy float64 references, their limits, the digit
classifier, the metrics on a model's early and late samples, and ``zoo eval --metrics``."""
from __future__ import annotations

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.special

import zoo
from zoo import data as data_lib, step as step_lib
from zoo.cli import main
from zoo.errors import ZooError
from zoo.metrics import (
    Reference, classifier, evaluate_model, evaluate_samples, extract, feature_stats, fid_from_features,
    frechet_distance, get_extractor, inception_score, kernel_inception_distance, perceptual_path_length,
    precision_recall, reference_features,
)
from zoo.metrics import ppl as ppl_lib

import helpers


def rel_err(a, b) -> float:
  return abs(float(a) - float(b)) / abs(float(b))


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
  monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "zoo_cache"))


def correlated(rng, n, d, shift=0.0, scale=1.0):
  a = rng.normal(size=(d, d)) / np.sqrt(d)
  return (rng.normal(size=(n, d)) @ a * scale + shift).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# The metric math against independent float64 implementations written here.


def test_fid_matches_numpy_scipy():
  rng = np.random.default_rng(0)
  real, fake = correlated(rng, 700, 48), correlated(rng, 500, 48, shift=0.3, scale=1.3)
  f64 = lambda x: np.asarray(x, np.float64)
  mu1, mu2 = f64(real).mean(0), f64(fake).mean(0)
  s1, s2 = np.cov(f64(real), rowvar=False), np.cov(f64(fake), rowvar=False)
  covmean = scipy.linalg.sqrtm(s1 @ s2).real           # pytorch-fid's way
  ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
  assert rel_err(fid_from_features(real, fake), ref) < 1e-4
  mu, sigma = feature_stats(real, batch_size=256)      # several batches, the last one padded
  np.testing.assert_allclose(mu, mu1, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(sigma, s1, rtol=1e-5, atol=1e-6)
  assert rel_err(frechet_distance(mu1, s1, mu2, s2), ref) < 1e-9   # the float64 part alone


def test_kid_matches_numpy():
  rng = np.random.default_rng(1)
  real, fake = correlated(rng, 400, 32), correlated(rng, 300, 32, shift=0.2)
  subsets, m, seed = 20, 150, 3
  mmds = []
  draw = np.random.RandomState(seed)          # torch-fidelity's draws: fake, then real, per subset
  for _ in range(subsets):
    x = fake[draw.choice(len(fake), m, replace=False)].astype(np.float64)
    y = real[draw.choice(len(real), m, replace=False)].astype(np.float64)
    k = lambda a, b: (a @ b.T / a.shape[1] + 1.0) ** 3
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    mmds.append((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                - 2 * kxy.sum() / m ** 2)
  mean, std = kernel_inception_distance(real, fake, num_subsets=subsets, subset_size=m, seed=seed)
  assert rel_err(mean, np.mean(mmds)) < 1e-4
  assert rel_err(std, np.std(mmds)) < 1e-4


def numpy_inception_score(logits, splits, shuffle_seed=2020):
  if shuffle_seed is not None:     # torch-fidelity shuffles its inputs with rng_seed 2020
    logits = logits[np.random.RandomState(shuffle_seed).permutation(len(logits))]
  p = scipy.special.softmax(np.asarray(logits, np.float64), axis=1)
  n = len(p)
  scores = []
  for i in range(splits):
    part = p[i * n // splits:(i + 1) * n // splits]
    py = part.mean(0, keepdims=True)
    scores.append(np.exp(np.mean(np.sum(part * (np.log(part) - np.log(py)), axis=1))))
  return np.mean(scores), np.std(scores)


def test_inception_score_matches_numpy():
  rng = np.random.default_rng(2)
  logits = (rng.normal(size=(1003, 20)) * 3).astype(np.float32)   # uneven splits
  for seed in (2020, None):
    mean, std = inception_score(logits, splits=10, shuffle_seed=seed)
    ref_mean, ref_std = numpy_inception_score(logits, 10, seed)
    assert rel_err(mean, ref_mean) < 1e-4
    assert rel_err(std, ref_std) < 1e-4
  # a set ordered by class: each consecutive part holds few classes unless it is shuffled first
  ordered = np.sort(np.argmax(logits, 1))
  confident = 30.0 * np.eye(20, dtype=np.float32)[ordered]
  assert inception_score(confident, shuffle_seed=None)[0] < 3.0
  assert inception_score(confident)[0] > 15.0


def test_inception_score_limits():
  assert inception_score(np.zeros((500, 10), np.float32))[0] == pytest.approx(1.0, abs=1e-6)
  confident = 40.0 * np.eye(10, dtype=np.float32)[np.arange(1000) % 10]   # balanced, near one-hot
  assert inception_score(confident, splits=1)[0] == pytest.approx(10.0, rel=1e-4)
  mean, std = inception_score(confident, splits=10, shuffle_seed=None)   # every part balanced too
  assert mean == pytest.approx(10.0, rel=1e-4) and std < 1e-4


def test_precision_recall_match_numpy():
  # Integer features: every squared distance is exact in float32, so the k-NN balls' borders are
  # decided the same way as in float64 (ties included).
  rng = np.random.default_rng(4)
  real = rng.integers(-4, 5, size=(150, 12)).astype(np.float32)
  fake = (rng.integers(-4, 5, size=(130, 12)) + (rng.random((130, 1)) < 0.5) * 2).astype(np.float32)
  k = 3
  d2 = lambda a, b: ((a[:, None, :].astype(np.float64) - b[None, :, :]) ** 2).sum(-1)
  r_real = np.sort(d2(real, real), axis=1)[:, k]     # index k: the k-th neighbour after the point itself
  r_fake = np.sort(d2(fake, fake), axis=1)[:, k]
  precision = np.mean(np.any(d2(fake, real) <= r_real[None, :], axis=1))
  recall = np.mean(np.any(d2(real, fake) <= r_fake[None, :], axis=1))
  assert 0.05 < precision < 0.95 and 0.05 < recall < 0.95      # neither trivially 0 nor 1
  got = precision_recall(real, fake, k=k, block=64)               # several blocks, padded
  assert rel_err(got[0], precision) < 1e-4 and rel_err(got[1], recall) < 1e-4
  assert precision_recall(real, fake, k=k) == got                 # one block


def test_ppl_scale_interpolation_and_filter():
  # A linear decoder and squared L2: with lerp the eps-step distance / eps^2 is |A (z1 - z0)|^2.
  a = np.random.default_rng(5).normal(size=(8, 6)).astype(np.float32)
  decode = lambda v, z: (z @ v).reshape(-1, 1, 6, 1)
  sq = lambda v, x, y: jnp.sum((x - y) ** 2, axis=(1, 2, 3))
  out = perceptual_path_length(decode, sq, 8, decode_variables=a, num_samples=4000, batch_size=1000,
                               interpolation="lerp", epsilon=1e-2, seed=0)
  expected = 2 * np.trace(a.T @ a)                      # E|A (z1 - z0)|^2, z0, z1 ~ N(0, I)
  assert rel_err(out["ppl_unfiltered"], expected) < 0.05
  assert out["ppl"] < out["ppl_unfiltered"]              # the filter drops the long upper tail first
  d = np.random.default_rng(6).exponential(size=1001)
  lo, hi = np.sort(d)[10], np.sort(d)[990]               # 'lower' / 'higher' percentiles of 1001 values
  assert ppl_lib.filtered_mean(d) == pytest.approx(d[(d >= lo) & (d <= hi)].mean(), rel=1e-12)
  z0, z1 = jnp.asarray(np.eye(2, dtype=np.float32)[:1] * 3), jnp.asarray([[0.0, 3.0]])
  mid = ppl_lib.interpolate(z0, z1, jnp.full((1, 1), 0.5), "slerp")
  np.testing.assert_allclose(np.asarray(mid), [[3 / np.sqrt(2), 3 / np.sqrt(2)]], rtol=1e-5)  # norm kept
  np.testing.assert_allclose(np.asarray(ppl_lib.interpolate(z0, z1, jnp.ones((1, 1)))), [[0, 3]],
                             atol=1e-5)


# --------------------------------------------------------------------------------------------------
# The digit classifier and the metrics on images.


@pytest.fixture(scope="module")
def mnist5k():
  ds = data_lib.load({"name": "mnist_5k"})
  out = {}
  for split in ("train", "test"):
    b = next(iter(ds.eval_batches(split, ds.num_examples(split))))
    out[split] = (b["image"], b["label"])
  return out


def test_shipped_digit_classifier(mnist5k):
  variables, meta = classifier.load()
  images, labels = mnist5k["test"]
  acc = classifier.accuracy(variables, images, labels)
  assert acc > 0.95 and acc == pytest.approx(meta["test_accuracy"], abs=2e-3)
  binarized = (np.random.default_rng(0).random(images.shape) < images).astype(np.float32)
  assert classifier.accuracy(variables, binarized, labels) > 0.93
  ex = get_extractor("digits")
  feats = extract(ex, images[:10])
  assert feats["features"].shape == (10, 128) and feats["logits"].shape == (10, 10)
  with pytest.raises(ZooError, match="features='inception'"):
    extract(ex, np.zeros((2, 32, 32, 3), np.float32))


def test_feature_extraction_compiles_with_the_cpu_options(monkeypatch):
  """``zoo.step.CPU_OPTIONS_FOR``'s 'features': on a CPU the extractors' jitted network compiles with the
  zoo's CPU options (the FID Inception 1.5-1.6x), another program than XLA's defaults, the same features."""
  base = get_extractor("digits", batch_size=8)
  images = np.random.default_rng(0).uniform(size=(8, 28, 28, 1)).astype(np.float32)

  def built(on):
    monkeypatch.setattr(step_lib, "CPU_OPTIONS_FOR", frozenset({"train", "eval"} | ({"features"} if on else set())))
    ex = dataclasses.replace(base)          # a fresh instance: each builds its jitted function once
    return ex._features_fn.lower(ex.variables, images, True).compile().as_text(), ex.features(images)["features"]
  (text, feats), (default_text, default_feats) = built(True), built(False)
  # XLA's defaults give YNNPACK the convolutions too; the options keep it to reductions
  assert text.count("ynn_fusion") < default_text.count("ynn_fusion")
  np.testing.assert_allclose(feats, default_feats, rtol=1e-4, atol=1e-5)


def test_fid_of_a_set_with_itself_and_with_noise(mnist5k):
  images = mnist5k["test"][0]
  ref = Reference.from_features(extract(get_extractor("digits"), images), "test", "digits:")
  same = evaluate_samples(images, ref, metrics=("fid",))["fid"]
  # float64 round-off, amplified by the square roots of the covariance's ~0 eigenvalues
  assert abs(same) < 1e-7 * np.trace(ref.sigma), (same, np.trace(ref.sigma))
  rng = np.random.default_rng(7)
  fids = [evaluate_samples(np.clip(images + s * rng.normal(size=images.shape), 0, 1).astype(np.float32),
                           ref, metrics=("fid",))["fid"] for s in (0.05, 0.1, 0.2, 0.4)]
  assert fids[0] > 1e-3 and all(a < b for a, b in zip(fids, fids[1:])), fids


def test_evaluate_samples_takes_arrays_samplers_and_batches(mnist5k):
  images = mnist5k["test"][0][:600]
  ex = get_extractor("digits", None, 256)        # batches of 256: the sampler is called 3 times
  ref = Reference.from_features(extract(ex, mnist5k["train"][0][:600]), "train", "digits:")
  kw = dict(metrics=("fid", "kid", "is", "pr"), features=ex, kid_subsets=5, kid_subset_size=200,
            is_splits=3)
  from_array = evaluate_samples(images, ref, **kw)
  calls = []

  def sampler(num, seed):          # (num, seed) -> images: hands out the same 600 images in order
    calls.append((num, seed))
    lo = 256 * (len(calls) - 1)
    return np.concatenate([images, images])[lo:lo + num]

  from_sampler = evaluate_samples(sampler, ref, num_samples=600, **kw)
  from_batches = evaluate_samples((images[i:i + 256] for i in range(0, 600, 256)), ref, **kw)
  assert len(calls) == 3 and len({seed for _, seed in calls}) == 3          # one seed per batch
  for key in ("fid", "kid", "kid_std", "is", "is_std", "precision", "recall"):
    assert from_sampler[key] == pytest.approx(from_array[key], rel=1e-6, abs=1e-9), key
    assert from_batches[key] == pytest.approx(from_array[key], rel=1e-6, abs=1e-9), key
  assert from_array["num_samples"] == from_sampler["num_samples"] == 600
  with pytest.raises(ZooError, match="PPL needs a model"):
    evaluate_samples(images, ref, metrics=("fid", "ppl"))


def test_reference_statistics_are_cached(tmp_path, monkeypatch):
  ref = reference_features("mnist_5k", "test", features="digits")
  files = list((tmp_path / "zoo_cache" / "metrics").glob("mnist_5k-*-test-1000-digits-*.npz"))
  assert len(files) == 1
  monkeypatch.setattr("zoo.metrics.features.extract", lambda *a, **k: pytest.fail("not cached"))
  again = reference_features({"name": "mnist_5k"}, "test", features="digits")
  np.testing.assert_array_equal(again.features, ref.features)
  np.testing.assert_array_equal(again.sigma, ref.sigma)
  assert again.name == "mnist_5k:test" and again.num_examples == 1000


# --------------------------------------------------------------------------------------------------
# A model's samples: a tiny VAE on mnist_5k, checkpointed early and late in one run.

EARLY, LATE = 10, 800


@pytest.fixture(scope="session")      # session: a module fixture is set up again whenever the worker
def vae_run(tmp_path_factory):          # runs another module's test between the group's tests
  workdir = tmp_path_factory.mktemp("vae_metrics")
  for steps in (EARLY, LATE):      # the second run resumes the first: checkpoints at EARLY and LATE
    cfg = helpers.tiny_config("vae", steps=steps, batch_size=64, checkpoint_every=0, eval_every=0,
                              num_samples=0, num_devices=1)
    cfg.data.name = "mnist_5k"
    cfg.eval_split = "test"
    zoo.train_and_evaluate(cfg, workdir, progress=False)
  return workdir


VAE_RUN_GROUP = pytest.mark.xdist_group("vae_run")     # one worker trains the fixture's VAE once


@pytest.mark.slow
@VAE_RUN_GROUP
def test_metrics_separate_real_digits_from_early_and_late_samples(vae_run, mnist5k):
  kw = dict(num_samples=1000, kid_subsets=20)
  early = evaluate_model(zoo.load(vae_run, step=EARLY), ("fid", "kid", "is", "pr"), **kw)
  late = evaluate_model(zoo.load(vae_run, step=LATE), ("fid", "kid", "is", "pr", "ppl"), **kw)
  train = mnist5k["train"][0][np.random.default_rng(0).permutation(4000)[:1000]]  # the file is by class
  real = evaluate_samples(train, "mnist_5k", kid_subsets=20)
  assert real["reference"] == early["reference"] == "mnist_5k:test"
  assert real["fid"] < late["fid"] < early["fid"], (real, late, early)
  assert real["kid"] < late["kid"] < early["kid"], (real, late, early)
  assert early["is"] < late["is"] < real["is"], (real, late, early)
  assert early["precision"] < late["precision"] < real["precision"], (real, late, early)
  assert early["recall"] <= late["recall"] < real["recall"], (real, late, early)
  assert np.isfinite(late["ppl"]) and late["ppl"] > 0


@pytest.mark.slow
@VAE_RUN_GROUP
def test_zoo_eval_metrics_prints_one_json(vae_run, capsys):
  code = main(["eval", "--workdir", str(vae_run), "--metrics", "fid,is,kid,pr,ppl", "--features", "digits",
               "--num-samples", "300"])
  out, err = capsys.readouterr()
  assert code == 0, err
  res = json.loads(out.strip().splitlines()[-1])
  for key in ("fid", "kid", "kid_std", "is", "is_std", "precision", "recall", "ppl"):
    assert np.isfinite(res[key]), key
  assert res["num_samples"] == 300 and res["features"] == "digits" and res["reference"] == "mnist_5k:test"
  assert "nll" not in res                                  # only what --metrics names
  code = main(["eval", "--workdir", str(vae_run), "--metrics", "likelihood,fid", "--num-samples", "300",
               "--examples", "64"])
  res = json.loads(capsys.readouterr()[0].strip().splitlines()[-1])
  assert code == 0 and "nll" in res and "fid" in res


@pytest.mark.slow
@VAE_RUN_GROUP
@pytest.mark.parametrize("argv, needle", [
    (["--metrics", "fdi"], "unknown sample-quality metric 'fdi' (did you mean: fid?)"),
    (["--metrics", "fid", "--features", "inception", "--inception-weights", "/nowhere/w.pth"],
     "pt_inception-2015-12-05-6726825d.pth"),
])
def test_zoo_eval_metrics_errors(vae_run, capsys, argv, needle):
  code = main(["eval", "--workdir", str(vae_run), *argv])
  _, err = capsys.readouterr()
  lines = [line for line in err.strip().splitlines() if line.startswith("zoo: error:")]
  assert code == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err


@pytest.mark.slow
def test_zoo_eval_metrics_on_a_family_without_latent_space(tmp_path, capsys, caplog):
  """An RBM samples but has no latent space: ppl is skipped with a message, alone it is an error."""
  small = {"model.ais_chains": 2, "model.ais_temperatures": 10, "model.final_ais_temperatures": 10,
           "model.sample_steps": 20, "model.num_hidden": 64}        # plumbing, not sample quality
  cfg = helpers.tiny_config("rbm", steps=4, batch_size=64, num_samples=0, num_devices=1,
                            eval_split="test", **small)
  cfg.data.name = "mnist_5k"
  zoo.train_and_evaluate(cfg, tmp_path / "rbm", progress=False)
  capsys.readouterr()
  code = main(["eval", "--workdir", str(tmp_path / "rbm"), "--metrics", "fid,is,kid,pr,ppl",
               "--num-samples", "300"])       # as the VAE's: the metrics' programs are compiled already
  out, err = capsys.readouterr()
  assert code == 0, err
  res = json.loads(out.strip().splitlines()[-1])
  assert res["family"] == "rbm" and "ppl" not in res
  assert "the rbm family has none" in res["ppl_skipped"]
  assert any("skipping ppl" in r.getMessage() for r in caplog.records)
  for key in ("fid", "kid", "is", "precision", "recall"):
    assert np.isfinite(res[key]), key
  code = main(["eval", "--workdir", str(tmp_path / "rbm"), "--metrics", "ppl"])
  _, err = capsys.readouterr()
  lines = [line for line in err.strip().splitlines() if line.startswith("zoo: error:")]
  assert code == 2 and len(lines) == 1 and "PPL needs a latent space" in lines[0], err
