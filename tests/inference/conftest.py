"""Fixtures of the tests of the point-estimate methods (test_point, test_dropout, test_ensemble)."""
import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """The networks here are tiny: one intra-op thread is faster than two, and it does not
    suffer OpenMP synchronisation stalls when the machine is busy."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def small_data():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(40, 1, generator=g) * 4 - 2
    return x, torch.sin(2 * x[:, 0]) + 0.1 * torch.randn(40, generator=g)
