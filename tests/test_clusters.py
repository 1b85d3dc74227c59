"""dtrain.clusters: the Dask settings of the clusters dtrain starts, on real LocalClusters."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import dtrain
from dtrain.clusters import TRAINING_DASK_CONFIG, training_config, training_environment

dask = pytest.importorskip("dask")
pytest.importorskip("distributed")


def _tick(dask_worker):
    return dask_worker.periodic_callbacks["tick"].callback_time


@pytest.mark.cluster
def test_local_cluster_ticks_every_second_on_every_server_even_after_a_restart():
    from distributed import Client

    with dtrain.local_cluster(2, dashboard_address=":0") as cluster, Client(cluster, set_as_default=False) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        assert cluster.scheduler.periodic_callbacks["tick"].callback_time == 1000
        assert all(nanny.periodic_callbacks["tick"].callback_time == 1000 for nanny in cluster.workers.values())
        assert set(client.run(_tick).values()) == {1000}
        assert set(client.run(lambda dask_worker: dask_worker.state.nthreads).values()) == {1}
        client.restart()  # the nannies start new worker processes: same settings
        assert set(client.run(_tick).values()) == {1000}


@pytest.mark.cluster
def test_a_tick_you_configured_yourself_is_kept():
    from distributed import Client

    with dask.config.set({"distributed.admin.tick.interval": "50ms"}):
        assert training_config() == {}
        with (
            dtrain.local_cluster(1, dashboard_address=":0") as cluster,
            Client(cluster, set_as_default=False) as client,
        ):
            assert cluster.scheduler.periodic_callbacks["tick"].callback_time == 50
            assert set(client.run(_tick).values()) == {50}


def test_the_environment_form_names_the_same_settings_and_leaves_yours():
    env = training_environment({})
    assert env == {"DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL": "1s"}
    assert training_environment({"DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL": "5ms"}) == {}
    # a Dask process started with them reads them back as the same settings
    out = subprocess.run(
        [sys.executable, "-c", "import dask; print(dask.config.get('distributed.admin.tick.interval'))"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == TRAINING_DASK_CONFIG["distributed.admin.tick.interval"]
