"""Named ranges around the parts of a training step (views, forward, backward, optimizer, ...) that
torch.profiler shows (`bench/step_profile.py`), and that cost nothing when no profiler records."""
from __future__ import annotations

from contextlib import nullcontext

import torch
from torch.profiler import record_function


def phase(name: str):
    """`record_function("selfsup.NAME")` while a profiler records, else nothing: an unrecorded range
    still costs about 18 us of host time (measured on the CPU machine), which a step bound by
    kernel launches should not pay."""
    if getattr(torch.autograd.profiler, "_is_profiler_enabled", True):
        return record_function(f"selfsup.{name}")
    return nullcontext()
