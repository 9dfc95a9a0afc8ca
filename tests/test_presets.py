"""Every experiment preset composes and runs its first steps on CPU (debug=fast: two training batches, one
calibration batch, T=[1,2]) on small files in the data set's real on-disk format, so a broken preset fails CI.
ImageNet presets run at 32x32 with 2 classes (the wiring is what is tested, not the scale). The published numbers
in docs/paper_results name only presets that exist."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import compose_config
from fake_data import write_cifar10, write_cifar100, write_imagefolder
from snnconv import data as data_module
from snnconv.config import validate
from snnconv.runner import run

CONF = Path(__file__).resolve().parents[1] / "conf"
PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def method_for(preset: str) -> str:
    """Exercise the most machinery each preset is for: FTBC + COS on QCFS ANNs, FTBC on relu / rts ones."""
    return "ftbc_offset_spike" if preset.endswith("_qcfs") else "ftbc"


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_runs_its_first_steps(preset, tmp_path, monkeypatch):
    overrides = [f"experiment={preset}", "debug=fast", f"method={method_for(preset)}",
                 f"checkpoint_dir={tmp_path / 'ckpt'}", f"data.root={tmp_path}", "data.download=false"]
    if preset.startswith("cifar100"):
        write_cifar100(tmp_path, monkeypatch)
    elif preset.startswith("cifar10"):
        write_cifar10(tmp_path, monkeypatch)
    elif preset.startswith("imagenet"):
        write_imagefolder(tmp_path, {"n01440764": (200, 30, 10), "n01443537": (10, 60, 250)}, per_class=4)
        # 8 training images in the tree: one calibration batch of 4 (a larger request is refused, not cut)
        overrides += ["data.img_size=32", "data.num_classes=2", "data.num_workers=0", "method.batch_size=4"]
    elif preset.startswith("cpu_fmnist"):
        if not any(Path(d).is_dir() for d in data_module.FASHION_MNIST_SEARCH_DIRS):
            pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    cfg = compose_config(*overrides)
    validate(cfg)
    assert cfg.task_name.startswith(preset)
    results = run(cfg, tmp_path / "out", progress=False)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(saved["snn"]["acc"]) == ["1", "2"] and saved["ann"]["source"] == "trained"
    assert results["method"] == method_for(preset)


def test_published_numbers_name_existing_presets_and_methods():
    files = sorted((CONF.parent / "docs" / "paper_results").glob("*.yaml"))
    assert len(files) == 2 and not (CONF / "paper_results").exists()  # not a config group (--help offered it)
    for f in files:
        for preset, methods in yaml.safe_load(f.read_text()).items():
            if preset == "psi":
                assert set(methods) <= set(PRESETS), f
                continue
            assert preset in PRESETS, (f.name, preset)
            for method, rec in methods.items():
                assert method in ("baseline", "offset_spike", "ftbc"), (f.name, method)
                assert 0 < rec["ann"] <= 100 and all(0 <= v <= 100 for v in rec["acc"].values())
