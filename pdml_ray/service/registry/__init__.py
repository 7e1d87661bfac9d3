"""The MLflow model registry, one concept per module:

- ``model_uri``: reading ``models:/NAME@ALIAS``, ``models:/NAME/VERSION|latest`` and
  ``runs:/RUN_ID/PATH``, and finding the version one names (or the newest one);
- ``register``: registering a logged model and the champion rule (the alias moves
  only to a better val mIoU);
- ``aliases``: moving and removing aliases by hand (``jobs.registry promote/demote``);
- ``load``: downloading a model's weights and config and building a ``SceneParser``;
- ``describe``: the versions of a model and what one of them was trained with;
- ``evaluate``: logging an evaluation's scores and report as an MLflow run.

How a trained model is written as a pyfunc is ``service/pyfunc_log.py``; how MLflow
loads it back is ``service/pyfunc_model.py``.
"""
