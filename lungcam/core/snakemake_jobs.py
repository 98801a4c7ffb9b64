"""How Snakemake starts this workflow's jobs where it runs (a cluster's login node).

Snakemake 9 starts each job by asking, for every input, whether it is a `pipe()` or `service()`
output of one of the job's dependencies; each question scans the job's dependencies until it
finds the one that made the input. For a cohort job (the status tables, the QC records) with one
input per patient, each made by another job, that is quadratic in patients:
`benchmarks/slurm_sim.py` measures it. Where no rule has such outputs the answer is always no.
"""

from __future__ import annotations

from collections.abc import Iterable


def skip_pipe_lookups(rule_outputs: Iterable) -> bool:
    """Answer "no pipe or service input" without the scan when none of `rule_outputs` (every
    rule's declared outputs, with their flags) is a pipe or service output; otherwise leave
    Snakemake's own check. Returns whether the scan is skipped."""
    from snakemake.io import is_flagged
    from snakemake.jobs import Job

    if any(is_flagged(output, "pipe") or is_flagged(output, "service") for output in rule_outputs):
        return False
    Job.is_pipe_or_service_input = _never_pipe_or_service_input
    return True


def _never_pipe_or_service_input(job, path) -> bool:
    return False
