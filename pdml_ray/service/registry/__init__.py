"""The MLflow model registry, one concept per module:

- ``model_uri``: reading ``models:/NAME@ALIAS``, ``models:/NAME/VERSION|latest`` and
  ``runs:/RUN_ID/PATH``, and finding the version one names (or the newest one);
- ``register``: registering a logged model and the champion rule (the alias moves
  only to a better val mIoU);
- ``aliases``: moving and removing aliases by hand (``jobs.registry promote/demote``);
- ``load``: downloading a model's weights and config and building a ``SceneParser``;
- ``describe``: the versions of a model and what one of them was trained with;
- ``evaluate``: logging an evaluation's scores and report as an MLflow run;
- ``pyfunc_log``: a trained model written as a pyfunc (data only);
- ``pyfunc_model``: the loader module MLflow calls to load it back.
"""
