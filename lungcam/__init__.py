"""lungcam: chest CT cohorts -> weakly supervised COVID-19 classifier and CAM infection maps.

The package holds the logic of every workflow stage; `scripts/` only adapt Snakemake's inputs
and outputs to it. Importing the package is cheap: modules load their heavy dependencies
themselves.
"""

__version__ = "0.1.0"
