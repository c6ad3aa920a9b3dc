"""Alembic environment: runs on the engine handed over by portal.db (never a second config)."""
from alembic import context

from portal.models import load_all_models

config = context.config
target_metadata = load_all_models()


def run_migrations_online() -> None:
    engine = config.attributes.get("engine")
    if engine is None:
        from portal.config import load_settings
        from portal.db import make_engine

        engine = make_engine(load_settings().database_url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run_migrations_online()
