"""Cross-validation: patient-grouped stratified folds, the data module's fold, the summary of a cv= sweep."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from tests.conftest import QUICK, SMALL
from tests.formats import patients as _patients
from tests.test_cli import run
from xray_cls.crossval import cv_settings, cv_summary
from xray_cls.data.base import SplitArrays
from xray_cls.data.splits import grouped_stratified_kfold
from xray_cls.errors import UserError
from xray_cls.runtime import build
from xray_cls.sweep import Job, Leaderboard
from xray_cls.validation import validate


def _folds(labels, groups, k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    return [grouped_stratified_kfold(labels, groups, k, i, seed) for i in range(k)]


# -- the split ----------------------------------------------------------------------------------------------
def test_every_patient_is_in_exactly_one_fold() -> None:
    labels, groups = _patients(300)
    assert len(np.unique(groups)) < len(groups)  # several images per patient
    folds = _folds(labels, groups, 5)
    for train, val in folds:
        assert not set(groups[train]) & set(groups[val])
    fold_of: dict[str, int] = {}
    for i, (_, val) in enumerate(folds):
        for patient in set(groups[val]):
            assert fold_of.setdefault(patient, i) == i, f"{patient} is in folds {fold_of[patient]} and {i}"
    assert set(fold_of) == set(groups)


def test_folds_cover_the_pool_exactly_once_and_train_is_the_rest() -> None:
    labels, groups = _patients(200, seed=1)
    folds = _folds(labels, groups, 4)
    vals = np.concatenate([val for _, val in folds])
    assert np.array_equal(np.sort(vals), np.arange(len(labels)))  # each sample validated exactly once
    for train, val in folds:
        assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
        assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(labels)))


def test_folds_are_stratified() -> None:
    labels, groups = _patients(600, seed=2)
    pool = np.bincount(labels, minlength=3) / len(labels)
    for _, val in _folds(labels, groups, 5):
        ratio = np.bincount(labels[val], minlength=3) / len(val)
        assert np.abs(ratio - pool).max() < 0.03, (ratio, pool)
        assert abs(len(val) - len(labels) / 5) < 0.05 * len(labels)


def test_no_groups_means_one_image_each() -> None:
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    for train, val in _folds(labels, None, 5):
        assert [int(np.sum(labels[val] == c)) for c in range(3)] == [10, 6, 4]
        assert len(train) == 80


def test_seeded_and_deterministic() -> None:
    labels, groups = _patients(200)
    first = grouped_stratified_kfold(labels, groups, 3, 1, seed=7)
    again = grouped_stratified_kfold(labels.copy(), groups.copy(), 3, 1, seed=7)
    other = grouped_stratified_kfold(labels, groups, 3, 1, seed=8)
    assert np.array_equal(first[1], again[1])
    assert not np.array_equal(first[1], other[1])


@pytest.mark.parametrize(
    ("folds", "fold", "match"), [(1, 0, "folds must be >= 2"), (3, 3, r"fold must be in \[0, 3\)")]
)
def test_impossible_folds_are_refused(folds: int, fold: int, match: str) -> None:
    labels, groups = _patients(20)
    with pytest.raises(ValueError, match=match):
        grouped_stratified_kfold(labels, groups, folds, fold, 0)


def test_more_folds_than_patients_is_refused() -> None:
    labels, groups = np.array([0, 0, 1, 1, 1]), np.array(["a", "a", "b", "b", "c"])
    with pytest.raises(ValueError, match="4 folds need at least 4 patients"):
        grouped_stratified_kfold(labels, groups, 4, 0, 0)


# -- the data module ----------------------------------------------------------------------------------------
class PatientSource:
    """In memory, 28 px gray: a train split with patients (several images each), a test split and,
    with ``val``, the data set's own val split (its own patients)."""

    def __init__(self, val: bool = False) -> None:
        labels, groups = _patients(60, seed=3)
        self.splits = {"train": self._split(labels % 2, groups), "test": self._split(np.arange(10) % 2, None)}
        if val:
            self.splits["val"] = self._split(
                np.array([0, 1, 1, 0, 1]), np.array(["v1", "v1", "v2", "v3", "v3"])
            )

    @staticmethod
    def _split(labels: np.ndarray, groups: np.ndarray | None) -> SplitArrays:
        images = np.zeros((len(labels), 1, 28, 28), dtype=np.uint8)
        return SplitArrays(images, labels.astype(np.int64), groups)

    def prepare(self, root: Path) -> None:
        pass

    def load(self, root: Path) -> dict[str, SplitArrays]:
        return self.splits


def _datamodule(make_cfg, *overrides: str, source: PatientSource):
    cfg = make_cfg("data.class_names=[a,b]", *overrides)
    validate(cfg)
    datamodule = build(cfg.data, source=source)
    datamodule.setup("fit")
    return datamodule


