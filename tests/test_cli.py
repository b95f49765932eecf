"""The CLI: each bad input gives one clear line and a non-zero exit; the commands do their job."""
from __future__ import annotations

import argparse
import json
import shutil
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import experiment_module
from zoo.cli import main

QUICK = "experiments/kingma2013/vae.py:quick"
TINY = ["--config.steps=2", "--config.eval_every=0", "--config.checkpoint_every=2",
        "--config.eval_examples=64", "--config.eval_batch_size=32", "--config.batch_size=16",
        "--config.num_samples=4", "--no-progress"]


def run(capsys, *argv):
  code = main(list(argv))
  out, err = capsys.readouterr()
  return code, out, err


def one_line_error(code, err, *needles):
  assert code != 0
  lines = [l for l in err.strip().splitlines() if l.startswith("zoo: error:")]
  assert len(lines) == 1, err
  assert "Traceback" not in err
  for n in needles:
    assert n in lines[0], lines[0]
  return lines[0]


def test_unknown_family(capsys, tmp_path):
  code, _, err = run(capsys, "train", "--config", QUICK, "--workdir", str(tmp_path), "--config.family=vea")
  one_line_error(code, err, "unknown family 'vea'", "did you mean: vae")


def test_unknown_experiment(capsys, tmp_path):
  code, _, err = run(capsys, "train", "--config", "experiments/kingma2013/vea.py", "--workdir", str(tmp_path))
  one_line_error(code, err, "no experiment config", "kingma2013/vae.py")


def test_unknown_config_key_names_the_nearest(capsys, tmp_path):
  code, _, err = run(capsys, "train", "--config", QUICK, "--workdir", str(tmp_path), "--config.batch_sise=3")
  one_line_error(code, err, "unknown config key batch_sise", "batch_size")
  code, _, err = run(capsys, "train", "--config", QUICK, "--workdir", str(tmp_path), "--config.model.latent=3")
  one_line_error(code, err, "model.latent", "latent_dim")
  code, _, err = run(capsys, "train", "--config", QUICK, "--workdir", str(tmp_path), "--config.steps=many")
  one_line_error(code, err, "steps must be int")


def test_wrong_data_shape_and_dtype(capsys, tmp_path):
  bad = tmp_path / "bad.npz"
  np.savez(bad, images=np.zeros((10, 5), np.uint8))
  code, _, err = run(capsys, "train", "--config", QUICK, "--workdir", str(tmp_path / "w"),
                     f"--config.data.name=npz:{bad}", *TINY)
  one_line_error(code, err, "bad.npz", "(10, 5)")
  bad2 = tmp_path / "bad2.npz"
  np.savez(bad2, images=np.full((10, 28, 28), "x"))
  code, _, err = run(capsys, "train", "--config", QUICK, "--workdir", str(tmp_path / "w"),
                     f"--config.data.name=npz:{bad2}", *TINY)
  one_line_error(code, err, "bad2.npz")


def test_missing_data_set(capsys, tmp_path):
  code, _, err = run(capsys, "train", "--config", QUICK, "--workdir", str(tmp_path / "w"),
                     "--config.data.name=cifar10", f"--config.data.data_dir={tmp_path / 'nodata'}", *TINY)
  one_line_error(code, err, "cifar10", str(tmp_path / "nodata"))


