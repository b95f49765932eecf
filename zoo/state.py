"""TrainState: everything a run needs to continue exactly, as one flax.struct pytree."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
  """The state of a run; a pytree of arrays, replicated over the mesh and saved whole by Orbax.

  Attributes:
    step: int32 scalar, the number of train steps taken.
    rng: the run's base key (uint32[2]); step ``s`` uses ``fold_in(rng, s)``, so a resumed run draws
      exactly the numbers an unbroken one would.
    params: {player: params tree}.
    opt_state: {player: optax state}.
    nontrainable: {collection: tree}: batch statistics, persistent chains, running moments.
    ema: {player: params tree} for the players with an exponential moving average; {} otherwise.
  """
  step: jax.Array
  rng: jax.Array
  params: dict[str, Any]
  opt_state: dict[str, Any]
  nontrainable: dict[str, Any]
  ema: dict[str, Any]

  def variables(self, use_ema: bool = False) -> dict[str, Any]:
    """The family-facing variables ``{"params": {...}, **nontrainable}``, EMA params where asked."""
    params = dict(self.params)
    if use_ema:
      params.update(self.ema)
    return {"params": params, **self.nontrainable}
