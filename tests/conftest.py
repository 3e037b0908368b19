"""Suite-wide settings: offline, deterministic, one BLAS thread per test worker."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# banks come from the package or a test's own folder, never from the developer's ~/.cache
os.environ["LORA_WISE_BANKS"] = os.path.join(os.path.dirname(__file__), "no-user-banks")

import torch  # noqa: E402

torch.set_num_threads(1)
