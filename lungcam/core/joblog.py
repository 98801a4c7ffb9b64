"""Send a workflow job's log messages and errors to its Snakemake log file.

Every rule has a `log:` file; a job's Python logging, warnings and any traceback go there, so a
failed or excluded patient can be understood from its own log. The last line gives the job's
peak memory as the kernel counted it (the job's process and the largest of its finished child
processes, such as dcm2niix): Snakemake's benchmark files sample memory once a second and miss
short jobs, and `mem_mb` is checked against this figure (benchmarks/stage_memory.py). It is an
upper bound: at exec Linux folds the peak of the process that started the job into the job's,
so a job started by Snakemake reports at least Snakemake's own peak.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import sys
import traceback
from pathlib import Path

PEAK_MEMORY = "peak memory (MB): "


def peak_memory_mb() -> float:
    """Largest resident set of this process and of its largest finished child, in MB (Linux
    reports ru_maxrss in kB)."""
    return max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024


@contextlib.contextmanager
def job_log(path: str | Path, level: int = logging.INFO):
    """Log to `path` for the duration of the block; a raised error is logged, then re-raised."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handler = logging.StreamHandler(handle)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(level)
        logging.captureWarnings(True)
        try:
            with contextlib.redirect_stderr(handle):
                yield logging.getLogger("lungcam.job")
        except BaseException:
            handle.write(traceback.format_exc())
            raise
        finally:
            handle.write(f"{PEAK_MEMORY}{peak_memory_mb():.0f}\n")
            root.removeHandler(handler)
            logging.captureWarnings(False)
            handle.flush()
            sys.stderr.flush()
