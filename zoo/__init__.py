"""The zoo: a JAX model zoo of generative models on one shared train step.

>>> import zoo
>>> "vae" in zoo.families()
True
"""
from zoo.config import load as load_config
from zoo.errors import CheckpointError, ConfigError, DataError, TrainingError, ZooError
from zoo.family import EXACT, LOWER_BOUND, STOCHASTIC_ESTIMATE, Family, bits_per_dim
from zoo.registry import get, names as families, register
from zoo.state import TrainState
from zoo.train import Loaded, evaluate, load, train_and_evaluate

__version__ = "0.1.0"


def train(config, workdir=None, progress: bool = True) -> dict:
  """Trains a config (a ConfigDict, or a path such as 'experiments/kingma2013/vae.py:quick').

  The workdir defaults to runs/<experiment name>.
  """
  if isinstance(config, str):
    config = load_config(config)
  if workdir is None:
    name = (config.get("experiment") or config.family).replace("/", "_").replace(".py", "").replace(":", "_")
    workdir = f"runs/{name}"
  return train_and_evaluate(config, workdir, progress=progress)


__all__ = [
    "CheckpointError", "ConfigError", "DataError", "EXACT", "Family", "LOWER_BOUND", "Loaded",
    "STOCHASTIC_ESTIMATE", "TrainState", "TrainingError", "ZooError", "bits_per_dim", "evaluate",
    "families", "get", "load", "load_config", "register", "train", "train_and_evaluate",
]
