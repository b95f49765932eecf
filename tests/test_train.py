"""The trainer end to end (in-process): outputs, resume, best/last checkpoints, device layouts, NaN stop."""
from __future__ import annotations

import json
import re

import jax
import numpy as np
import pytest

import zoo
from helpers import tiny_config, tree_equal
from zoo.errors import CheckpointError, TrainingError


def _train(workdir, **overrides):
  return zoo.train_and_evaluate(tiny_config("vae", **overrides), workdir, progress=False)


def test_a_run_leaves_checkpoints_samples_logs_and_results(tmp_path):
  res = _train(tmp_path, steps=6, eval_every=3, checkpoint_every=3)
  assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [3, 6]
  assert (tmp_path / "samples.png").is_file() and (tmp_path / "samples" / "step_0000006.png").is_file()
  (events,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
  on_disk = json.loads((tmp_path / "results.json").read_text())
  assert on_disk["steps"] == res["steps"] == 6 and on_disk["family"] == res["family"] == "vae"
  ev = on_disk["eval"]["valid"]
  assert ev["num_examples"] == 64 and 0 < ev["nll"] < 784 * np.log(2) * 2
  assert on_disk["best"]["step"] in (3, 6)
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert {l["split"] for l in lines} == {"train", "valid"}
  # TensorBoard's event file holds the same scalars, read here with tensorboardX's protobuf classes and CRC
  logged = {(l["step"], f"{l['split']}/{k}"): v for l in lines for k, v in l.items() if k not in ("step", "split")}
  assert _read_events(events) == pytest.approx(logged, rel=1e-6)


def _read_events(path) -> dict[tuple[int, str], float]:
  """{(step, tag): value} of an event file, each record's length and bytes checked against their CRCs."""
  import struct

  from tensorboardX.proto.event_pb2 import Event
  from tensorboardX.record_writer import masked_crc32c
  data, at, scalars, versions = path.read_bytes(), 0, {}, []
  while at < len(data):
    header = data[at:at + 8]
    (length,), (header_crc,) = struct.unpack("<Q", header), struct.unpack("<I", data[at + 8:at + 12])
    record = data[at + 12:at + 12 + length]
    (record_crc,) = struct.unpack("<I", data[at + 12 + length:at + 16 + length])
    assert header_crc == masked_crc32c(header) and record_crc == masked_crc32c(record)
    event = Event.FromString(record)
    assert event.wall_time > 0
    if event.file_version:
      versions.append(event.file_version)
    for value in event.summary.value:
      scalars[(event.step, value.tag)] = value.simple_value
    at += 16 + length
  assert versions == ["brain.Event:2"]
  return scalars


def test_event_records_check_as_tfrecords_do():
  from zoo import events
  assert events.crc32c(b"123456789") == 0xE3069283                  # CRC-32C's check value
  assert events._varint(300) == bytes([0xAC, 0x02]) and len(events._varint(-1)) == 10


def test_resume_in_process_matches_an_unbroken_run(tmp_path):
  _train(tmp_path / "whole", steps=6, checkpoint_every=3)
  _train(tmp_path / "split", steps=3, checkpoint_every=3)
  _train(tmp_path / "split", steps=6, checkpoint_every=3)     # resumes from step 3
  a, b = zoo.load(tmp_path / "whole"), zoo.load(tmp_path / "split")
  assert a.meta["step"] == b.meta["step"] == 6 and a.meta["data_position"] == b.meta["data_position"] == 6
  assert tree_equal(jax.device_get(a.state), jax.device_get(b.state))


def test_checkpoint_moves_between_8_and_1_devices(tmp_path):
  _train(tmp_path / "eight", steps=2, checkpoint_every=2, num_devices=8)
  one = zoo.load(tmp_path / "eight", num_devices=1)
  assert len(one.run.mesh.devices.flat) == 1
  assert one.state.params["model"]["encoder"]["out"]["kernel"].sharding.mesh.devices.size == 1
  _train(tmp_path / "one", steps=2, checkpoint_every=2, num_devices=1)
  eight = zoo.load(tmp_path / "one", num_devices=8)
  assert len(eight.state.step.sharding.device_set) == 8
  # and training goes on from a checkpoint written on another layout
  res = _train(tmp_path / "one", steps=4, checkpoint_every=2, num_devices=8)
  assert res["steps"] == 4


def test_keeps_the_last_k_and_the_best(tmp_path):
  _train(tmp_path, steps=10, eval_every=2, checkpoint_every=2, keep_checkpoints=2)
  results = json.loads((tmp_path / "results.json").read_text())
  steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert steps[-2:] == [8, 10]
  assert results["best"]["step"] in steps
  assert len(steps) <= 3


def test_the_best_checkpoint_survives_a_resumed_run(tmp_path):
  # A run killed after its best evaluation and resumed by a new process: the newer checkpoints, none of
  # them better, must not push the best one out (its metric has to be on disk, not only in memory).
  from zoo.checkpoint import Checkpointer

  state = {"w": np.zeros(3, np.float32)}
  first = Checkpointer(tmp_path, keep=2, best_metric="eval/nll")
  for step, nll in ((1, 80.0), (2, None), (3, 90.0)):
    first.save(step, state, {"step": step}, "{}", metrics=None if nll is None else {"eval/nll": nll})
  first.wait()
  first.close()
  resumed = Checkpointer(tmp_path, keep=2, best_metric="eval/nll")
  for step, nll in ((4, 95.0), (5, None), (6, None)):
    resumed.save(step, state, {"step": step}, "{}", metrics=None if nll is None else {"eval/nll": nll})
  resumed.wait()
  assert resumed.steps() == [1, 5, 6]
  resumed.close()


def test_non_finite_loss_stops_and_names_the_step(tmp_path):
  # the rate grows 10x a step from 1e-3: the loss overflows after a few good checkpoints
  diverge = {"optim.model.schedule": "exponential", "optim.model.decay_steps": 1,
             "optim.model.decay_rate": 10.0}
  with pytest.raises(TrainingError, match=r"non-finite at step \d+") as err:
    _train(tmp_path, steps=60, checkpoint_every=2, log_every=1, **diverge)
  msg = str(err.value)
  bad = int(re.search(r"non-finite at step (\d+)", msg).group(1))
  good = int(re.search(r"last good checkpoint is step (\d+)", msg).group(1))
  assert 2 <= good < bad
  steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert steps[-1] == good and all(s < bad for s in steps)
  loaded = zoo.load(tmp_path)
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves(loaded.state.params))


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
  _train(tmp_path, steps=4, checkpoint_every=2)
  newest = tmp_path / "checkpoints" / "4" / "state"
  for f in newest.rglob("*"):
    if f.is_file() and f.stat().st_size > 0 and "d" in f.parent.name:   # the array data files
      f.write_bytes(b"\0" * 7)
  res = _train(tmp_path, steps=6, checkpoint_every=2)
  assert res["steps"] == 6
  assert (tmp_path / "corrupt_checkpoints" / "4").is_dir()
  assert zoo.load(tmp_path).meta["step"] == 6


def test_a_checkpoint_of_another_family_is_refused(tmp_path):
  _train(tmp_path, steps=2, checkpoint_every=2)
  cfg = tiny_config("autoencoder", steps=4)
  with pytest.raises(CheckpointError, match=r"holds family 'vae'.*asks for family 'autoencoder'"):
    zoo.train_and_evaluate(cfg, tmp_path, progress=False)
  with pytest.raises(CheckpointError, match=r"wrong shape"):
    _train(tmp_path, steps=4, **{"model.latent_dim": 3})


def test_load_gives_a_usable_model(tmp_path):
  _train(tmp_path, steps=2, checkpoint_every=2)
  m = zoo.load(tmp_path)
  assert m.family.name == "vae" and m.config.family == "vae"
  x = m.sample(3)
  assert x.shape == (3, 28, 28, 1) and 0 <= x.min() and x.max() <= 1
  with pytest.raises(CheckpointError, match="no checkpoint"):
    zoo.load(tmp_path / "nothing_here")
