"""Typed configuration: one dataclass per concern, YAML in, dotted overrides, strict keys.

The generic machinery is :mod:`workbench.config.loader` (YAML, includes, overrides,
unknown-key suggestions, renamed keys, dump); each concern has its own schema module:

=========================  ==============================================================
``fields``                 ``ConfigError``, the check helper, modality and split names
``data``                   :class:`DataConfig` -- where a dataset lives, how to read it
``teacher``                :class:`TeacherConfig` (+ price) -- a teacher and how to reach it
``cache``                  :class:`CacheConfig`, :class:`CacheJobConfig` -- a caching job
``student``                :class:`StudentConfig` (+ LoRA) -- the compact student
``train``                  :class:`TrainConfig` -- the optimisation loop, with
                           :class:`WeightingConfig` (quality weights) and
                           :class:`PrivilegedConfig` (MMSLF's two stages)
``methods``                one object per method (MS-Mix, conflict penalty, missing-modality
                           training, enhancement, DashFusion, CyIN, MIDG) and augmentation
``evaluation``             :class:`EvalConfig` -- how a checkpoint is evaluated
``media``                  :class:`MediaConfig`, :class:`MediaJobConfig` -- media ingestion
``distill``                :class:`SignalsConfig`, :class:`LossConfig`,
                           :class:`DistillConfig` -- a whole distillation run
``legacy``                 old keys (and old checkpoints' weight names) mapped to their new
                           places
=========================  ==============================================================
"""

from __future__ import annotations

from pathlib import Path

from workbench.config.cache import CacheConfig, CacheJobConfig, RayConfig
from workbench.config.data import DataConfig
from workbench.config.distill import DistillConfig, LossConfig, SignalsConfig
from workbench.config.evaluation import EvalConfig
from workbench.config.fields import MODALITIES, SPLITS, ConfigError
from workbench.config.loader import (
    apply_overrides,
    attribute_error,
    dump_config,
    from_dict,
    load_config,
    to_dict,
    versions,
)
from workbench.config.media import MediaConfig, MediaJobConfig
from workbench.config.methods import (
    AugmentConfig,
    ConflictConfig,
    CyinConfig,
    DashFusionConfig,
    EnhanceConfig,
    MidgConfig,
    MissingConfig,
    MsMixConfig,
)
from workbench.config.student import LoraConfig, StudentConfig
from workbench.config.teacher import PriceConfig, TeacherConfig
from workbench.config.train import PrivilegedConfig, TrainConfig, WeightingConfig

__all__ = [
    "MODALITIES", "SPLITS", "ConfigError",
    "DataConfig", "TeacherConfig", "PriceConfig", "CacheConfig", "CacheJobConfig", "RayConfig",
    "StudentConfig", "LoraConfig", "TrainConfig", "SignalsConfig", "LossConfig",
    "EvalConfig", "DistillConfig", "MediaConfig", "MediaJobConfig",
    "MsMixConfig", "ConflictConfig", "AugmentConfig", "MissingConfig", "EnhanceConfig",
    "DashFusionConfig", "CyinConfig", "MidgConfig", "WeightingConfig", "PrivilegedConfig",
    "load_config", "from_dict", "to_dict", "apply_overrides", "attribute_error", "dump_config",
    "versions",
    "config_class_for",
]


def config_class_for(path: str | Path) -> type | None:
    """The config dataclass a file under ``configs/`` holds, from its folder name."""
    parts = Path(path).parts
    table = {"data": DataConfig, "teachers": TeacherConfig, "distill": DistillConfig,
             "eval": EvalConfig, "cache": CacheJobConfig, "media": MediaJobConfig}
    for part in reversed(parts[:-1]):
        if part in table:
            return table[part]
    return None
