"""Lightning's DDP under Hydra: one run directory, one log, metrics synchronised across ranks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import QUICK
from tests.test_cli import run
from xray_cls.data.device_batches import DeviceBatches
from xray_cls.distributed import check_ddp_in_sweep
from xray_cls.errors import UserError


@pytest.mark.parametrize("n", [1, 5, 33, 64, 65, 100])
@pytest.mark.parametrize("world_size", [2, 3, 4])
@pytest.mark.parametrize("shuffle", [False, True])
def test_every_rank_gets_the_same_number_of_batches(n: int, world_size: int, shuffle: bool) -> None:
    """An uneven count hangs DDP: the rank with one batch more waits for the others' gradients."""
    images, labels = torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.arange(n)
    ranks = [
        DeviceBatches(images, labels, batch_size=16, shuffle=shuffle, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    batches = [[b[1] for b in loader] for loader in ranks]
    assert {len(b) for b in batches} == {len(ranks[0])}
    assert {sum(len(x) for x in b) for b in batches} == {-(-n // world_size)}
    seen = torch.cat([x for b in batches for x in b])
    assert set(seen.tolist()) == set(range(n))  # padding repeats samples, never drops one


def test_ddp_job_in_a_local_sweep_is_refused(make_cfg) -> None:
    with pytest.raises(UserError, match="hydra/launcher=slurm"):
        check_ddp_in_sweep(make_cfg("trainer=ddp_cpu"))
    check_ddp_in_sweep(make_cfg("trainer=ddp_cpu", "trainer.strategy=ddp_spawn"))
    check_ddp_in_sweep(make_cfg("trainer=ddp_cpu", "trainer.devices=1"))


@pytest.mark.slow
def test_two_process_ddp_run_matches_a_one_process_eval(data_dir: Path, tmp_path: Path) -> None:
    # The test split has 100 images: 50 per rank, no padding, so both runs see each image exactly once.
    # With the device-resident loader (the default for small data) each rank takes every other image.
    quick = [o for o in QUICK if not o.startswith("trainer=")]
    common = [
        f"paths.data_dir={data_dir}",
        f"paths.log_dir={tmp_path}",
        *quick,
        "trainer.limit_test_batches=1.0",
    ]
    run("xray_cls.train", "trainer=ddp_cpu", "trainer.limit_train_batches=1", *common, cwd=tmp_path)

    (run_dir,) = (tmp_path / "train" / "runs").iterdir()  # rank 1 ran in rank 0's directory
    assert list(tmp_path.glob("train/**/metrics.json")) == [run_dir / "metrics.json"]
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert trained["status"] == "ok"
    log = (run_dir / "train.log").read_text()
    assert log.count("splits:") == 1  # rank 1 logs warnings only

    run("xray_cls.eval", f"ckpt_path={trained['best_checkpoint']}", "trainer=cpu", *common, cwd=tmp_path)
    (eval_dir,) = (tmp_path / "eval" / "runs").iterdir()
    evaluated = json.loads((eval_dir / "metrics.json").read_text())
    # Rank 0 alone would report on 50 images: equal values mean torchmetrics gathered both ranks' states.
    assert evaluated["test/acc"] == pytest.approx(trained["test/acc"], abs=1e-6)
    assert evaluated["test/loss"] == pytest.approx(trained["test/loss"], rel=1e-5)
