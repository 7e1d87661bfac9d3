"""Batch inference on Ray Data: images stream from a folder or object storage through an
actor pool holding one model per actor.

    sources.py   where images are read from (a local folder or any pyarrow filesystem)
    suggest.py   scoring a split for the next clicks (jobs.suggest)
    round_log.py one suggestion round as an MLflow run
"""
