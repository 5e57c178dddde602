import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()

# the suite never writes to the user's compile cache (~/.cache/cute_moe): one per session
if "CUTE_MOE_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["CUTE_MOE_CACHE_DIR"] = tempfile.mkdtemp(prefix="cute_moe_test_cache_")


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
