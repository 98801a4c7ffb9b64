"""Send a workflow job's log messages and errors to its Snakemake log file.

Every rule has a `log:` file; a job's Python logging, warnings and any traceback go there, so a
failed or excluded patient can be understood from its own log.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from pathlib import Path


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
            root.removeHandler(handler)
            logging.captureWarnings(False)
            handle.flush()
            sys.stderr.flush()
