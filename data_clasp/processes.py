"""Which process of an `accelerate launch` this is, on GPUs and on CPUs alike."""

from datetime import timedelta

# Finished processes wait at a barrier for the slowest one, which may embed for days.
BARRIER_TIMEOUT = timedelta(days=7)


def process_state():
    """Accelerate's `PartialState` of this launch (one process, without `accelerate launch`).

    On the CPU (ACCELERATE_USE_CPU=1, or no GPU) the processes talk through gloo: PartialState only
    looks for CPU processes when told to (Accelerator reads that variable, PartialState does not),
    and without it every process of `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu` would take
    itself for the only one and do all the work.
    """
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
    return PartialState(cpu=cpu, timeout=BARRIER_TIMEOUT)