def test_unwritable_workdir(capsys, tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a folder")
  code, _, err = run(capsys, "train", "--config", QUICK, "--workdir", str(blocker / "run"), *TINY)
  one_line_error(code, err, "cannot write to workdir")


def test_checkpoint_of_another_family(capsys, tmp_path):
  code, _, _ = run(capsys, "train", "--config", QUICK, "--workdir", str(tmp_path), *TINY)
  assert code == 0
  code, _, err = run(capsys, "train", "--config", "experiments/vincent2008/dae.py:quick",
                     "--workdir", str(tmp_path), *TINY)
  one_line_error(code, err, "holds family 'vae'", "'autoencoder'")


def test_nan_loss_names_the_step(capsys, tmp_path):
  code, _, err = run(capsys, "train", "--config", QUICK, "--workdir", str(tmp_path), *TINY,
                     "--config.steps=60", "--config.log_every=1", "--config.optim.model.schedule=exponential",
                     "--config.optim.model.decay_steps=1", "--config.optim.model.decay_rate=10.0")
  one_line_error(code, err, "non-finite at step")


def test_train_eval_sample_list(capsys, tmp_path):
  code, out, _ = run(capsys, "train", "--config", QUICK, "--workdir", str(tmp_path), *TINY)
  assert code == 0 and "checkpoints:" in out and "samples:" in out and "tensorboard:" in out
  code, out, _ = run(capsys, "eval", "--workdir", str(tmp_path), "--split", "test", "--examples", "32", "--k", "10")
  assert code == 0
  metrics = json.loads(out.strip().splitlines()[-1])
  assert metrics["split"] == "test" and metrics["num_examples"] == 32 and metrics["k"] == 10
  assert metrics["nll_iwae10"] <= metrics["nll_elbo"] + 1.0
  code, out, _ = run(capsys, "eval", "--workdir", str(tmp_path), "--best", "--examples", "32")
  assert code == 0 and json.loads(out.strip().splitlines()[-1])["step"] == 2
  grid = tmp_path / "grid.png"
  code, out, _ = run(capsys, "sample", "--workdir", str(tmp_path), "--num", "9", "--out", str(grid))
  assert code == 0 and grid.is_file() and grid.stat().st_size > 100
  code, _, err = run(capsys, "sample", "--workdir", str(tmp_path), "--best", "--step", "2")
  one_line_error(code, err, "give one")
  code, out, _ = run(capsys, "list")
  assert code == 0 and "vae" in out and "autoencoder" in out and "kingma2013/vae.py" in out
  code, _, err = run(capsys, "eval", "--workdir", str(tmp_path / "none"))
  one_line_error(code, err, "no checkpoint")
  # a newer checkpoint whose meta names step 2 as the best, and step 2 gone (deleted by hand, say)
  shutil.copytree(tmp_path / "checkpoints" / "2", tmp_path / "checkpoints" / "3")
  shutil.rmtree(tmp_path / "checkpoints" / "2")
  code, _, err = run(capsys, "eval", "--workdir", str(tmp_path), "--best")
  one_line_error(code, err, "best checkpoint, step 2", "no longer on disk")
  # sample takes the same choice: the newest loads, the best (gone) fails in one line
  code, _, _ = run(capsys, "sample", "--workdir", str(tmp_path), "--num", "4", "--out", str(grid))
  assert code == 0
  code, _, err = run(capsys, "sample", "--workdir", str(tmp_path), "--num", "4", "--out", str(grid), "--best")
  one_line_error(code, err, "best checkpoint, step 2", "no longer on disk")


def test_bench_prints_one_json_line(capsys):
  code, out, _ = run(capsys, "bench", "--config", "experiments/benchmarks/vae_mlp.py", "--batch", "32",
                     "--steps", "5", "--warmup", "1")
  assert code == 0
  line = json.loads(out.strip().splitlines()[-1])
  assert line["examples_per_s"] > 0 and line["batch_size"] == 32 and line["device_count"] >= 1
  assert {"compile_s", "device_kind", "platform"} <= set(line)


@pytest.mark.slow
def test_bench_times_a_staged_family_at_the_stage_asked_for(capsys):
  """``zoo bench --stage``: the Progressive GAN's step at its second stage (8x8, fading in) is another program
  than at its first (4x4), and the line says which stage it timed; a stage it does not have fails in one
  line. (Two compiles of the step: ~15 s.)"""
  config = "experiments/karras2017/progan_mnist.py:quick"
  lines = []
  for stage in ("0", "1"):
    code, out, _ = run(capsys, "bench", "--config", config, "--batch", "8", "--steps", "1", "--warmup", "1",
                       "--stage", stage)
    assert code == 0
    lines.append(json.loads(out.strip().splitlines()[-1]))
  assert [line["stage"] for line in lines] == [0, 1] and lines[0]["program"] != lines[1]["program"]
  code, _, err = run(capsys, "bench", "--config", config, "--batch", "8", "--steps", "1", "--stage", "99")
  one_line_error(code, err, "stage 99", "progan")


@pytest.mark.slow
def test_ab_step_times_two_formulations_of_one_step(tmp_path):
  """experiments/benchmarks/ab_step.py builds the step under each threshold value and reports both rates
  and their within-round ratio (the DCGAN step's strided and transposed convolutions with their custom
  gradients and with XLA's own; the MNIST DCGAN's quick widths: 9 s here, where the benchmark's DCGAN32 took 15)."""
  out = tmp_path / "ab.jsonl"
  subprocess.run([sys.executable, "experiments/benchmarks/ab_step.py", "--config",
                  "experiments/radford2015/dcgan_mnist.py:quick", "--batch", "8", "--threshold", "_XLA_OWN_STRIDED_GRADIENTS",
                  "--values", "0", "1", "--steps", "1", "--repeats", "1", "--out", str(out)],
                 check=True, capture_output=True, timeout=300)
  (row,) = [json.loads(line) for line in out.read_text().splitlines()]
  rates = [row[f"_XLA_OWN_STRIDED_GRADIENTS={v}_examples_per_s"] for v in (0, 1)]
  assert min(rates) > 0 and row["b_over_a"] > 0 and row["values"] == [0, 1] and row["batch_size"] == 8
  assert row["programs"][0] != row["programs"][1]      # two formulations, not one program timed twice


@pytest.mark.slow
def test_ab_options_times_a_function_with_and_without_the_cpu_options(tmp_path):
  """experiments/benchmarks/ab_options.py builds the MLP VAE's eval step, then its sampler, with and without
  the CPU options (two programs each: YNNPACK's dots against XLA's) and reports both rates and their ratio:
  both functions in one process, a line each."""
  out = tmp_path / "ab.jsonl"
  subprocess.run([sys.executable, "experiments/benchmarks/ab_options.py", "--config", QUICK, "--fn", "eval", "sample",
                  "--batch", "8", "--repeats", "1", "--out", str(out)], check=True, capture_output=True, timeout=300)
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["fn"] for r in rows] == ["eval", "sample"]
  for r in rows:
    assert min(r["defaults_examples_per_s"], r["options_examples_per_s"]) > 0 and r["options_over_defaults"] > 0
    assert r["programs"][0] != r["programs"][1]


