"""The bench at scale (benchmarks/bench_scale.py): a suite run end to end by bench workers whose training alone is
faked, so thousands of trials pass through the real claim, heartbeat, requeue and tell code in minutes.

    fake_trainer.py   a trial: a drawn sleep and a synthetic loss curve, told as the worker tells a real one
    suites.py         the synthetic suite (N trials over S studies) and subsets of a shipped suite
    probe.py          SQL statements and seconds of each claim, counted in the worker process
    pool.py           worker processes (claim, heartbeat, train, tell) and the supervisor that kills them
    audit.py          after a run: every planned trial finished once, none lost, duplicated or left running
    storages.py       a fresh SQLite file or PostgreSQL schema per run
    table.py          the figures of a run, the saturation point and the cluster extrapolation
"""