def test_datamodule_fold_is_validation_and_the_other_folds_train(make_cfg) -> None:
    source = PatientSource()
    pool = source.splits["train"]
    datamodule = _datamodule(make_cfg, "data.folds=3", "data.fold=1", source=source)
    train, val = datamodule.splits["train"], datamodule.splits["val"]
    expected_train, expected_val = grouped_stratified_kfold(pool.labels, pool.groups, 3, 1, seed=42)
    assert np.array_equal(val.index, expected_val) and np.array_equal(train.index, expected_train)
    assert train.split is pool and val.split is pool  # views of the pool, no copy
    assert not set(train.groups) & set(val.groups)  # no patient on both sides
    assert len(train) + len(val) == len(pool)
    assert len(datamodule.splits["test"]) == 10  # the test split is untouched
    # The other folds validate on other patients: together the three cover the pool once.
    vals = [
        _datamodule(make_cfg, "data.folds=3", f"data.fold={i}", source=PatientSource()).splits["val"].index
        for i in range(3)
    ]
    assert np.array_equal(np.sort(np.concatenate(vals)), np.arange(len(pool)))


def test_datamodule_pools_a_data_sets_own_val_split(make_cfg) -> None:
    source = PatientSource(val=True)
    n_train, n_val = len(source.splits["train"]), len(source.splits["val"])
    datamodule = _datamodule(make_cfg, "data.folds=2", "data.fold=0", source=source)
    train, val = datamodule.splits["train"], datamodule.splits["val"]
    assert train.split is val.split and len(train.split) == n_train + n_val
    assert len(train) + len(val) == n_train + n_val
    assert not set(train.groups) & set(val.groups)
    assert {"v1", "v2", "v3"} <= set(train.groups) | set(val.groups)
    # Without folds the data set's own val split is used as it is.
    plain = _datamodule(make_cfg, source=PatientSource(val=True))
    assert len(plain.splits["val"]) == n_val and len(plain.splits["train"]) == n_train


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["data.folds=1", "data.fold=0"], "data.folds"),
        (["data.folds=3", "data.fold=3"], "data.fold"),
        (["data.folds=3", "data.fold=-1"], "data.fold"),
        (["data.folds=3"], "data.fold"),  # fold missing
        (["data.fold=0"], "data.fold"),  # folds missing
    ],
)
def test_fold_rules_name_the_key(make_cfg, overrides: list[str], key: str) -> None:
    with pytest.raises(UserError, match=rf"invalid config: {key}="):
        validate(make_cfg(*overrides))


def test_too_many_folds_for_the_patients_is_a_user_error(make_cfg) -> None:
    with pytest.raises(UserError, match=r"data\.folds=80, data\.fold=0: 80 folds need at least 80 patients"):
        _datamodule(make_cfg, "data.folds=80", "data.fold=0", source=PatientSource())


def test_cv_presets_sweep_the_folds_or_seeds(make_cfg) -> None:
    kfold = make_cfg("cv=kfold", "data.folds=3")
    assert kfold.data.folds == 3 and kfold.data.fold is None and kfold.cv.kind == "kfold"
    seeds = make_cfg("cv=seeds")
    assert seeds.cv.kind == "seeds" and seeds.cv.seeds == 5 and seeds.data.folds is None


# -- the summary --------------------------------------------------------------------------------------------
def _job(name: str, metrics: dict, key: str = "data.fold", extra: tuple[str, ...] = ()) -> Job:
    return Job(name, Path("sweep") / name, ["cv=kfold", f"{key}={name}", *extra], metrics)


def test_cv_summary_leaves_a_failed_job_out_and_lists_it() -> None:
    jobs = [
        _job(
            "2",
            {"status": "ok", "test/acc": 0.9, "val/acc_best": 0.8, "val/acc": 0.7, "test/acc_ci_low": 0.8},
        ),
        _job(
            "0",
            {"status": "ok", "test/acc": 0.7, "val/acc_best": 0.6, "val/acc": 0.5, "test/acc_ci_low": 0.6},
        ),
        _job("1", {"status": "failed", "error": "RuntimeError: boom", "test/acc": 0.0}),
        _job("3", {}),  # died before writing metrics.json
    ]
    summary = cv_summary(jobs, "data.fold")
    assert summary["runs"] == ["0", "1", "2", "3"] and summary["ok"] == 2
    assert set(summary["metrics"]) == {"test/acc", "val/acc_best"}  # no last val value, no CI bounds
    acc = summary["metrics"]["test/acc"]
    assert acc["mean"] == pytest.approx(0.8) and acc["std"] == pytest.approx(np.std([0.7, 0.9], ddof=1))
    assert acc["n"] == 2 and acc["values"] == {"0": 0.7, "2": 0.9}
    assert [(f["run"], f["error"]) for f in summary["failed"]] == [
        ("1", "RuntimeError: boom"),
        ("3", "no metrics.json: the job died before writing it (see its log)"),
    ]


