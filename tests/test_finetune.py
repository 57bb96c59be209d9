"""Fine-tuning strategies through a real Trainer fit of the real ClassificationModule (resnet18, 32 px)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, TensorDataset

from xray_cls.errors import UserError
from xray_cls.models.backbones import TorchvisionBackbone
from xray_cls.models.finetune import backbone_modules, finetune_callback, param_groups
from xray_cls.module import ClassificationModule
from xray_cls.optim import cosine, onecycle

COSINE = partial(cosine, warmup_fraction=0.2)


def _module(scheduler: Callable = COSINE) -> ClassificationModule:
    net = TorchvisionBackbone("resnet18", 2, 1, head="fc", stem="conv1", cam_layer="layer4")
    return ClassificationModule(
        net=net,
        class_names=["normal", "pneumonia"],
        optimizer=partial(torch.optim.SGD, lr=0.1, momentum=0.9),
        # PyTorch schedulers keep per-group state: they must take in the param group added mid-run.
        scheduler={"factory": scheduler, "interval": "step"},
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


# The project's schedules keep that state in lists (cosine is a LambdaLR) or in the param groups (OneCycleLR).
@pytest.mark.parametrize(
    "scheduler", [partial(cosine, warmup_fraction=0.2), onecycle], ids=["cosine", "onecycle"]
)
def test_gradual_unfreezes_the_backbone_into_a_slower_param_group(scheduler: Callable) -> None:
    module, probe = _module(scheduler), Probe()
    _fit(
        module, [finetune_callback("gradual", unfreeze_at_epoch=1, backbone_lr_mult=1.0), probe], max_epochs=3
    )

    frozen = [s for s in probe.steps if s["epoch"] == 0]
    unfrozen = [s for s in probe.steps if s["epoch"] >= 1]
    assert len(frozen) == 2 and len(unfrozen) == 4
    for step in frozen:
        assert step["backbone_grad"] == {False} and step["head_grad"] == {True}
        assert step["bn_training"] == {False} and step["head_training"]
        assert step["groups"] == ["head"]
        torch.testing.assert_close(step["conv1"], frozen[0]["conv1"], rtol=0, atol=0)
    for step in unfrozen:
        assert step["backbone_grad"] == {True} and step["bn_training"] == {True}
        assert step["groups"] == ["head", "backbone"]
        # backbone_lr_mult >= 1 falls back to a tenth of the head's rate, along the head's schedule.
        head_lr, backbone_lr = step["lrs"]
        assert backbone_lr == pytest.approx(head_lr / 10)
    assert not torch.equal(unfrozen[-1]["conv1"], frozen[0]["conv1"])
    assert probe.trainable_params == [_params(module.net.head), _params(module.net), _params(module.net)]


def test_gradual_resumes_after_the_unfreezing_epoch(tmp_path: Path) -> None:
    trainer = _fit(_module(), [finetune_callback("gradual", 1, backbone_lr_mult=0.5)], max_epochs=2)
    trainer.save_checkpoint(tmp_path / "last.ckpt")

    probe = Probe()
    callbacks = [finetune_callback("gradual", 1, backbone_lr_mult=0.5), probe]
    _fit(_module(), callbacks, max_epochs=3, ckpt_path=tmp_path / "last.ckpt")
    assert [s["epoch"] for s in probe.steps] == [2, 2]
    for step in probe.steps:
        assert step["backbone_grad"] == {True} and step["groups"] == ["head", "backbone"]
        assert step["lrs"][1] == pytest.approx(step["lrs"][0] * 0.5)


def test_linear_probe_trains_only_the_head() -> None:
    module, probe = _module(), Probe()
    before = {k: v.clone() for k, v in module.net.state_dict().items()}
    _fit(module, [finetune_callback("linear_probe", unfreeze_at_epoch=1, backbone_lr_mult=1.0), probe], 2)

    after = module.net.state_dict()
    head = {f"model.fc.{k}" for k in module.net.head.state_dict()}
    # Batch-norm running statistics included: the frozen backbone ran in eval mode.
    assert all(torch.equal(before[k], after[k]) for k in before if k not in head)
    assert not torch.equal(before["model.fc.1.weight"], after["model.fc.1.weight"])
    assert all(s["bn_training"] == {False} and s["groups"] == ["head"] for s in probe.steps)
    assert probe.trainable_params == [_params(module.net.head)] * 2


def test_param_groups_split_head_and_trainable_backbone() -> None:
    net = TorchvisionBackbone("resnet18", 2, 3, head="fc", stem="conv1", cam_layer="layer4")
    head, backbone = param_groups(net, lr=1e-3, backbone_lr_mult=0.1)
    assert (head["name"], head["lr"], len(head["params"])) == ("head", 1e-3, 2)
    assert backbone["name"] == "backbone" and backbone["lr"] == pytest.approx(1e-4)
    assert len(head["params"]) + len(backbone["params"]) == len(list(net.parameters()))

    net.model.layer1.requires_grad_(False)
    assert sum(len(g["params"]) for g in param_groups(net, 1e-3, 0.1)) == len(
        [p for p in net.parameters() if p.requires_grad]
    )
    net.requires_grad_(False)
    net.head.requires_grad_(True)
    assert [g["name"] for g in param_groups(net, 1e-3, 0.1)] == ["head"]
    with pytest.raises(UserError, match="backbone_lr_mult=0"):
        param_groups(net, 1e-3, 0)


def test_finetune_callback_choices() -> None:
    assert finetune_callback("full", 1, 1.0) is None
    with pytest.raises(UserError, match="full, linear_probe, gradual"):
        finetune_callback("freeze", 1, 1.0)
    with pytest.raises(UserError, match="unfreeze_at_epoch=-1"):
        finetune_callback("gradual", -1, 1.0)


def test_gradual_refuses_ddp() -> None:
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_checkpointing=False
    )
    with pytest.raises(UserError, match="several processes"):
        finetune_callback("gradual", 1, 1.0).setup(trainer, _module(), "fit")
    finetune_callback("linear_probe", 1, 1.0).setup(trainer, _module(), "fit")  # frozen before DDP wraps
