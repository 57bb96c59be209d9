"""Fine-tuning strategies through a real Trainer fit of the real ClassificationModule (resnet18, 32 px)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, TensorDataset

from xray_cls.callbacks.finetune import backbone_modules, finetune_callback
from xray_cls.errors import UserError
from xray_cls.models.backbones import TorchvisionBackbone
from xray_cls.module import ClassificationModule
from xray_cls.optim import param_groups

RESNET18 = {
    "_target_": "xray_cls.models.backbones.TorchvisionBackbone",
    **{"arch": "resnet18", "num_classes": 2, "in_channels": 1},
    **{"head": "fc", "stem": "conv1", "cam_layer": "layer4"},
}
SGD = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1, "momentum": 0.9}
COSINE = {"_target_": "xray_cls.optim.cosine", "_partial_": True, "warmup_fraction": 0.2}
ONECYCLE = {"_target_": "xray_cls.optim.onecycle", "_partial_": True}


def _module(mode: str, backbone_lr_mult: float, scheduler: dict = COSINE) -> ClassificationModule:
    return ClassificationModule(
        net=RESNET18,
        class_names=["normal", "pneumonia"],
        optimizer=SGD,
        scheduler={"factory": scheduler, "interval": "step"},
        finetune={"mode": mode, "unfreeze_at_epoch": 1, "backbone_lr_mult": backbone_lr_mult},
    )


def _loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(8, 1, 32, 32, generator=generator)
    return DataLoader(TensorDataset(images, torch.arange(8) % 2), batch_size=4)


def _fit(module: ClassificationModule, callbacks: list, max_epochs: int, **kwargs: Any) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(module, _loader(), _loader(), **kwargs)
    return trainer


class Probe(L.Callback):
    """What each training step sees: trainable flags, modes, the optimizer's groups and learning rates."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self.trainable_params: list[float] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        net = pl_module.net
        groups = trainer.optimizers[0].param_groups
        self.steps.append(
            {
                "epoch": trainer.current_epoch,
                "backbone_grad": {
                    p.requires_grad for m in backbone_modules(net) for p in m.parameters(False)
                },
                "head_grad": {p.requires_grad for p in net.head.parameters()},
                "bn_training": {m.training for m in net.modules() if isinstance(m, _BatchNorm)},
                "head_training": net.head.training,
                "groups": [g["name"] for g in groups],
                "lrs": [g["lr"] for g in groups],
                "conv1": net.model.conv1.weight.detach().clone(),
            }
        )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.trainable_params.append(float(trainer.callback_metrics["model/trainable_params"]))


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# The project's schedules keep per-group state in lists (cosine is a LambdaLR) or in the param groups
# (OneCycleLR): the backbone's group is there from the start, so both schedule it from the first step.
@pytest.mark.parametrize("scheduler", [COSINE, ONECYCLE], ids=["cosine", "onecycle"])
def test_gradual_unfreezes_the_backbone_at_its_own_rate(scheduler: dict) -> None:
    module, probe = _module("gradual", 0.1, scheduler), Probe()
    _fit(module, [probe], max_epochs=3)

    frozen = [s for s in probe.steps if s["epoch"] == 0]
    unfrozen = [s for s in probe.steps if s["epoch"] >= 1]
    assert len(frozen) == 2 and len(unfrozen) == 4
    for step in frozen:
        assert step["backbone_grad"] == {False} and step["head_grad"] == {True}
        assert step["bn_training"] == {False} and step["head_training"]
        torch.testing.assert_close(step["conv1"], frozen[0]["conv1"], rtol=0, atol=0)
    for step in unfrozen:
        assert step["backbone_grad"] == {True} and step["bn_training"] == {True}
    for step in probe.steps:
        assert step["groups"] == ["head", "backbone"]
        head_lr, backbone_lr = step["lrs"]  # along the head's schedule, a tenth of it
        assert backbone_lr == pytest.approx(head_lr / 10)
    assert not torch.equal(unfrozen[-1]["conv1"], frozen[0]["conv1"])
    assert probe.trainable_params == [_params(module.net.head), _params(module.net), _params(module.net)]


