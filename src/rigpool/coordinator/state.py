"""Everything a running coordinator holds, in one object hung on the FastAPI app."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from rigpool.coordinator.hub import Hub
from rigpool.coordinator.models import list_models
from rigpool.coordinator.settings import Settings
from rigpool.coordinator.tables import Model
from rigpool.scheduler.routing import Router


@dataclass
class CoordinatorState:
    settings: Settings
    db: sessionmaker[Session]
    hub: Hub = field(default_factory=Hub)
    router: Router = field(default_factory=Router)
    _models: dict[str, Model] = field(default_factory=dict)

    def refresh_models(self) -> None:
        self._models = {m.name: m for m in list_models(self.db)}

    def model_names(self) -> set[str]:
        return set(self._models)

    def model(self, name: str) -> Model | None:
        return self._models.get(name)

    def models(self) -> list[Model]:
        return list(self._models.values())
