"""Training on a Dask cluster, from the client's side and from the workers'.

    probe        the workers: identity, host, GPU, memory; the ranks in order; device and communicator
    placement    the data where it is: sources, which logical shards each rank trains on, memory checks
    launch       ``fit(..., client=)``: plan, launch one pinned rank task per worker, restarts
    supervisor   follows the rank tasks: progress to the callbacks, failures, lost workers, Ctrl-C
    rank         the rank task on a worker: connect, load, replicate, run the training loop
    worker_env   what a rank changes on its worker while it runs (BLAS threads, monitoring)
    inference    ``evaluate``/``predict`` with ``client=``
    errors       WorkerLostError, SchedulerLostError, JobCancelled

Nothing here imports ``distributed`` at import time: ``import dtrain`` stays light, and the
Dask-side modules import it where they run.
"""