def test_gradual_resumes_after_the_unfreezing_epoch(tmp_path: Path) -> None:
    trainer = _fit(_module("gradual", 0.5), [], max_epochs=2)
    trainer.save_checkpoint(tmp_path / "last.ckpt")

    probe = Probe()
    _fit(_module("gradual", 0.5), [probe], max_epochs=3, ckpt_path=tmp_path / "last.ckpt")
    assert [s["epoch"] for s in probe.steps] == [2, 2]
    for step in probe.steps:
        assert step["backbone_grad"] == {True} and step["groups"] == ["head", "backbone"]
        assert step["lrs"][1] == pytest.approx(step["lrs"][0] * 0.5)


def test_linear_probe_trains_only_the_head() -> None:
    module, probe = _module("linear_probe", 1.0), Probe()
    before = {k: v.clone() for k, v in module.net.state_dict().items()}
    _fit(module, [probe], 2)

    after = module.net.state_dict()
    head = {f"model.fc.{k}" for k in module.net.head.state_dict()}
    # Batch-norm running statistics included: the frozen backbone ran in eval mode; weight decay and
    # momentum never touched it.
    assert all(torch.equal(before[k], after[k]) for k in before if k not in head)
    assert not torch.equal(before["model.fc.1.weight"], after["model.fc.1.weight"])
    assert all(s["bn_training"] == {False} and s["backbone_grad"] == {False} for s in probe.steps)
    assert probe.trainable_params == [_params(module.net.head)] * 2


def test_param_groups_split_head_and_backbone() -> None:
    net = TorchvisionBackbone("resnet18", 2, 3, head="fc", stem="conv1", cam_layer="layer4")
    head, backbone = param_groups(net, lr=1e-3, backbone_lr_mult=0.1)
    assert (head["name"], head["lr"], len(head["params"])) == ("head", 1e-3, 2)
    assert backbone["name"] == "backbone" and backbone["lr"] == pytest.approx(1e-4)
    assert len(head["params"]) + len(backbone["params"]) == len(list(net.parameters()))
    # One rate for the whole net: one unnamed group (one learning-rate curve).
    (whole,) = param_groups(net, 1e-3, 1.0, "full")
    assert "name" not in whole and len(whole["params"]) == len(list(net.parameters()))
    # A frozen backbone keeps its own group (and rate) for when it is unfrozen.
    assert [g["name"] for g in param_groups(net, 1e-3, 1.0, "gradual")] == ["head", "backbone"]


def test_finetune_callback_choices() -> None:
    assert finetune_callback("full") is None
    assert finetune_callback("linear_probe", 3).unfreeze_at_epoch is None
    assert finetune_callback("gradual", 2).unfreeze_at_epoch == 2


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.finetune.mode=freeze", "mode='freeze'; allowed: full | linear_probe | gradual"),
        ("model.finetune.unfreeze_at_epoch=-1", "model.finetune.unfreeze_at_epoch=-1"),
        ("model.finetune.backbone_lr_mult=0", "model.finetune.backbone_lr_mult=0; allowed: a number > 0"),
    ],
)
def test_bad_finetune_settings_are_refused(make_cfg, override: str, message: str) -> None:
    from xray_cls.validation import validate

    with pytest.raises(UserError, match=re.escape(message)):
        validate(make_cfg(override))


def test_gradual_refuses_ddp() -> None:
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_checkpointing=False
    )
    with pytest.raises(UserError, match="several processes"):
        finetune_callback("gradual", 1).setup(trainer, _module("gradual", 0.1), "fit")
    finetune_callback("linear_probe", 1).setup(trainer, _module("linear_probe", 1.0), "fit")
