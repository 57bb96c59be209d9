"""The HParams tab of TensorBoard: each run's hyperparameters that tell runs apart, beside its final metrics.

Not the whole config (about a hundred keys, the callbacks' ``_target_`` first), but the keys in ``KEYS`` plus
every key that the job's command line or sweep set. The tab shows the first five hyperparameters (those marked
as varying first, then by name) and the first five metrics until more are ticked: the keys a sweep varies are
marked, and ``FIRST_METRICS`` come first.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    import lightning as L
    from tensorboard.compat.proto.summary_pb2 import Summary

# The hyperparameters every run shows. A config group's name (`model`) stands for the option chosen
# (`resnet18`); a dotted key for its resolved value. Keys set on the command line (a sweep's too) are added.
KEYS = (
    "model",
    "data",
    "data.image_size",
    "optimizer",
    "optimizer.lr",
    "optimizer.weight_decay",
    "scheduler",
    "data.batch_size",
    "trainer.max_epochs",
    "model.finetune.mode",
    "seed",
)
# Command-line keys that say where a run reads and writes, not how it trains.
NOT_HPARAMS = ("paths", "hydra", "resume", "ckpt_path")
# The metric columns are the final values under these prefixes; these first (`{monitor}`: monitor.metric).
METRIC_PREFIXES = ("val/", "test/")
FIRST_METRICS = (
    "{monitor}_best",
    "test/acc",
    "test/auroc",
    "test/op/sensitivity",
    "test/op/specificity",
    "test/f1_macro",
    "test/loss",
)
# Without Hydra's record of the chosen options (a config composed in code, or restored by `resume=`), a
# group is named by the first of these keys that its config holds; a `_target_` by its last component.
_GROUP_NAMES = {
    "model": ("net.arch", "net.name", "net._target_"),
    "data": ("source.dataset", "source._target_"),
    "optimizer": ("_target_",),
    "scheduler": ("factory._target_",),
}

HParam = str | int | float  # what the HParams tab shows (a bool as "true"/"false")


def log_hparams(trainer: L.Trainer, cfg: DictConfig, metrics: dict[str, Any]) -> None:
    """Write this run's hyperparameters and final metrics into its TensorBoard run, and close the writer."""
    from lightning.pytorch.loggers import TensorBoardLogger  # lazy: Lightning is imported by train anyway

    loggers = [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
    if not loggers:
        return
    params = hparams(cfg)
    final = final_metrics(metrics, cfg.monitor.metric)
    experiment, start, end = _summaries(params, final, varied_keys(cfg))
    for logger in loggers:
        # Only the summaries: the tab reads each metric's last value among the scalars Lightning logged.
        # (Lightning's log_hyperparams would log the metrics again, at step 0, and every val/test curve would
        # start at its final value.)
        writer = logger.experiment._get_file_writer()  # as Lightning's own log_hyperparams does
        for summary in (experiment, start, end):
            writer.add_summary(summary, trainer.global_step)
        # Lightning closed the writer when test ended; writing reopened it (a new event file), and its events
        # wait in a queue that a daemon thread writes: unclosed, what is still queued is lost when the process
        # exits, and the HParams tab misses the run. What is written to TensorBoard later needs closing too.
        logger.finalize("success")


def hparams(cfg: DictConfig) -> dict[str, HParam]:
    """``KEYS``, then the keys set on the command line, with values the HParams tab can show."""
    choices, overridden, _ = _hydra_record(cfg)
    values: dict[str, HParam] = {}
    for key in (*KEYS, *overridden):
        if key in values or key.split(".")[0] in NOT_HPARAMS:
            continue
        if key in choices:
            values[key] = _plain(choices[key])
        elif key in _GROUP_NAMES:
            values[key] = _group_name(cfg, key)
        else:
            values[key] = _plain(OmegaConf.select(cfg, key, default=None))
    return values


def varied_keys(cfg: DictConfig) -> set[str]:
    """The keys a sweep varies (in a single run, those its command line set): the tab shows them first."""
    return _hydra_record(cfg)[2]


def final_metrics(metrics: dict[str, Any], monitor: str) -> dict[str, float]:
    """The metric columns, in the order the tab shows them. Not the confidence intervals (``..._ci_low``,
    ``..._ci_high``, in metrics.json and the report): the tab shows logged scalars, and they are none."""
    final = {
        k: v
        for k, v in sorted(metrics.items())
        if isinstance(v, float) and k.startswith(METRIC_PREFIXES) and not k.endswith(("_ci_low", "_ci_high"))
    }
    first = [name.format(monitor=monitor) for name in FIRST_METRICS]
    return {k: final[k] for k in first if k in final} | final


def _hydra_record(cfg: DictConfig) -> tuple[dict[str, Any], list[str], set[str]]:
    """The option chosen for each config group, the keys the command line set and the keys varied; all
    empty outside Hydra."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {}, [], set()
    hydra = HydraConfig.get()
    parser = OverridesParser.create()
    keys = [o.key_or_group for o in parser.parse_overrides(list(hydra.overrides.task)) if not o.is_delete()]
    choices = dict(hydra.runtime.choices)
    if cfg.get("resume"):  # the config comes from the checkpoint, but for the groups set on the command line
        choices = {group: option for group, option in choices.items() if group in keys}
    if hydra.mode != RunMode.MULTIRUN:
        return choices, keys, set(keys)
    # A job sees only its own values. The sweep's command line (`optimizer.lr=1e-3,1e-2`) is in the
    # multirun.yaml that Hydra's basic sweeper saves in the sweep directory; Optuna's space in sweeper.params.
    varied = set((hydra.sweeper.get("params") or {}).keys())
    for folder in Path(hydra.runtime.output_dir).parents[:2]:
        if (folder / "multirun.yaml").is_file():
            sweep = OmegaConf.load(folder / "multirun.yaml").hydra.overrides.task
            varied |= {o.key_or_group for o in parser.parse_overrides(list(sweep)) if o.is_sweep_override()}
            break
    return choices, keys, varied


def _summaries(
    params: dict[str, HParam], metrics: dict[str, float], varied: set[str]
) -> tuple[Summary, Summary, Summary]:
    """The three summaries of the HParams plugin, the varied keys marked in the experiment's."""
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    experiment, start, end = hparams_summaries(params, metrics)
    content = experiment.value[0].metadata.plugin_data
    data = HParamsPluginData.FromString(content.content)
    for info in data.experiment.hparam_infos:
        info.differs = info.name in varied
    content.content = data.SerializeToString()
    return experiment, start, end


def _group_name(cfg: DictConfig, group: str) -> str:
    for key in _GROUP_NAMES[group]:
        value = OmegaConf.select(cfg, f"{group}.{key}", default=None)
        if isinstance(value, str):
            return value.rsplit(".", 1)[-1]
    return "none"


def _plain(value: Any) -> HParam:
    if isinstance(value, bool):  # torch's summary would write it as the number 0 or 1
        return str(value).lower()
    if isinstance(value, str | int | float):
        return value
    if value is None:
        return "null"
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    return str(value)