def test_ab_features_times_the_extraction_with_and_without_the_cpu_options(tmp_path):
  """experiments/benchmarks/ab_features.py builds the digit classifier's extraction with and without the CPU
  options (two programs) and reports both rates and their within-round ratio."""
  out = tmp_path / "ab.jsonl"
  subprocess.run([sys.executable, "experiments/benchmarks/ab_features.py", "--extractor", "digits", "--batch", "8",
                  "--repeats", "1", "--out", str(out)], check=True, capture_output=True, timeout=300)
  (row,) = [json.loads(line) for line in out.read_text().splitlines()]
  assert min(row["defaults_examples_per_s"], row["options_examples_per_s"]) > 0 and row["options_over_defaults"] > 0
  assert row["programs"][0] != row["programs"][1] and row["weights"] == "shipped" and row["batch_size"] == 8


@pytest.mark.slow
def test_ab_step_refuses_a_threshold_that_changes_nothing(tmp_path):
  """The PixelCNN has no strided or transposed convolution: the phase threshold leaves its step as it is,
  and ab_step.py says so instead of timing one program twice."""
  proc = subprocess.run([sys.executable, "experiments/benchmarks/ab_step.py", "--config",
                         "experiments/benchmarks/pixelcnn28.py", "--batch", "8", "--threshold",
                         "_PHASE_MIN_FEATURES", "--values", "16", "17", "--steps", "1", "--repeats", "1",
                         "--set", "model.blocks=1"],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0 and "same program" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow
def test_sample_complete_keeps_the_observed_half_and_fails_clearly_where_it_cannot(capsys, tmp_path):
  run_dir = tmp_path / "pixelcnn"
  code, _, _ = run(capsys, "train", "--config", "experiments/vandenoord2016/pixelcnn.py:quick", "--workdir",
                   str(run_dir), *TINY)
  assert code == 0
  grid, npy = tmp_path / "completed.png", tmp_path / "completed.npy"
  code, out, _ = run(capsys, "sample", "--workdir", str(run_dir), "--complete", "bottom", "--num", "4",
                     "--out", str(grid), "--npy", str(npy))
  assert code == 0 and grid.is_file() and "exact conditional" in out, out
  import zoo
  from zoo import data as data_lib
  originals = data_lib.load(zoo.load(run_dir).config.data).batch("test", 0, 4, seed=0)["image"]
  filled = np.load(npy)
  np.testing.assert_array_equal(filled[:, :14], originals[:, :14])
  assert set(np.unique(filled)) <= {0.0, 1.0}
  code, _, err = run(capsys, "sample", "--workdir", str(run_dir), "--complete", "diagonal", "--num", "2",
                     "--out", str(grid))
  one_line_error(code, err, "unknown completion mask")
  vae_dir = tmp_path / "vae"
  assert run(capsys, "train", "--config", QUICK, "--workdir", str(vae_dir), *TINY)[0] == 0
  code, _, err = run(capsys, "sample", "--workdir", str(vae_dir), "--complete", "bottom", "--out", str(grid))
  one_line_error(code, err, "cannot complete")
  code, _, err = run(capsys, "sample", "--workdir", str(vae_dir), "--naive", "--out", str(grid))
  one_line_error(code, err, "not autoregressive")


def test_cpu_devices_splits_the_cpu(capsys):
  env = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=0"}
  done = subprocess.run([sys.executable, "-m", "zoo", "--cpu-devices", "3", "list"], env=env,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "devices: 3 x cpu (cpu)" in done.stdout
  code, _, err = run(capsys, "--cpu-devices", "-1", "list")
  assert code == 2 and "--cpu-devices must be >= 1" in err


def test_cpu_model_reads_the_model_and_vector_extensions(tmp_path):
  from zoo.bench import cpu_model
  info = tmp_path / "cpuinfo"
  info.write_text("processor\t: 0\ncpu family\t: 6\nmodel\t\t: 143\nmodel name\t: Intel(R) Xeon(R) Processor\n"
                  "flags\t\t: fpu sse2 avx2 fma avx512f avx512bw\n\nprocessor\t: 1\n")
  assert cpu_model(str(info)) == {"cpu_model": "Intel(R) Xeon(R) Processor (family 6 model 143)",
                                  "cpu_vector_isa": "avx2 avx512f"}
  info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2\n")
  assert cpu_model(str(info))["cpu_vector_isa"] == "avx2"
  assert cpu_model(str(tmp_path / "absent")) == {"cpu_model": "", "cpu_vector_isa": ""}


def test_torch_device_picks_where_the_twin_runs():
  pytest.importorskip("torch")
  from zoo.bench import torch_device
  assert torch_device("auto") == "cpu"        # JAX runs on the CPU here
  assert torch_device("cpu") == "cpu"
  import torch
  if not torch.cuda.is_available():
    with pytest.raises(SystemExit, match="sees no CUDA device"):
      torch_device("cuda")
  with pytest.raises(ValueError, match="auto, cpu or cuda"):
    torch_device("tpu")


def test_compare_pixelcnn28_times_the_step_beside_its_pytorch_twin(tmp_path):
  """The compare script's command line in one process: a row per batch with both rates and their ratio,
  and where the twin ran."""
  pytest.importorskip("torch")
  compare_pixelcnn28 = experiment_module("compare_pixelcnn28")
  out = tmp_path / "r.json"
  result = compare_pixelcnn28.main(["--batches", "8", "--repeats", "1", "--examples", "8", "--torch-threads", "0",
                                    "--torch-device", "cpu", "--out", str(out)])
  assert json.loads(out.read_text()) == result
  assert result["torch_device"] == "cpu" and [r["batch_size"] for r in result["rows"]] == [8]
  row = result["rows"][0]
  assert row["zoo_examples_per_s"] > 0 and row["torch_examples_per_s"] > 0
  assert row["zoo_over_torch"] == pytest.approx(row["zoo_rounds"][0] / row["torch_rounds"][0], rel=0.01)


def test_the_native_transpose_probe_builds_and_is_exact(tmp_path):
  """experiments/native/bench_transpose.py: where a C++ compiler and AVX-512 are there, the custom call is
  the exact transpose (it exits otherwise) and the weight gradient through it equals XLA's; elsewhere it
  stops with one line naming what is missing."""
  bench_transpose = experiment_module("bench_transpose", "experiments/native")
  try:
    result = bench_transpose.main(["--batch", "16", "--rounds", "1", "--out", str(tmp_path / "r.json")])
  except SystemExit as e:
    assert "C++ compiler" in str(e) or "AVX-512" in str(e), e
    return
  grad = result["weight_grad_2x3_box"]
  assert grad["max_rel_diff"] == 0.0 and grad["convolution_reads_the_custom_call"]
  assert json.loads((tmp_path / "r.json").read_text())["batch"] == 16


def test_profile_step_splits_the_wall_clock_among_concurrent_operations():
  """Overlapping operations share the instants they run together; the shares add up to the busy time,
  and a gap with nothing running is nobody's."""
  ps = experiment_module("profile_step")
  share, busy = ps.shares([(0, 10, "a"), (5, 15, "b"), (20, 30, "a.1")])
  assert share == pytest.approx({"a": 7.5, "b": 7.5, "a.1": 10.0})
  assert busy == 25 and sum(share.values()) == pytest.approx(busy)
  assert ps.kind_of("convolution.12") == "convolution" and ps.kind_of("cond.23.clone") == "cond"
  hlo = ('  %convolution.3 = f32[64,2,3,64]{3,2,1,0} convolution(%a, %b), window={size=28x28}\n'
         '  ROOT %add.1 = f32[8]{0} add(%x, %y), metadata={op_name="jit(f)/add" stack_frame_id=3}\n')
  assert ps.hlo_ops(hlo) == {"convolution.3": ("f32[64,2,3,64] convolution", ""),
                             "add.1": ("f32[8] add", "jit(f)/add")}


def test_profile_step_breaks_a_step_down_by_operation(tmp_path):
  """The profiler script on the PixelCNN benchmark's step: its convolutions are found and named, and the
  operations' shares add up to the time they ran."""
  ps = experiment_module("profile_step")
  out = tmp_path / "p.json"
  result = ps.main(["--config", "experiments/benchmarks/pixelcnn28.py", "--batch", "8", "--steps", "2",
                    "--top", "3", "--out", str(out)])
  assert json.loads(out.read_text())["ops"] == result["ops"]
  # 7x7 mask A forward and weight gradient, each block's forward and both gradients (XLA names them
  # convolution.N or conv_general_dilated.N)
  assert sum(k["ops"] for k in result["kinds"] if k["kind"].startswith("conv")) >= 2 + 10 * 3
  assert sum(op["share_ms"] for op in result["ops"]) == pytest.approx(result["busy_ms_per_step"], rel=0.01)
  assert result["busy_ms_per_step"] <= result["traced_ms_per_step"] + 1e-3
  assert any("block_0" in op["jax_op"] for op in result["ops"])


def test_conv_layers_records_every_convolution_of_a_familys_train_step():
  """experiments/benchmarks/conv_layers.py --families: the distinct convolutions that a config's train step
  makes, recorded while tracing it, with their masks; the recording leaves ``_layers`` as it was."""
  conv_layers = experiment_module("conv_layers")
  from zoo.models import _layers
  conv, conv_t = _layers.conv2d, _layers.conv_transpose2d
  # the quick DCGAN: G 7x7x32 -> 14x14x16 -> 28x28x1 (transposed), D 28x28x1 -> 14x14x16 -> 7x7x32
  layers = conv_layers.recorded_layers("experiments/radford2015/dcgan_mnist.py:quick")
  assert [(la.kind, la.in_shape, la.kernel, la.stride, la.c_out) for la in layers] == [
      ("convT", (7, 7, 32), (4, 4), 2, 16), ("convT", (14, 14, 16), (4, 4), 2, 1),
      ("conv", (28, 28, 1), (4, 4), 2, 16), ("conv", (14, 14, 16), (4, 4), 2, 32)]
  assert all(la.batches == (64,) and la.mask is None and la.padding == "SAME" for la in layers)
  assert layers[0].name == "dcgan_mnist T4x4/2 32->16 @7"
  # the quick PixelCNN (16 features, 2 blocks): its masks come along, the 3x3 mask B's 5 open taps of 9
  masked = conv_layers.recorded_layers("experiments/vandenoord2016/pixelcnn.py:quick")
  by_kernel = {la.kernel: la for la in masked}
  assert set(by_kernel) == {(7, 7), (3, 3), (1, 1)}
  b3 = by_kernel[(3, 3)]
  assert b3.mask.shape == (3, 3, 16, 16) and b3.mask.reshape(9, -1).any(-1).sum() == 5 and "5 taps" in b3.name
  assert b3.flops(64, (28, 28)) == 2 * 64 * 28 * 28 * int(b3.mask.sum())
  assert (_layers.conv2d, _layers.conv_transpose2d) == (conv, conv_t)


def test_conv_layers_takes_a_family_config_named_alone_with_its_overrides():
  """--families (and ab_kernels.py's): the VAE's config named alone is its convolutional variant, as in
  FAMILY_CONFIGS; entries of FAMILY_CONFIGS and other paths pass as they are."""
  conv_layers = experiment_module("conv_layers")
  vae = conv_layers.family_spec("experiments/kingma2013/vae.py")
  assert vae[0] == "experiments/kingma2013/vae.py" and vae in conv_layers.FAMILY_CONFIGS and vae[1]
  assert all(conv_layers.family_spec(spec) == spec for spec in conv_layers.FAMILY_CONFIGS)
  assert conv_layers.family_spec("experiments/vandenoord2016/pixelcnn.py") == "experiments/vandenoord2016/pixelcnn.py"


def test_conv_layers_saves_layers_that_load_back_without_pickle(tmp_path):
  """conv_layers.py --save-layers (read by cpu_gpu_parity.py --layers-file on a machine without the configs'
  data): every field and mask comes back as it was, in a file named as given; a file that is not one, or a
  mask that does not fit its kernel, fails with one ValueError naming the file."""
  conv_layers = experiment_module("conv_layers")
  path = tmp_path / "layers.bin"
  conv_layers.save_layers(conv_layers.LAYERS, path)
  back = conv_layers.load_layers(path)
  assert len(back) == len(conv_layers.LAYERS) and path.is_file()
  for a, b in zip(conv_layers.LAYERS, back):
    assert a._replace(mask=None) == b._replace(mask=None)
    assert (a.mask is None and b.mask is None) or np.array_equal(a.mask, b.mask)
  assert any(b.mask is not None for b in back) and any(isinstance(b.padding, tuple) for b in back)
  (tmp_path / "junk").write_bytes(b"not an npz")
  with pytest.raises(ValueError, match="junk: not a layers file"):
    conv_layers.load_layers(tmp_path / "junk")
  bad = conv_layers.LAYERS[8]._replace(mask=np.ones((3, 3, 1, 64), np.float32))     # the 7x7 mask A's shape is 7x7
  conv_layers.save_layers([bad], tmp_path / "bad")
  with pytest.raises(ValueError, match="mask"):
    conv_layers.load_layers(tmp_path / "bad")


def test_trace_step_traces_both_ways_into_the_same_program(monkeypatch):
  """experiments/benchmarks/trace_step.py's measurement, in this process: the PixelCNN28 step traced with the
  layers' CPU formulations alone and under ``lax.platform_dependent`` beside XLA's compiles to the same HLO
  instructions; the phases are timed; the instructions' text leaves out metadata and names' numbers."""
  trace_step = experiment_module("trace_step")
  from zoo.models import _layers
  monkeypatch.setattr(_layers, "_TRACE_CPU_ONLY", 1)
  args = argparse.Namespace(config="experiments/benchmarks/pixelcnn28.py", set=[], batch=8, stage=None)
  runs = [trace_step.measure(argparse.Namespace(**vars(args), child=setting)) for setting in (1, 0)]
  assert runs[0]["program"] == runs[1]["program"] and trace_step.sameness(runs) == "identical"
  assert trace_step.sameness([runs[0], {**runs[1], "program": "x"}]) == "reordered"
  assert trace_step.sameness([runs[0], {"program": "x", "unordered": "y"}]) == "different"
  assert all(r[p] > 0 for r in runs for p in trace_step.PHASES) and runs[0]["batch_size"] == 8
  assert trace_step.instructions('%add.12 = f32[] add(%a.1, %b.2), metadata={op_name="x"}\nFileNames\n'
                                 '%c.3 = f32[] constant(0.25)') == "%add = f32[] add(%a, %b), \n%c = f32[] constant(0.25)"
