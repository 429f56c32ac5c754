"""Budgets: how much each study may spend, as YAML files users copy and edit
(fastclr/study/budgets/quick.yaml for 2 CPU cores, paper.yaml for a GPU)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fastclr.config import read_yaml
from fastclr.errors import ConfigError
from fastclr.registry import STUDIES

BUDGET_DIR = Path(__file__).parent / "budgets"


@dataclass
class Budget:
    """How much each study may spend: a base preset, options on top, seeds (a YAML file)."""

    name: str
    base: str
    seeds: list[int]
    options: dict = field(default_factory=dict)
    studies: dict = field(default_factory=dict)  # per study: {"seeds": [...], "options": {...}}
    description: str = ""
    source: str = ""  # the YAML file

    @property
    def argument(self) -> str:
        """The budget as `--budget` takes it: its name when it ships with fastclr, else its file."""
        shipped = Path(self.source).parent.resolve() == BUDGET_DIR.resolve()
        return self.name if shipped else self.source

    def seeds_for(self, study: str) -> list[int]:
        return list(self.studies.get(study, {}).get("seeds", self.seeds))

    def options_for(self, study: str) -> dict:
        return {**self.options, **self.studies.get(study, {}).get("options", {})}


def list_budgets() -> list[str]:
    return sorted(p.stem for p in BUDGET_DIR.glob("*.yaml"))


def load_budget(name_or_path: str) -> Budget:
    path = Path(name_or_path)
    if not path.is_file():
        path = BUDGET_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"budget {name_or_path!r} is neither a file nor one of "
                          f"{', '.join(list_budgets())}")
    raw = read_yaml(path)
    unknown = sorted(set(raw) - {"base", "seeds", "options", "studies", "description"})
    if unknown or "base" not in raw:
        raise ConfigError(f"budget {path}: needs base (a preset), and knows only base, seeds, "
                          f"options, studies, description{'; got ' + ', '.join(unknown) if unknown else ''}")
    for study in raw.get("studies") or {}:
        if study not in STUDIES:
            raise ConfigError(f"budget {path}: unknown study {study!r}; known: "
                              f"{', '.join(STUDIES)}")
    return Budget(path.stem, str(raw["base"]), list(raw.get("seeds") or [0]),
                  dict(raw.get("options") or {}), dict(raw.get("studies") or {}),
                  str(raw.get("description", "")).strip(), str(path))
