"""Adding a method takes its module and its YAML file (issue 11): the test-only `const_v0` method composes, has its
values checked, runs, and reaches results.json and the W&B summary, with no other file of the project naming it."""

from __future__ import annotations

import json

import pytest

from snnconv import SnnconvError, report
from snnconv.config import validate
from snnconv.methods import list_methods, load_plugins
from snnconv.runner import run

YAML = "# test-only method: constant initial potential\ndefaults:\n  - const_v0_schema\n  - _self_\n"
SMALL = ("arch=resnet20", "data.img_size=16", "train.epochs=0", "data.limit_test=48", "T=[1,2,4]")


@pytest.fixture
def plugin_conf(tmp_path, monkeypatch):
    monkeypatch.setenv("SNNCONV_PLUGINS", "plugins.const_v0")
    load_plugins()
    (tmp_path / "conf" / "method").mkdir(parents=True)
    (tmp_path / "conf" / "method" / "const_v0.yaml").write_text(YAML)
    return tmp_path


def test_a_two_file_method_composes_validates_runs_and_reports(plugin_conf, compose_cfg):
    tmp = plugin_conf
    assert "const_v0" in list_methods()
    with pytest.raises(SnnconvError, match=r"method.v0=1.5 must be in \[0, 1\)"):
        validate(compose_cfg("method=const_v0", "method.v0=1.5", search_path=tmp / "conf"))
    results = {}
    for method, extra in (("const_v0", ["method.v0=0.5"]), ("baseline", []), ("const_v0", ["method.v0=0.0"])):
        cfg = compose_cfg(
            f"method={method}", *extra, *SMALL, f"checkpoint_dir={tmp / 'ckpt'}", search_path=tmp / "conf"
        )
        validate(cfg)
        out = tmp / f"{method}-{len(results)}"
        results[len(results)] = run(cfg, out, progress=False)
        saved = json.loads((out / "results.json").read_text())
        if method == "const_v0":
            assert saved["const_v0"]["v0_frac"] == cfg.method.v0 and saved["sections"] == ["const_v0"]
            summary = report._summary(saved)
            assert summary["const_v0/v0_frac"] == cfg.method.v0 and summary["const_v0/layers"] == 19
    # v0 = theta/2 is the QCFS baseline's own start: identical accuracies; v0 = 0 is a different network
    assert results[0]["snn"]["acc"] == results[1]["snn"]["acc"]
    assert results[0]["snn"]["agreement"] == results[1]["snn"]["agreement"]
    assert results[2]["snn"]["agreement"] != results[0]["snn"]["agreement"]
