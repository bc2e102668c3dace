"""quantkit.eval.run_settings: the environment variables that change a speed run's figures go into its recorded
command, and every QUANTKIT_ variable the package reads is sorted into changing or not changing them."""

from __future__ import annotations

import re
from pathlib import Path

from quantkit.eval import run_settings

PACKAGE = Path(run_settings.__file__).resolve().parents[1]


def test_the_command_carries_the_measuring_settings_that_are_set():
    env = {"QUANTKIT_COMBO_KERNELS": "0", "QUANTKIT_KERNEL_CACHE": "/tmp/k", "QUANTKIT_L2_PREFETCH": "next,off",
           "HOME": "/root"}
    assert (run_settings.with_settings("quantkit eval --throughput", env)
            == "QUANTKIT_COMBO_KERNELS=0 QUANTKIT_L2_PREFETCH=next,off quantkit eval --throughput")
    assert run_settings.with_settings("python3 x.py", {}) == "python3 x.py"
    assert run_settings.with_settings("c", {"QUANTKIT_SPLITS_ROUND": "a b"}) == "QUANTKIT_SPLITS_ROUND='a b' c"


def test_every_quantkit_variable_the_package_reads_is_sorted():
    named = set()  # every QUANTKIT_ name the package's sources other than run_settings.py mention
    for path in PACKAGE.rglob("*.py"):
        if path.name != "run_settings.py":
            named |= set(re.findall(r"QUANTKIT_[A-Z0-9_]*[A-Z0-9]", path.read_text()))
    assert not set(run_settings.MEASURING) & set(run_settings.NOT_MEASURING)
    listed = set(run_settings.MEASURING) | set(run_settings.NOT_MEASURING)
    assert named - listed == set(), "add these to run_settings.MEASURING or NOT_MEASURING"
    assert listed - named == set(), "run_settings lists variables nothing reads"
