"""Fine-tuning the converted SNN: a few steps on the embedded digits lower the training loss at T = 2 and leave
what is not trainable unchanged; BN folding keeps the function; the TET loss is the formula; bad options refused."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import OmegaConf

from nets import images, random_ann
from snnconv import SnnconvError
from snnconv.config import DataConfig
from snnconv.data import build_loaders
from snnconv.finetune import FinetuneConfig, finetune, fold_batchnorm, loss_fn
from snnconv.snn import convert


@pytest.fixture(scope="module")
def digits():
    """The first 64 training images of the embedded digits at 16 x 16 (the 8 x 8 originals lose nothing; ResNet-20
    pools globally): 2 batches of 32."""
    cfg = OmegaConf.structured(DataConfig(name="digits", img_size=16, limit_train=64, calib_size=64))
    return build_loaders(cfg, seed=0).train.dataset


@torch.no_grad()
def mean_loss(snn, dataset, T):
    x, y = map(torch.stack, zip(*[dataset[i] for i in range(len(dataset))]))
    y = torch.as_tensor(y)
    return float(F.cross_entropy(snn(x, T, 1).mean(0), y))


@pytest.mark.parametrize("name,train_threshold", [("localzo", False), ("surrogate", True)])
def test_a_few_steps_lower_the_training_loss_at_T2(digits, name, train_threshold):
    ann = random_ann("resnet20")
    snn = convert(ann, images(1, 0))
    for neuron in snn.neurons().values():  # FTBC-like biases, frozen here
        neuron.set_bias(torch.full((2, 1), 0.01))
    neurons = snn.neurons().values()
    thresholds = [n.threshold.clone() for n in neurons]
    biases = [n.bias.clone() for n in neurons]
    weights = copy.deepcopy(snn.state_dict())
    cfg = FinetuneConfig(
        name=name, T=2, epochs=3, batch_size=32, lr=1e-3, train_bias=False, train_threshold=train_threshold,
        ann_timing_batches=1,
    )
    before = mean_loss(snn, digits, 2)
    section = finetune(snn, ann, digits, cfg, time_chunk=1, device=torch.device("cpu"), seed=0, progress=False)
    after = mean_loss(snn, digits, 2)
    assert after < before - 0.05, (before, after)
    assert section["steps"] == 6 and section["epochs"] == 3 and len(section["train_loss"]) == 3
    assert all(torch.equal(b, n.bias) for b, n in zip(biases, neurons))
    assert all(not n.bias.requires_grad and not n.threshold.requires_grad for n in neurons)
    same_theta = all(torch.equal(t, n.threshold) for t, n in zip(thresholds, neurons))
    assert same_theta != train_threshold
    changed = [k for k, v in snn.state_dict().items() if not torch.equal(v, weights[k])]
    assert any(k.endswith("conv1.module.weight") for k in changed)
    sparsity = section["backward_sparsity"]
    assert list(sparsity["layers"]) == list(snn.neurons())  # network order
    if name == "localzo":  # most neuron-steps get no gradient; the smooth surrogate gives every one some
        assert 0.3 < sparsity["total"] < 1
    else:
        assert sparsity["total"] < 0.05
    assert section["ratio_to_ann_epoch"] > 0


def test_ftbc_biases_are_trained_when_present(digits):
    ann = random_ann("resnet20")
    snn = convert(ann, images(1, 0))
    for neuron in snn.neurons().values():
        neuron.set_bias(torch.zeros(3, 1))
    cfg = FinetuneConfig(name="surrogate", T=2, epochs=0.5, batch_size=32, lr=1e-3, ann_timing_batches=1)
    section = finetune(snn, ann, digits, cfg, time_chunk=2, device=torch.device("cpu"), seed=0, progress=False)
    assert section["steps"] == 1 and section["trained"]["ftbc_biases"] == 3 * len(snn.neurons())
    bias = torch.stack([n.bias for n in snn.neurons().values()])  # [layers, 3, 1]
    assert (bias[:, :2] != 0).any() and (bias[:, 2] == 0).all()  # steps beyond finetune.T get no gradient


def test_bias_steps_shorter_than_T_are_refused(digits):
    ann = random_ann("vgg16")
    snn = convert(ann, images(1, 0))
    for neuron in snn.neurons().values():
        neuron.set_bias(torch.zeros(2, 1))
    with pytest.raises(SnnconvError, match="finetune.T=4"):
        finetune(snn, ann, digits, FinetuneConfig(name="localzo", T=4), 1, torch.device("cpu"), 0, False)


@pytest.mark.parametrize("arch", ["vgg16", "resnet20"])
def test_folding_batchnorm_keeps_the_network_function(arch):
    """Every BN (ResNet shortcuts included) is folded; the 4-step outputs agree up to float rounding."""
    snn = convert(random_ann(arch), images(1, 0))
    x = images(8, 3)
    with torch.no_grad():
        reference = snn(x, 4, 1)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in snn.modules())
    folded = fold_batchnorm(snn, x[:1])
    assert len(folded) == n_bn > 0 and not any(isinstance(m, nn.BatchNorm2d) for m in snn.modules())
    with torch.no_grad():
        out = snn(x, 4, 1)
    torch.testing.assert_close(out, reference, atol=1e-4, rtol=1e-4)


def test_tet_loss_is_the_formula():
    out = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 4])
    cfg = FinetuneConfig(loss="tet", tet_lambda=0.2, tet_means=1.0)
    ce_t = sum(F.cross_entropy(out[t], y) for t in range(3)) / 3
    expected = 0.8 * ce_t + 0.2 * ((out - 1.0) ** 2).mean()
    torch.testing.assert_close(loss_fn(out, y, cfg), expected)
    torch.testing.assert_close(loss_fn(out, y, FinetuneConfig(loss="ce")), F.cross_entropy(out.mean(0), y))


@pytest.mark.parametrize(
    "field,value,match",
    [("name", "zo", "finetune.name"), ("dist", "cauchy", "finetune.dist"), ("delta", 0.0, "finetune.delta"),
     ("epochs", 0.0, "finetune.epochs"), ("surrogate", "relu", "finetune.surrogate"), ("bn", "train", "finetune.bn")],
)
def test_bad_options_are_refused_with_the_key(field, value, match):
    cfg = FinetuneConfig(name="localzo")
    setattr(cfg, field, value)
    with pytest.raises(SnnconvError, match=match):
        cfg.check()


def test_the_finetune_group_composes_typed_and_checked(compose_cfg):
    """conf/finetune/*.yaml over the FinetuneConfig schema: defaults from the dataclass, unknown keys and wrong types
    refused at composition, bad values by validate() before any work."""
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import ValidationError

    from snnconv.config import validate

    assert compose_cfg().finetune.name == "none"
    cfg = compose_cfg("finetune=localzo", "finetune.T=2")
    assert (cfg.finetune.name, cfg.finetune.T, cfg.finetune.samples, cfg.finetune.lr) == ("localzo", 2, 5, 1e-4)
    validate(cfg)
    assert compose_cfg("finetune=surrogate").finetune.surrogate == "gauss"
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose_cfg("finetune=localzo", "finetune.bogus=1")
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose_cfg("finetune=localzo", "finetune.T=two")
    with pytest.raises(SnnconvError, match="finetune.dist='cauchy'"):
        validate(compose_cfg("finetune=localzo", "finetune.dist=cauchy"))


class _Killed(Exception):
    pass


def test_a_resumed_fine_tuning_equals_an_uninterrupted_one_bit_for_bit(digits, tmp_path, monkeypatch):
    """LocalZO, 3 epochs of 2 steps, a resume checkpoint every step: a run killed right after writing the one of
    step 3 (in the middle of epoch 2) and started again continues from step 3 (same data order, LocalZO draws,
    optimizer and schedule) and ends with exactly the uninterrupted run's network, losses and sparsity."""
    import snnconv.train as resume_writer  # finetune writes its resume checkpoints through train.write_resume

    ann = random_ann("resnet20")
    cfg = FinetuneConfig(name="localzo", T=2, epochs=3, batch_size=32, lr=1e-3, ann_timing_batches=1, save_every=0.5)
    cpu = torch.device("cpu")

    def fresh():
        torch.manual_seed(7)  # the global RNG that data transforms draw from
        return convert(ann, images(1, 0))

    whole = fresh()
    ref = finetune(whole, ann, digits, cfg, time_chunk=1, device=cpu, seed=3, progress=False)

    saved = []
    real_save = resume_writer.atomic_save

    def save_then_die(obj, path):
        real_save(obj, path)
        saved.append(obj["step"])
        if obj["step"] == 3:
            raise _Killed

    ckpt = tmp_path / "ft.resume.pt"
    monkeypatch.setattr(resume_writer, "atomic_save", save_then_die)
    with pytest.raises(_Killed):
        finetune(fresh(), ann, digits, cfg, time_chunk=1, device=cpu, seed=3, progress=False, checkpoint=ckpt)
    monkeypatch.setattr(resume_writer, "atomic_save", real_save)
    assert saved == [1, 2, 3]
    torch.manual_seed(12345)  # whatever the new process's RNG is, the checkpoint's is restored
    resumed = fresh()
    out = finetune(resumed, ann, digits, cfg, time_chunk=1, device=cpu, seed=3, progress=False, checkpoint=ckpt)
    assert out["resumed_from_step"] == 3 and out["steps"] == 6
    state, ref_state = resumed.state_dict(), whole.state_dict()
    assert all(torch.equal(state[k], ref_state[k]) for k in ref_state)
    assert out["train_loss"] == ref["train_loss"] and out["backward_sparsity"] == ref["backward_sparsity"]


def test_the_cache_key_follows_the_network_and_the_options_that_change_training(compose_cfg):
    """finetune_key: the same for options that do not change the fine-tuned network (eval_before, cache,
    save_every); different for a changed weight, learning rate or seed."""
    from snnconv.finetune import finetune_key

    cfg = compose_cfg("finetune=localzo")
    snn = convert(random_ann("resnet20"), images(1, 0))
    cpu = torch.device("cpu")
    key = finetune_key(cfg, snn, 1, cpu)
    same = compose_cfg("finetune=localzo", "finetune.eval_before=false", "finetune.cache=false",
                       "finetune.save_every=2")
    assert finetune_key(same, snn, 1, cpu) == key
    assert finetune_key(compose_cfg("finetune=localzo", "finetune.lr=1e-3"), snn, 1, cpu) != key
    assert finetune_key(compose_cfg("finetune=localzo", "seed=1"), snn, 1, cpu) != key
    with torch.no_grad():
        next(snn.parameters()).view(-1)[0] += 1e-6
    assert finetune_key(cfg, snn, 1, cpu) != key


def test_finetune_options_without_a_rule_are_a_warning(compose_cfg, capsys):
    """finetune.T=2 with the default finetune=none would silently fine-tune nothing: validate says so (a warning,
    not a refusal: a sweep over finetune=none,localzo shares the other keys)."""
    from snnconv.config import validate

    validate(compose_cfg("finetune.T=2", "finetune.lr=1e-3"))
    err = capsys.readouterr().err
    assert "warning: finetune.T, finetune.lr set, but finetune=none: nothing is fine-tuned" in err
    validate(compose_cfg("finetune=localzo", "finetune.T=2"))
    validate(compose_cfg())
    assert "warning" not in capsys.readouterr().err


def test_a_fine_tuning_run_needs_a_writable_cache_folder_even_with_a_given_ann(compose_cfg, tmp_path):
    """ann.checkpoint skips the ANN cache, but the fine-tuned SNN is cached: checkpoint_dir is checked before any
    work (and finetune.cache=false lifts the check)."""
    from snnconv.runner import check_environment

    blocked = tmp_path / "file"
    blocked.write_text("")
    args = (f"checkpoint_dir={blocked}", "ann.checkpoint=given.pt", "finetune=localzo")
    with pytest.raises(SnnconvError, match="checkpoint_dir"):
        check_environment(compose_cfg(*args), tmp_path / "out")
    check_environment(compose_cfg(*args, "finetune.cache=false"), tmp_path / "out2")
