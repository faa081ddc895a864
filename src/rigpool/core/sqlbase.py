"""The one SQLAlchemy declarative base: coordinator and ledger tables share a metadata.

Sharing it lets one Alembic history migrate the whole schema, and lets a money movement and the
request it pays for commit in the same database transaction.
"""

from __future__ import annotations

from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass
