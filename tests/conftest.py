from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread() -> None:
    # Results must not depend on thread scheduling; tests also run faster on 2 shared cores.
    torch.set_num_threads(1)
