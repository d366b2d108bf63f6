import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from harrison_knn import threads
from harrison_knn.encoders import Encoder


class ThreadCountingEncoder(Encoder):
    """Mean colour as the embedding; remembers torch's thread count per batch."""

    def __init__(self):
        self.seen_threads = []
        super().__init__(
            name="counting",
            width=3,
            device=torch.device("cpu"),
            network=torch.nn.Identity(),
            preprocess=lambda image: torch.zeros(3, 4, 4),
            channels_last=False,
        )

    def _embed(self, pixels):
        self.seen_threads.append(torch.get_num_threads())
        return pixels.mean(dim=(2, 3)) + 1.0


@pytest.fixture
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def test_small_batches_get_one_thread_large_ones_every_core(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0))

    assert threads.threads_for_batch(1) == 1
    assert threads.threads_for_batch(threads.SMALL_BATCH) == 1
    assert threads.threads_for_batch(threads.SMALL_BATCH + 1) == cores
    assert threads.usable_cores() == cores


def test_omp_num_threads_caps_the_cores(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    assert threads.usable_cores() == 1
    assert threads.threads_for_batch(64) == 1


def test_torch_threads_are_restored_after_the_body(two_threads):
    with threads.torch_threads(1):
        inside = torch.get_num_threads()

    assert inside == 1
    assert torch.get_num_threads() == 2


def test_faiss_threads_are_restored_after_the_body():
    import faiss

    previous = faiss.omp_get_max_threads()
    with threads.faiss_threads(1):
        inside = faiss.omp_get_max_threads()

    assert inside == 1
    assert faiss.omp_get_max_threads() == previous


def test_encoder_runs_a_one_photo_batch_on_one_thread(two_threads, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    encoder = ThreadCountingEncoder()

    single = encoder.encode_batch(torch.rand(1, 3, 4, 4))
    encoder.encode_batch(torch.rand(threads.SMALL_BATCH + 1, 3, 4, 4))

    assert encoder.seen_threads == [1, threads.usable_cores()]
    assert torch.get_num_threads() == 2
    np.testing.assert_allclose(np.linalg.norm(single, axis=1), 1.0, rtol=1e-6)


def test_sleeping_threads_are_chosen_only_before_torch_loads(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    # torch is loaded in this test process, so the policy cannot apply here.
    assert threads.prefer_sleeping_threads() is False
    assert "OMP_WAIT_POLICY" not in os.environ

    program = (
        "import os; from harrison_knn import threads; "
        "print(threads.prefer_sleeping_threads(), os.environ['OMP_WAIT_POLICY'])"
    )
    fresh = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"},
    )
    assert fresh.stdout.split() == ["True", "PASSIVE"]


def test_a_policy_the_user_chose_is_kept(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")

    assert threads.prefer_sleeping_threads() is False
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
