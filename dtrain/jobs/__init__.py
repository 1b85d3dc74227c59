"""Training jobs described in files, run by a service on the Dask scheduler.

- :mod:`dtrain.jobs.spec`: job files (YAML or JSON): loading, ``--set`` overrides, validation.
- :mod:`dtrain.jobs.service`: the job service, a scheduler plugin that queues and runs jobs.
- :mod:`dtrain.jobs.client`: talking to the service from any process (the CLI, notebooks).
- :mod:`dtrain.jobs.outputs`: what a job writes (model, metrics, plot, record) and its report.
"""
