#!/usr/bin/env bash
# Install the lalm_slu package of the checkout Snakemake runs in (its working directory).
set -euo pipefail
pip install --no-deps --editable .
