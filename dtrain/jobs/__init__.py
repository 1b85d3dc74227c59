"""Training jobs described in files, run by a service on the Dask scheduler.

- :mod:`dtrain.jobs.spec`: job files (YAML or JSON): ``Job``, ``load_job``, ``job_from_dict``; callers import from it.
- :mod:`dtrain.jobs.problems`: ``Problem`` and ``JobError``, what is wrong with a job and where.
- :mod:`dtrain.jobs.reading`: reading YAML/JSON with the line of every key, ``--set`` overrides.
- :mod:`dtrain.jobs.schema`: the sections, their keys and defaults, and their validation.
- :mod:`dtrain.jobs.service`: the job service, a scheduler plugin that queues and runs jobs.
- :mod:`dtrain.jobs.client`: talking to the service from any process (the CLI, notebooks).
- :mod:`dtrain.jobs.outputs`: what a job writes (model, metrics, plot, record) and its report.
- :mod:`dtrain.jobs.tracking`: a job's MLflow run (``output.mlflow``): the check at submission, the callback.
"""
