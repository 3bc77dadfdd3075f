import os

import numpy as np
import pytest
import torch


def pytest_configure(config):
    """Under pytest-xdist (`make test`: 2 workers on 2 cores) each worker and the `fond` processes it starts
    compute with one thread, pinned to the worker's own core: threads and processes of one worker that spin on
    the other's core made the long tests 4–10× slower (the Gabor-learning test: 66 s on one quiet core, 600 s
    in the suite). Measured here: the whole suite 964 s with one thread per worker, 303 s pinned (CI had 2105 s)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ.setdefault(name, "1")
        torch.set_num_threads(1)
        _pin_to_own_cores(worker, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))


def _pin_to_own_cores(worker: str, count: int) -> None:
    """Worker gwI (and every thread and process it starts) runs on its own share of the cores, so a test that
    spawns processes or spinning threads slows only its own worker's tests."""
    cpus = sorted(os.sched_getaffinity(0))
    if count < 2 or len(cpus) < count or not worker.startswith("gw"):
        return
    share = set(cpus[int(worker[2:]) % count::count])
    for thread in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(thread), share)
        except OSError:
            pass


@pytest.fixture
def tiny_model():
    """A small iP-VAE (D = 16, K = 24) with a dictionary large enough to drive spikes."""
    from fond import IPVAE

    model = IPVAE(16, 24, seed=3, init_scale=0.3)
    with torch.no_grad():
        model.log_bias.fill_(-2.0)
    return model


@pytest.fixture
def tiny_data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((64, 16)).astype(np.float32)


@pytest.fixture(scope="session")
def sweep_patches(tmp_path_factory):
    """A .npy file of 300 sparse-coded 16-dimensional inputs: data for tiny sweeps (local and Ray)."""
    rng = np.random.default_rng(0)
    x = (rng.poisson(0.3, (300, 6)) @ rng.standard_normal((6, 16)) + 0.1 * rng.standard_normal((300, 16)))
    path = tmp_path_factory.mktemp("data") / "patches.npy"
    np.save(path, (x / x.std()).astype(np.float32))
    return path
