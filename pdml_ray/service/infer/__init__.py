"""Batch inference on Ray Data: images stream from a folder or object storage through an
actor pool holding one model per actor.

    actor_pool.py the model each actor builds once, the pool's default size
    sources.py    where images are read from (a local folder or any pyarrow filesystem)
    suggest.py    scoring a split for the next clicks (jobs.suggest)
    round.py      one suggestion round: score, pick, write, log (round_log.py: to MLflow)
    predict.py    jobs.predict's many files: read on the driver's node, written there
"""
