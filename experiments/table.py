"""The README's family table, generated from the results JSON each experiment keeps beside its config.

  # after a full run and its test evaluation (``zoo eval ... > eval.json``), record the figures:
  python experiments/table.py record --config experiments/kingma2013/vae.py --workdir runs/kingma2013_vae --eval eval.json
  # then regenerate the table between the README's <!-- family-table --> markers:
  python experiments/table.py readme

An experiment config states what it is held against in a module-level ``REFERENCE`` dict (paper, metric,
value); ``record`` writes ``<config>.results.json`` with that, the run's results.json (steps, epochs, wall
time, machine) and the test evaluation, and copies the run's sample grid to ``<config>.samples.png``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent
BEGIN, END = "<!-- family-table -->", "<!-- /family-table -->"


def _reference(config: Path) -> dict:
  spec = importlib.util.spec_from_file_location("cfg", config)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return dict(getattr(module, "REFERENCE"))


def _machine() -> str:
  import os
  return f"{platform.machine()} CPU, {os.cpu_count()} cores"


def _stopped_run(workdir: Path, test: dict, wall_s: float | None) -> dict:
  """What results.json would say of a run stopped before its end (killed at a time budget's deadline).

  The steps are those of the evaluated checkpoint; the training time is that checkpoint's (from its
  metadata) or, where the checkpoints did not come back from the machine that ran it, ``wall_s``.
  """
  config = json.loads((workdir / "config.json").read_text())
  meta_file = workdir / "checkpoints" / str(test["step"]) / "meta" / "metadata"
  meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
  if "elapsed_s" not in meta and wall_s is None:
    raise SystemExit(f"{meta_file} is missing: give --wall-s, the run's training time to step {test['step']}")
  from zoo import data as data_lib
  train_size = data_lib.load(config["data"]).num_examples(config.get("train_split", "train"))
  return {"family": config["family"], "steps": test["step"], "wall_time_s": meta.get("elapsed_s", wall_s),
          "epochs": test["step"] * config["batch_size"] / train_size, "best": meta.get("best"),
          "steps_note": f"stopped at a time budget (planned {config['steps']:,})"}


def record(config: Path, workdir: Path, eval_json: Path, machine: str | None = None,
           wall_s: float | None = None, note: str | None = None) -> Path:
  """Writes ``<config>.results.json``; ``machine`` names where the run ran when that was not here.

  ``note`` goes beside the steps in the table (e.g. a run planned shorter than its config).
  """
  lines = [l for l in eval_json.read_text().splitlines() if l.strip().startswith("{")]
  test = json.loads(lines[-1])
  if (workdir / "results.json").is_file():
    run = json.loads((workdir / "results.json").read_text())
  elif machine is None:
    raise SystemExit(f"{workdir} has no results.json (a stopped run): give --machine, where it ran")
  else:
    run = _stopped_run(workdir, test, wall_s)
  if note:
    run["steps_note"] = "; ".join(filter(None, [run.get("steps_note"), note]))
  ref = _reference(config)
  out = config.with_suffix(".results.json")
  rel = config.resolve().relative_to(ROOT)
  entry = {
      "experiment": str(rel), "family": run["family"], "reference": ref,
      "ours": {"value": test[ref["key"]], "split": test["split"], "step": test["step"],
               **({"k": test["k"]} if "k" in test else {})},
      "test_eval": {k: v for k, v in test.items() if k != "workdir"}, "steps": run["steps"], "epochs": round(run["epochs"], 1),
      "wall_time_s": round(run["wall_time_s"]), "machine": machine or f"{_machine()} ({run['device_kind']})",
      "best": run.get("best"),
      **({"steps_note": run["steps_note"]} if run.get("steps_note") else {}),
      "command": f"zoo train --config experiments/{rel} --workdir runs/{rel.parent.name}_{rel.stem}",
  }
  out.write_text(json.dumps(entry, indent=2) + "\n")
  grid = workdir / "samples.png"
  if grid.is_file():
    shutil.copy(grid, config.with_suffix(".samples.png"))
  return out


def _duration(seconds: float) -> str:
  return f"{seconds / 3600:.1f} h" if seconds >= 3000 else f"{seconds / 60:.0f} min"


def table() -> str:
  rows = ["| family | paper | data | ours | paper's | steps (epochs) | wall time, machine | command |",
          "|---|---|---|---|---|---|---|---|"]
  for f in sorted(ROOT.rglob("*.results.json")):
    e = json.loads(f.read_text())
    ref = e["reference"]
    best = f"; evaluated at step {e['ours']['step']:,}" if e["ours"]["step"] != e["steps"] else ""
    best += f"; {e['steps_note']}" if e.get("steps_note") else ""     # e.g. a layer taken from another run
    also = "".join(f"; {e['test_eval'][k]:.2f} {label}" for k, label in ref.get("also", {}).items()
                   if k in e["test_eval"])
    rows.append(
        f"| `{e['family']}` | {ref['paper']} | {ref['data']} | **{e['ours']['value']:.2f}** {ref['metric']}{also} | "
        f"{ref['value']} | {e['steps']:,} ({e['epochs']:g}){best} | {_duration(e['wall_time_s'])}, {e['machine']} | "
        f"`{e['command']}` |")
  return "\n".join(rows)


def readme(path: Path) -> None:
  text = path.read_text()
  start, stop = text.index(BEGIN) + len(BEGIN), text.index(END)
  path.write_text(text[:start] + "\n" + table() + "\n" + text[stop:])


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  sub = p.add_subparsers(dest="cmd", required=True)
  r = sub.add_parser("record")
  r.add_argument("--config", required=True, type=Path)
  r.add_argument("--workdir", required=True, type=Path)
  r.add_argument("--eval", required=True, type=Path)
  r.add_argument("--machine", default=None, help="where the run ran, if not on this machine")
  r.add_argument("--wall-s", type=float, default=None,
                 help="training time of a stopped run whose checkpoint metadata did not come back")
  r.add_argument("--note", default=None, help="said beside the run's steps in the table")
  m = sub.add_parser("readme")
  m.add_argument("--path", type=Path, default=ROOT.parent / "README.md")
  args = p.parse_args()
  if args.cmd == "record":
    print(record(args.config, args.workdir, args.eval, args.machine, args.wall_s, args.note))
  else:
    readme(args.path)
    print(table())


if __name__ == "__main__":
  main()
