"""Config composition: every data x arch x ann x method combination composes against the typed schema, bad types
and values are refused, and the per-dataset training recipe follows `data`."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from snnconv import SnnconvError
from snnconv.config import choices, validate

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = {g: sorted(p.stem for p in (CONF / g).glob("*.yaml")) for g in ("data", "arch", "ann", "method")}


def test_groups_offer_what_the_design_names():
    assert GROUPS["data"] == ["cifar10", "cifar100", "digits", "fashion_mnist", "imagenet"]
    assert GROUPS["arch"] == ["resnet20", "resnet34", "timm", "torchvision", "vgg16"]
    assert GROUPS["ann"] == ["qcfs", "relu", "rts"]
    assert set(GROUPS["method"]) <= set(choices()["method.name"])  # tests may register more


def test_every_combination_composes_and_validates(compose_cfg):
    own = [a for a in GROUPS["arch"] if a not in ("timm", "torchvision")]
    combos = list(itertools.product(GROUPS["data"], own, GROUPS["ann"], GROUPS["method"]))
    assert len(combos) == 5 * 3 * 3 * 4
    # the library archs (their data / method axes are the same code): every ann source, one data set
    combos += [("fashion_mnist", arch, ann, "ftbc") for arch in ("timm", "torchvision") for ann in GROUPS["ann"]]
    for data, arch, ann, method in combos:
        cfg = compose_cfg(f"data={data}", f"arch={arch}", f"ann={ann}", f"method={method}")
        validate(cfg)
        assert (cfg.data.name, cfg.arch.name, cfg.ann.name, cfg.method.name) == (data, arch, ann, method)
        assert cfg.task_name == f"{data}-{arch}-{ann}-{method}"


def test_training_recipe_follows_the_data_set(compose_cfg):
    assert compose_cfg("data=cifar100").train.lr == 0.02
    assert compose_cfg("data=imagenet").train.weight_decay == 1e-4
    assert compose_cfg("data=cifar100", "train=cifar10").train.lr == 0.1  # an explicit choice wins


def test_defaults_are_the_embedded_demo(compose_cfg):
    cfg = compose_cfg()
    assert (cfg.data.name, cfg.arch.name, cfg.ann.name, cfg.ann.L, cfg.method.name) == (
        "digits", "resnet20", "qcfs", 4, "baseline"
    )
    assert list(cfg.T) == [1, 2, 4, 8, 16, 32]


def test_make_demo_preset_gives_ftbc_its_light_calibration_and_debug_still_wins(compose_cfg):
    """experiment=demo sets FTBC's calibration through conf/method_experiment/ (a method's settings in a preset);
    the other methods compose without FTBC's keys, and debug=fast (after it in the defaults) still overrides."""
    ftbc = compose_cfg("experiment=demo", "method=ftbc_offset_spike")
    assert (ftbc.method.iterations, ftbc.method.batches, ftbc.method.batch_size) == (2, 4, 64)
    assert ftbc.method.rho == 4 and ftbc.data.img_size == 16 and list(ftbc.T) == [1, 2, 4, 8, 16]
    assert compose_cfg("experiment=demo", "method=ftbc", "debug=fast").method.batches == 1
    assert compose_cfg("method=ftbc").method.batches == 8  # outside the preset: the paper's settings
    assert "batches" not in compose_cfg("experiment=demo", "method=offset_spike").method


@pytest.mark.parametrize(
    "override",
    [("T=4",), ("T=[a]",), ("data.bogus=1",), ("ann.L=four",), ("method=ftbc", "method.alpha=x"), ("seed=1.5",),
     ("method=nonexistent",), ("method.alpha=0.5",), ("method=offset_spike", "method.batches=2")],
)
def test_bad_types_and_unknown_keys_are_refused_when_composing(compose_cfg, override):
    """A method's schema holds its own keys only: the baseline has no alpha, COS no FTBC batches."""
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose_cfg(*override)


@pytest.mark.parametrize(
    "override,message",
    [
        ("T=[0]", "positive ints"),
        ("T=[]", "positive ints"),
        ("ann.L=0", "ann.L"),
        ("method=offset_spike,method.rho=0", "method.rho"),
        ("ann.name=sigmoid", "ann.name"),
        ("arch.name=alexnet", "registered model"),
        ("method=ftbc_offset_spike,method.eps=2", "method.eps"),
        ("method=ftbc,method.batch_size=0", "method.batch_size"),
        ("method=ftbc,method.update=newton", "method.update"),
        ("method=ftbc,data.calib_size=100", "data.calib_size"),
    ],
)
def test_bad_values_are_refused_by_validate(compose_cfg, override, message):
    with pytest.raises(SnnconvError, match=message):
        validate(compose_cfg(*override.split(",")))


def test_list_sweep_values_compose(compose_cfg):
    cfg = compose_cfg("T=[1,2,4]", "method=ftbc", "method.alpha=0.3")
    validate(cfg)
    assert list(cfg.T) == [1, 2, 4] and cfg.method.alpha == 0.3


def test_slurm_launcher_requeues_and_feeds_the_loader_workers(compose_cfg):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose_cfg("hydra/launcher=slurm", return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.max_num_timeout > 0
    assert launcher.gpus_per_node == 1 and launcher.cpus_per_task == 9  # 8 auto workers + the main process
    dry = subprocess.run(["make", "-n", "reproduce-cifar100-vgg16-cos", "LAUNCHER=slurm", "STAMP="],
                         cwd=CONF.parent, capture_output=True, text=True, check=True).stdout
    assert "run.py -m hydra/launcher=slurm experiment=cifar100_vgg16_qcfs method=offset_spike" in dry
