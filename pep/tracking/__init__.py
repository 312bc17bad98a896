"""MLflow, in one place: the runs the stages record into, the logged and registered models, and
where their artifacts live.

  store.py      the tracking URI, opening the store, retrying calls a busy sqlite file refuses
  runs.py       Tracker: the run of one (variant, seed) that training and evaluation share
  compare.py    `pep compare`: the experiment's runs side by side
  model.py      a trained model as an MLflow pyfunc model, and loading one back
  entry.py      the file MLflow builds a logged model from ("models from code")
  artifacts.py  MLflow's artifact repository for paths relative to the project's store

Nothing here imports pep.engine: the stages take a Tracker from their caller (pep.cli) and hand
it what to record, as detectron2's trainer hands its event storage to writers. What both sides
need (the parameter hash, the model's settings) lives below both, in pep.stage_settings.
MLflow itself is imported lazily, in the functions that call it, except by model.py, entry.py
and artifacts.py, which only MLflow-facing code imports.
"""
