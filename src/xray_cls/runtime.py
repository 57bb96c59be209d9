"""What train, eval and predict share: building objects from config, turning errors into messages, and
keeping library noise off the console.

Light to import: the commands (``xray_cls.cli``) use it before the config is checked, so torch and Lightning
(seconds to import) are imported by the functions that build models.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from xray_cls.errors import UserError

if TYPE_CHECKING:
    from xray_cls.module import ClassificationModule

log = logging.getLogger("xray_cls")


def build(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, but a UserError raised inside comes out as itself, not wrapped."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None


def build_module(model: DictConfig) -> ClassificationModule:
    """The LightningModule of ``model`` (``cfg.model``), instantiated from its resolved values: the module
    builds its network, optimizer and scheduler itself, and saves these plain values as hyperparameters."""
    return build(OmegaConf.to_container(model, resolve=True), _recursive_=False, _convert_="all")


def instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a dict-of-configs group (callbacks, loggers); null entries are off."""
    if not group:
        return []
    return [build(node) for node in group.values() if node is not None and "_target_" in node]


def command_line_overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@contextmanager
def user_errors() -> Iterator[None]:
    """A UserError ends a single run with its message alone and a non-zero exit status, not a traceback."""
    try:
        yield
    except UserError as err:
        if is_multirun():
            raise
        report_error(str(err))
        sys.exit(err.exit_code)


def report_error(message: str, exc_info: BaseException | None = None) -> None:
    """``error: <message>`` once on the console (stderr), and the message (with ``exc_info``'s traceback) in
    the run's log file.

    Not through ``log.error``: Hydra's console handler would show the message a second time, on stdout.
    """
    print(f"error: {message}", file=sys.stderr, flush=True)
    traceback = None if exc_info is None else (type(exc_info), exc_info, exc_info.__traceback__)
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, traceback)
    for handler in logging.getLogger().handlers:  # Hydra puts the console and the file handler on the root
        if isinstance(handler, logging.FileHandler) and record.levelno >= handler.level:
            handler.handle(record)


# Library messages that tell a user of this framework nothing, each silenced by its exact text (and module):
# (category, message regex, module regex) for warnings.filterwarnings; message prefixes for Lightning's log.
_QUIET_WARNINGS = [
    # Lightning 2.6 wraps each loader in torch's LeafSpec, which torch now deprecates; printed once per loop.
    (
        FutureWarning,
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        r"lightning\.pytorch\.utilities\._pytree",
    ),
]
_QUIET_LIGHTNING_INFO = (
    "💡 Tip:",  # advertisements for Lightning's cloud products (litlogger, litmodels)
    "TPU available: False",  # the GPU line says which device trains; TPUs are out of the picture
)


class _DropLightningInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_QUIET_LIGHTNING_INFO)


def quiet_library_noise() -> None:
    """Install the filters above, and show each of Lightning's log messages once. Call it after importing
    Lightning, in a command whose logging Hydra has configured."""
    for category, message, module in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLightningInfo) for f in logger.filters):
            logger.addFilter(_DropLightningInfo())
    # Lightning's top package gives its logger a console handler of its own; its subpackages also pass their
    # messages on to the root logger when it has handlers (Hydra's), so each would print twice. Without that
    # handler they print once, as ours do, and land in the run's log file too.
    lightning_logger = logging.getLogger("lightning")
    for handler in list(lightning_logger.handlers):
        if type(handler) is logging.StreamHandler:
            lightning_logger.removeHandler(handler)


def seed_everything(cfg: DictConfig) -> None:
    import lightning as L

    L.seed_everything(cfg.seed, workers=True, verbose=False)
