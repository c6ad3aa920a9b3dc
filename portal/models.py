"""Every model module, imported once so that Base.metadata knows all tables (Alembic)."""
from __future__ import annotations

import sqlalchemy as sa


def load_all_models() -> sa.MetaData:
    import idp.codes  # noqa: F401
    import idp.models  # noqa: F401
    import idp.provider.models  # noqa: F401
    import idp.psc.models  # noqa: F401
    import idp.sessions  # noqa: F401
    import onboarding.models  # noqa: F401
    import portal.audit  # noqa: F401
    import portal.cgu  # noqa: F401
    import portal.mail  # noqa: F401
    from portal.db import Base

    return Base.metadata