def test_cv_summary_of_one_run_has_no_spread_and_skips_missing_values() -> None:
    summary = cv_summary([_job("0", {"status": "ok", "test/auroc": None, "test/acc": 0.5})], "data.fold")
    assert summary["metrics"] == {"test/acc": {"mean": 0.5, "std": None, "n": 1, "values": {"0": 0.5}}}


def test_cv_settings_keep_other_swept_keys_apart() -> None:
    jobs = [_job(str(i), {"status": "ok"}, extra=(f"model={m}",)) for i, m in enumerate("aabb")]
    settings = cv_settings(jobs, "data.fold")
    assert [(o, [j.name for j in js]) for o, js in settings] == [
        (["model=a"], ["0", "1"]),
        (["model=b"], ["2", "3"]),
    ]


def _write_job(sweep: Path, name: str, overrides: list[str], metrics: dict | None) -> None:
    (sweep / name / ".hydra").mkdir(parents=True)
    (sweep / name / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(overrides))
    if metrics is not None:
        (sweep / name / "metrics.json").write_text(json.dumps(metrics))


def test_leaderboard_writes_the_cv_summary_and_prints_its_table(tmp_path: Path, capsys) -> None:
    for i, metrics in enumerate([{"status": "ok", "test/acc": 0.6}, {"status": "ok", "test/acc": 0.8}]):
        _write_job(tmp_path, str(i), ["cv=seeds", f"seed={i}"], {**metrics, "val/acc_best": 0.5})
    _write_job(tmp_path, "2", ["cv=seeds", "seed=2"], {"status": "failed", "error": "ValueError: bad"})
    config = OmegaConf.create(
        {
            "hydra": {"sweep": {"dir": str(tmp_path)}},
            "monitor": {"metric": "val/acc", "mode": "max"},
            "cv": {"kind": "seeds", "seeds": 3},
        }
    )
    with pytest.raises(SystemExit):  # a failed job: status 1, after the summaries are written
        Leaderboard().on_multirun_end(config)
    summary = json.loads((tmp_path / "cv_summary.json").read_text())
    assert summary["kind"] == "seeds" and summary["key"] == "seed"
    assert summary["metrics"]["test/acc"]["mean"] == pytest.approx(0.7)
    assert summary["failed"][0]["run"] == "2"
    out = capsys.readouterr().out
    assert "cross-validation (seeds): 3 runs by seed, 2 ok, 1 failed" in out
    row = next(line for line in out.splitlines() if line.startswith("test/acc"))
    assert row.split() == ["test/acc", "0.7000", "0.1414", "0.6000", "0.8000", "failed"]
    assert "failed: seed 2 (job 2): ValueError: bad" in out


# -- the command line ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_kfold_command_runs_each_fold_and_summarises(data_dir: Path, tmp_path: Path) -> None:
    proc = run(
        "xray_cls.train", *SMALL, "cv=kfold", "data.folds=2",
        f"paths.data_dir={data_dir}", f"paths.log_dir={tmp_path}", *QUICK, cwd=tmp_path,
    )  # fmt: skip
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    for fold in (0, 1):
        config = OmegaConf.load(sweep / str(fold) / ".hydra" / "config.yaml")
        assert (config.data.folds, config.data.fold) == (2, fold)
        assert json.loads((sweep / str(fold) / "metrics.json").read_text())["status"] == "ok"
    summary = json.loads((sweep / "cv_summary.json").read_text())
    assert summary["kind"] == "kfold" and summary["runs"] == ["0", "1"] and summary["failed"] == []
    acc = summary["metrics"]["test/acc"]
    assert acc["n"] == 2 and set(acc["values"]) == {"0", "1"} and acc["std"] is not None
    assert acc["mean"] == pytest.approx(sum(acc["values"].values()) / 2)
    assert "val/acc_best" in summary["metrics"]
    assert "cross-validation (kfold): 2 runs by data.fold, 2 ok, 0 failed" in proc.stdout
    # A fold's checkpoint is a normal model: eval rebuilds it (and its fold) from the checkpoint alone.
    best = json.loads((sweep / "1" / "metrics.json").read_text())["best_checkpoint"]
    run("xray_cls.eval", f"ckpt_path={best}", f"paths.data_dir={data_dir}", f"paths.log_dir={tmp_path}",
        *QUICK, cwd=tmp_path)  # fmt: skip
    (evaluated,) = (tmp_path / "eval" / "runs").iterdir()
    assert json.loads((evaluated / "metrics.json").read_text())["status"] == "ok"


def test_report_names_the_validation_fold() -> None:
    from types import SimpleNamespace

    from xray_cls.evaluation.summary import describe_patients

    pool = SimpleNamespace(groups=np.array(["p1", "p2"]))
    splits = {"train": SimpleNamespace(split=pool), "val": SimpleNamespace(split=pool)}
    assert "validation (fold 1 of 3 of the training pool, stratified)" in describe_patients(
        splits, 0.1, "fold 1 of 3"
    )
