"""The probe registry: entry points checked at registration, built-ins not shadowed by accident,
listing without torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from ckpt_analyzer.cli import main
from ckpt_analyzer.errors import PluginError, UsageError
from ckpt_analyzer.probes import PROBES, check_probe_class, load_plugin
from ckpt_analyzer.registry import Registry

SHADOW = '''
from dataclasses import dataclass
from ckpt_analyzer.probes.base import Metric, Outputs, Probe

@dataclass(frozen=True)
class Cfg:
    pass

class FakeMetrics(Probe):
    name = "metrics"
    description = "a plugin that reuses a built-in name"
    Config = Cfg
    def outputs(self):
        return Outputs(metrics={"x": Metric(())})
    def __call__(self, model, ctx):
        return {"x": 0.0}
'''


def _ep(name: str, obj: Any, dist: str = "someone-elses-plugin") -> Any:
    return SimpleNamespace(name=name, value=f"pkg:{name}", load=lambda: obj,
                           dist=SimpleNamespace(name=dist))


@pytest.mark.parametrize("obj, why", [
    (42, "not a ckpt_analyzer Probe subclass"),
    (dict, "not a ckpt_analyzer Probe subclass"),
    (PROBES.get("spectrum"), "registered as 'other'"),
])
def test_an_entry_point_that_is_not_a_probe_is_listed_broken(
        monkeypatch: pytest.MonkeyPatch, obj: Any, why: str) -> None:
    reg: Registry[Any] = Registry("ckpt_analyzer.probes", "probe", check_probe_class)
    monkeypatch.setattr(reg, "_entry_points", lambda name=None: [_ep("other", obj)])
    assert reg.names() == []
    (broken,) = reg.broken()
    assert broken.name == "other" and why in broken.error
    with pytest.raises(PluginError, match="other"):
        reg.get("other")


def test_a_plugin_cannot_shadow_a_built_in_unless_asked(tmp_path: Path) -> None:
    plugin = tmp_path / "shadow.py"
    plugin.write_text(SHADOW)
    with pytest.raises(UsageError, match="would replace the built-in one"):
        load_plugin(str(plugin))
    assert PROBES.origin("metrics") == "ckpt-analyzer"
    res = CliRunner().invoke(main, ["probes", "--plugin", str(plugin)])
    assert res.exit_code == 2 and "--replace-builtin" in res.output
    original = PROBES.get("metrics")
    try:
        load_plugin(str(plugin), replace=True)
        assert PROBES.get("metrics").__name__ == "FakeMetrics"
    finally:
        PROBES.register("metrics", original, origin="ckpt-analyzer", replace=True)


def test_listing_and_usage_errors_do_not_import_torch(tmp_path: Path) -> None:
    code = ("import sys\nfrom click.testing import CliRunner\nfrom ckpt_analyzer.cli import main\n"
            "r = CliRunner().invoke(main, ['probes'])\nassert r.exit_code == 0, r.output\n"
            f"r = CliRunner().invoke(main, ['run', {str(tmp_path)!r}, '--probe', 'spectrm'])\n"
            "assert r.exit_code == 2, r.output\n"
            "r = CliRunner().invoke(main, ['run', '/no/such/run', '--probe', 'spectrum'])\n"
            "assert r.exit_code == 1, r.output\n"
            "print(sorted(m for m in ('torch', 'h5py', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
