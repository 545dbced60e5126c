#!/usr/bin/env bash
# Sets everything up: the Python packages (torch from the pinned wheels) and this package, editable.
# Idempotent: a second run installs nothing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch, torchvision, submitit, pandas, sklearn, yaml, pytest, h5py" 2>/dev/null \
   || [ "$(cd / && "$PY" -c 'import harness, os; print(os.path.dirname(os.path.dirname(harness.__file__)))' 2>/dev/null)" != "$PWD" ]; then
  "$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore -r requirements.txt
  "$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-deps --no-build-isolation -e .
fi
# The report's tests: headless Chromium renders report.html; pdflatex compiles the booktabs tables (Debian packages,
# ~550 MB, ~1 min once; nothing when present).
if ! command -v chromium >/dev/null || ! kpsewhich booktabs.sty >/dev/null 2>&1; then
  apt-get install -y -q --no-install-recommends chromium texlive-latex-base texlive-latex-recommended >/dev/null
fi
"$PY" -c "import torch; print(f'setup ok: torch {torch.__version__}, {torch.get_num_threads()} threads')"
