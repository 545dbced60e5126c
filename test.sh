#!/usr/bin/env bash
# Sets everything up and runs the tests: packages, the one-node SLURM cluster, then pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
bash setup.sh
bash slurm/start_cluster.sh
exec "${PYTHON:-python3}" -m pytest -q -p no:cacheprovider --timeout=900 "$@"
